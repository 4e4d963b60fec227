"""A small FastAPI app to try corral on: `corral run api:app --workers 4` from this folder."""

import os

from fastapi import FastAPI

app = FastAPI(title="corral example")


@app.get("/")
async def hello() -> dict[str, str]:
    return {"hello": "world", "worker": os.environ.get("CORRAL_WORKER_ID", "-")}


@app.get("/items/{item_id}")
async def item(item_id: int, q: str | None = None) -> dict[str, object]:
    return {"item_id": item_id, "q": q}
