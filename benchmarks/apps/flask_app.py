"""A Flask (WSGI) app with JSON and a path parameter: fastapi_app.py's endpoints, in Flask.

For the harness (benchmarks/run.py): GET /pid answers the worker's pid. A WSGI app has
no lifespan, so with BENCH_READY_DIR set, a marker named after the pid is touched when
the app is imported, and in each process forked after that; a process that forks (a
preloading parent: corral's zygote, gunicorn's master with --preload) removes its own,
so that only the workers count, as with the ASGI apps' lifespan markers.
"""

import os
from pathlib import Path

from flask import Flask


def _marker() -> Path | None:
    ready_dir = os.environ.get("BENCH_READY_DIR")
    return Path(ready_dir) / str(os.getpid()) if ready_dir else None


def _mark_ready() -> None:
    marker = _marker()
    if marker is not None:
        marker.touch()


def _forked_a_worker() -> None:
    marker = _marker()
    if marker is not None:
        marker.unlink(missing_ok=True)


_mark_ready()
os.register_at_fork(after_in_child=_mark_ready, after_in_parent=_forked_a_worker)

app = Flask(__name__)


@app.get("/")
def root() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/items/<int:item_id>")
def item(item_id: int) -> dict[str, object]:
    return {"item_id": item_id, "name": f"item {item_id}", "tags": ["a", "b"]}


@app.get("/pid")
def pid() -> str:
    return str(os.getpid())
