"""The queue example's API: `GET /` says how long the queue is and what was taken last."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from tasks import QUEUE, TAKEN, connect


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One client per worker, opened after the fork (never at import time: the app is preloaded).
    async with connect() as client:
        app.state.redis = client
        yield


app = FastAPI(title="corral queue example", lifespan=lifespan)


@app.get("/")
async def status(request: Request) -> dict[str, object]:
    async with request.app.state.redis.pipeline(transaction=True) as pipe:
        pipe.llen(QUEUE)
        pipe.lrange(TAKEN, 0, 9)
        length, last = await pipe.execute()
    return {
        "queue": length,
        "taken": [json.loads(entry) for entry in last],
        "worker": os.environ.get("CORRAL_WORKER_ID", "-"),
    }
