"""A plain ASGI app with the prometheus_client metrics an app usually has, for the soak
(benchmarks/soak.py): a counter and a histogram per request, and a gauge of requests in
progress (summed over live workers).

With BENCH_READY_DIR set, each worker touches a file named after its pid there when its
lifespan starts (how the harness counts booted workers).
"""

import os
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("soak_requests", "Requests served", ["path"])
LATENCY = Histogram("soak_request_seconds", "Time to answer a request")
IN_PROGRESS = Gauge("soak_in_progress", "Requests being served", multiprocess_mode="livesum")

BODY = b"Hello, world!"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    with IN_PROGRESS.track_inprogress(), LATENCY.time():
        REQUESTS.labels(path=scope["path"]).inc()
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            ready_dir = os.environ.get("BENCH_READY_DIR")
            if ready_dir:
                (Path(ready_dir) / str(os.getpid())).touch()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
