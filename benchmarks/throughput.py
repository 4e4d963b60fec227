"""Requests per second of corral and `uvicorn --workers` on the same app, interleaved rounds.

    python benchmarks/throughput.py --app hello:app --workers 2 --rounds 3

Each round starts every server in turn (A B C A B C ...), loads it with wrk on
127.0.0.1 for --seconds, and stops it, so the machine's drift hits every
server alike. Prints the median requests/s per server and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
APPS = HERE / "apps"


def servers(app: str, workers: int, port: int) -> dict[str, list[str]]:
    python = sys.executable
    corral = [python, "-m", "corral", "run", app, "-w", str(workers), "--port", str(port)]
    uvicorn = [python, "-m", "uvicorn", app, "--workers", str(workers), "--port", str(port)]
    return {
        "corral": corral,
        "corral --no-access-log": [*corral, "--no-access-log"],
        "uvicorn": uvicorn,
        "uvicorn --no-access-log": [*uvicorn, "--no-access-log"],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_serving(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(16).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing served on port {port} within {timeout}s")


def wrk(port: int, path: str, seconds: int, connections: int) -> float:
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    )
    errors = re.search(r"Socket errors: (.*)", result.stdout)
    if errors or "Non-2xx" in result.stdout:
        print(result.stdout, file=sys.stderr)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout).group(1))


def measure(command: list[str], port: int, path: str, seconds: int, connections: int) -> float:
    with open(os.devnull, "wb") as sink:
        proc = subprocess.Popen(command, cwd=APPS, stdout=sink, stderr=sink)
        try:
            wait_serving(port)
            wrk(port, path, 1, connections)  # warm up
            return wrk(port, path, seconds, connections)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="hello:app")
    parser.add_argument("--path", default="/")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "throughput.json")
    args = parser.parse_args()

    rates: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        port = free_port()
        for name, command in servers(args.app, args.workers, port).items():
            rate = measure(command, port, args.path, args.seconds, args.connections)
            rates.setdefault(name, []).append(rate)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    best_peer = max(v for k, v in medians.items() if not k.startswith("corral"))
    print(
        f"{args.app} {args.path}, {args.workers} workers, {args.rounds} rounds of {args.seconds}s"
    )
    for name, median in medians.items():
        print(f"  {name:<26} {median:>10.0f} req/s  x{median / best_peer:.2f} of the best peer")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"args": vars(args) | {"json": str(args.json)}, "rates": rates})
    )


if __name__ == "__main__":
    main()
