"""A plain ASGI app for corral's tests, with endpoints that misbehave on request."""

import asyncio
import os
import signal
import time

EVENTS = os.environ.get("PLAIN_EVENTS")  # a file where lifespan events are appended


def _record(event: str) -> None:
    if EVENTS:
        with open(EVENTS, "a") as file:
            file.write(f"{event} {os.getpid()}\n")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if os.environ.get("PLAIN_FAIL_STARTUP"):
                    await send(
                        {"type": "lifespan.startup.failed", "message": "database unreachable"}
                    )
                    return
                _record("startup")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _record("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    if path == "/slow":
        await asyncio.sleep(float(query.get("seconds", "2")))
    elif path == "/block":
        stuck_in_a_blocking_call(float(query.get("seconds", "60")))
    elif path == "/block-ignoring-abort":
        signal.signal(signal.SIGABRT, signal.SIG_IGN)  # no stack dump, no death by SIGABRT
        stuck_in_a_blocking_call(float(query.get("seconds", "30")))
    elif path == "/exit":
        os._exit(int(query.get("code", "1")))
    client = scope["client"][0] if scope.get("client") else "-"
    fields = [
        os.environ.get("CORRAL_WORKER_ID"),
        os.getpid(),
        os.getuid(),
        scope["scheme"],
        client,
        os.environ.get("FROM_ENV_FILE", "-"),
        scope.get("root_path") or "-",
    ]
    body = " ".join(str(field) for field in fields).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def stuck_in_a_blocking_call(seconds: float) -> None:
    time.sleep(seconds)


def make_app():
    return app
