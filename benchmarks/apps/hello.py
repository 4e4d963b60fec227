"""A plain ASGI hello world.

For the harness (benchmarks/run.py): GET /pid answers the worker's pid, and with
BENCH_READY_DIR set, each worker touches a file named after its pid there when its
lifespan starts (a way to count booted workers whatever the server).
"""

import os
from pathlib import Path

HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"13")]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/pid":
        body = str(os.getpid()).encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


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
