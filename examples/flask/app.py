"""A small Flask (WSGI) app to try corral on: `corral run --workers 2 --threads 4` from this folder.

corral finds app.py and its `app`, tells that it is a WSGI app, and runs each
request in one of the worker's 4 threads.
"""

import os
import threading

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def hello():
    return jsonify(
        hello="world",
        worker=os.environ.get("CORRAL_WORKER_ID", "-"),
        thread=threading.current_thread().name,
    )


@app.get("/items/<int:item_id>")
def item(item_id: int):
    return jsonify(item_id=item_id)
