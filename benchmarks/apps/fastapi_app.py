"""A FastAPI app with JSON and a path parameter.

For the harness (benchmarks/run.py): GET /pid answers the worker's pid, and with
BENCH_READY_DIR set, each worker touches a file named after its pid there when its
lifespan starts (a way to count booted workers whatever the server).
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    ready_dir = os.environ.get("BENCH_READY_DIR")
    if ready_dir:
        (Path(ready_dir) / str(os.getpid())).touch()
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def root() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, object]:
    return {"item_id": item_id, "name": f"item {item_id}", "tags": ["a", "b"]}


@app.get("/pid")
async def pid() -> int:
    return os.getpid()
