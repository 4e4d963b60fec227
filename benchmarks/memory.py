"""Memory of 4 workers that hold a large read-only table: corral with --preload (its default)
and with --no-preload, and `uvicorn --workers 4` when uvicorn is importable.

    python benchmarks/memory.py [--workers 4]

The app is tests/apps/table.py: FastAPI and a ~65 MB dict built at import. Each server is
started alone, measured once every worker has booted (its lifespan startup ran) and answered,
and stopped. The figure is the PSS of the whole process tree (manager, zygote, workers),
summed: PSS divides each shared page between the processes sharing it, so copy-on-write
pages that the workers share with the zygote count once.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
MIB = 1 << 20


def tree_pss(pid: int) -> int:
    """The proportional set size of a process and all its descendants, summed, in bytes."""
    root = psutil.Process(pid)
    return sum(proc.memory_full_info().pss for proc in [root, *root.children(recursive=True)])


def servers(workers: int, port: int) -> dict[str, list[str]]:
    python = sys.executable
    corral = [python, "-m", "corral", "run", "table:app", "-w", str(workers), "--port", str(port)]
    found = {"corral (--preload)": corral, "corral --no-preload": [*corral, "--no-preload"]}
    if importlib.util.find_spec("uvicorn") is not None:
        found["uvicorn --workers"] = [
            *(python, "-m", "uvicorn", "table:app", "--workers", str(workers)),
            *("--port", str(port)),
        ]
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_booted(proc: subprocess.Popen[bytes], ready_dir: Path, workers: int, port: int) -> None:
    """Wait until `workers` processes of the tree have run their lifespan startup, and the
    port serves."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        tree = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        booted = {int(path.name) for path in ready_dir.iterdir()} & tree
        if len(booted) >= workers and _serves(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{workers} workers did not boot within 60 s")


def _serves(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET /rows/1234 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def measure(command: list[str], workers: int, port: int) -> tuple[int, int]:
    """(PSS of the tree in bytes, how many processes) for a server started with `command`."""
    with tempfile.TemporaryDirectory() as ready, tempfile.TemporaryFile() as log:
        env = {**os.environ, "TABLE_READY_DIR": ready}
        proc = subprocess.Popen(command, cwd=APPS, env=env, stdout=log, stderr=subprocess.STDOUT)
        tree: list[psutil.Process] = []
        try:
            wait_booted(proc, Path(ready), workers, port)
            time.sleep(0.5)  # from lifespan startup to serving, in every worker
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            return tree_pss(proc.pid), len(tree)
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        finally:
            stop(proc, tree)


def stop(proc: subprocess.Popen[bytes], tree: list[psutil.Process]) -> None:
    """SIGTERM the server we started; kill it and what is left of its tree if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    _, alive = psutil.wait_procs([p for p in tree if p.pid != proc.pid], timeout=10)
    for left in alive:
        left.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    results: dict[str, int] = {}
    for name in servers(args.workers, 0):
        port = free_port()
        pss, processes = measure(servers(args.workers, port)[name], args.workers, port)
        results[name] = pss
        print(f"{name:22} {processes} processes  PSS {pss / MIB:7.1f} MiB", flush=True)

    preloaded, separate = results["corral (--preload)"], results["corral --no-preload"]
    print(f"corral --preload / --no-preload: {preloaded / separate:.2f}")
    if "uvicorn --workers" in results:
        print(
            f"corral --preload / uvicorn --workers: {preloaded / results['uvicorn --workers']:.2f}"
        )


if __name__ == "__main__":
    main()
