"""A Flask (WSGI) app for corral's tests: who served, a slow and a blocking endpoint."""

import os
import threading
import time

from flask import Flask, request

IMPORTS = os.environ.get("FLASKAPP_IMPORTS")  # a file where each import appends its pid
if IMPORTS:
    with open(IMPORTS, "a") as file:
        file.write(f"{os.getpid()}\n")

app = Flask(__name__)
VERSION = os.environ.get("FLASKAPP_VERSION", "v1")


@app.get("/")
def index():
    worker = os.environ.get("CORRAL_WORKER_ID")
    return f"{worker} {os.getpid()} {threading.current_thread().name} {VERSION}"


@app.get("/slow")
def slow():
    time.sleep(float(request.args.get("seconds", "1")))
    return f"{os.getpid()} {threading.current_thread().name}"


@app.get("/block")
def block():
    stuck_in_a_wsgi_thread(float(request.args.get("seconds", "60")))
    return "unblocked"


@app.post("/echo")
def echo():
    return request.get_data()


def stuck_in_a_wsgi_thread(seconds: float) -> None:
    time.sleep(seconds)
