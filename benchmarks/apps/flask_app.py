"""A Flask (WSGI) app with JSON and a path parameter: fastapi_app.py's endpoints, in Flask.

For the harness (benchmarks/run.py): GET /pid answers the worker's pid. A WSGI app has
no lifespan, so with BENCH_READY_DIR set, a marker named after the pid is touched when
the app is imported, and again in each process forked after that (a preloading parent's
workers): the importing parent counts as one more ready process, which the warm-up
before each measurement covers.
"""

import os
from pathlib import Path

from flask import Flask


def _mark_ready() -> None:
    ready_dir = os.environ.get("BENCH_READY_DIR")
    if ready_dir:
        (Path(ready_dir) / str(os.getpid())).touch()


_mark_ready()
os.register_at_fork(after_in_child=_mark_ready)

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
