import os
import threading

from django.http import JsonResponse


def hello(request):
    return JsonResponse(
        {
            "hello": "world",
            "worker": os.environ.get("CORRAL_WORKER_ID", "-"),
            "thread": threading.current_thread().name,
        }
    )


def item(request, item_id: int):
    return JsonResponse({"item_id": item_id})
