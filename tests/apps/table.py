"""A FastAPI app that holds a large read-only table (~65 MB) built when it is imported.

With TABLE_READY_DIR set, each process touches a file named after its pid there
once its lifespan startup runs: a way to see that every worker has booted.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException

ROWS = 250_000
TABLE: dict[int, tuple[str, int, float]] = {
    i: (f"customer-{i:07d}", i % 997, i / 7) for i in range(ROWS)
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    ready_dir = os.environ.get("TABLE_READY_DIR")
    if ready_dir:
        (Path(ready_dir) / str(os.getpid())).touch()
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def root() -> dict[str, object]:
    return {"worker": os.environ.get("CORRAL_WORKER_ID"), "pid": os.getpid(), "rows": len(TABLE)}


@app.get("/rows/{row}")
async def get_row(row: int) -> dict[str, object]:
    if row not in TABLE:
        raise HTTPException(404, "no such row")
    name, region, score = TABLE[row]
    return {"row": row, "name": name, "region": region, "score": score}
