"""What access logging costs one corral worker, in CPU microseconds per request.

    python benchmarks/access_log_cost.py --rounds 3

Requests per second swing with whatever else the machine runs; the worker's
own CPU time divided by the requests it served does not, so this measures
the logging cost even on a busy machine. Rounds alternate --access-log and
--no-access-log; the median of each is printed, and their ratio, which is
the request rate ratio when the worker is CPU-bound. The manager's CPU per
request is printed too: it reads the workers' access lines from a pipe and
forwards them to its output (and its log buffer), on the same cores.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

APPS = Path(__file__).parent / "apps"
MODES = ("--access-log", "--no-access-log")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_of(manager: subprocess.Popen[bytes], timeout: float = 20) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(manager.pid).children(recursive=True):
            try:
                if child.cmdline()[:1] == ["corral: web.1"]:
                    return child
            except psutil.NoSuchProcess:  # a short-lived child (a fork on its way to exec)
                continue
        time.sleep(0.05)
    raise RuntimeError("no web.1 worker appeared")


def wrk(port: int, seconds: int) -> int:
    """Load the worker for `seconds`; the number of requests it served."""
    report = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(re.search(r"(\d+) requests in", report).group(1))


def cpu_per_request(mode: str, app: str, seconds: int) -> tuple[float, float]:
    """The worker's and the manager's CPU microseconds per request served."""
    port = free_port()
    command = [sys.executable, "-m", "corral", "run", app, "--port", str(port), mode]
    manager = subprocess.Popen(command, cwd=APPS, stdout=subprocess.DEVNULL)
    try:
        worker = worker_of(manager)
        time.sleep(0.5)
        wrk(port, 1)  # warm up
        process = psutil.Process(manager.pid)
        worker_before, manager_before = sum(worker.cpu_times()[:2]), sum(process.cpu_times()[:2])
        served = wrk(port, seconds)
        worker_used = sum(worker.cpu_times()[:2]) - worker_before
        manager_used = sum(process.cpu_times()[:2]) - manager_before
        return worker_used / served * 1e6, manager_used / served * 1e6
    finally:
        manager.send_signal(signal.SIGTERM)
        try:
            manager.wait(30)
        except subprocess.TimeoutExpired:
            manager.kill()  # leave no server behind; its zygote and workers die with it
            manager.wait()
            raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="hello:app")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    costs: dict[str, list[float]] = {mode: [] for mode in MODES}
    managers: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            worker, manager = cpu_per_request(mode, args.app, args.seconds)
            costs[mode].append(worker)
            managers[mode].append(manager)
    for mode, values in costs.items():
        rounded = [round(v, 1) for v in values]
        print(f"{mode:<18} {statistics.median(values):6.2f} us CPU per request  {rounded}")
        rounded = [round(v, 2) for v in managers[mode]]
        print(f"{'  manager':<18} {statistics.median(managers[mode]):6.2f} us  {rounded}")
    on, off = (statistics.median(costs[mode]) for mode in MODES)
    print(f"rate with the log / without (CPU-bound): {off / on:.3f}")


if __name__ == "__main__":
    main()
