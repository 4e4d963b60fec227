"""What a request costs one worker (and corral's manager), in CPU microseconds, for several
ways of serving it.

    python benchmarks/cpu_per_request.py --rounds 3
    python benchmarks/cpu_per_request.py --app fastapi_app:app --path /items/42 \\
        'corral --no-access-log' 'corral --no-access-log --http zttp' 'uvicorn --no-access-log'

Requests per second swing with whatever else the machine runs; the worker's
own CPU time divided by the requests it served does not, so this measures
what a feature costs even on a busy machine. Each variant is `corral FLAGS`
(`corral run APP` with one worker: the worker `web.1` is measured) or
`uvicorn FLAGS` (a bare `uvicorn APP`, one process and no corral code: the
ceiling); an interpreter's path may come first (`/tmp/old/.venv/bin/python
corral`), to compare another checkout of corral. Rounds alternate the variants;
the median of each is printed with
its ratio to the first, which is the request rate ratio when the worker is
CPU-bound. For corral, the manager's CPU per request is printed too: it
reads the workers' access lines from a pipe and forwards them to its output
(and its log buffer), on the same cores.

With --profile DIR, each variant's worker is also recorded by py-spy
(`py-spy record --format raw`, collapsed stacks, in DIR/N.txt) in a round
of its own, and the functions its samples end in are printed, with the
share of each file: where its time goes. py-spy's sampling costs the
worker some CPU, so that round's CPU figure is left out. Time spent in C
(the event loop, a system call) counts for the Python function that called
it: uvloop's loop in `Runner.run`, the socket writes in uvicorn's `send`.
"""

from __future__ import annotations

import argparse
import collections
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness
import psutil

APPS = Path(__file__).parent / "apps"
DEFAULT_VARIANTS = (
    "corral --access-log",
    "corral --no-access-log",
    "corral --no-access-log --no-request-metrics",
    "uvicorn --no-access-log",
)


def command(variant: str, app: str, port: int) -> tuple[list[str], bool]:
    """The server's argv, and whether its worker is a corral child (else the process itself)."""
    python, words = sys.executable, shlex.split(variant)
    if "/" in words[0]:
        python, *words = words
    server, *flags = words
    if server == "corral":
        return [python, "-m", "corral", "run", app, "--port", str(port), *flags], True
    if server == "uvicorn":
        return [python, "-m", "uvicorn", app, "--port", str(port), *flags], False
    raise SystemExit(f"a variant starts with corral or uvicorn, not {server!r}")


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def worker_of(server: subprocess.Popen[bytes], corral: bool, timeout: float = 20) -> psutil.Process:
    if not corral:
        return psutil.Process(server.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(server.pid).children(recursive=True):
            try:
                if child.cmdline()[:1] == ["corral: web.1"]:
                    return child
            except psutil.NoSuchProcess:  # a short-lived child (a fork on its way to exec)
                continue
        time.sleep(0.05)
    raise RuntimeError("no web.1 worker appeared")


def wrk(port: int, path: str, seconds: float) -> int:
    """Load the worker for `seconds`; the number of requests it served."""
    report = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds:g}s", f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return harness.parse_wrk(report).requests


def cpu_per_request(
    variant: str, app: str, path: str, seconds: float, profile: Path | None
) -> tuple[float, float | None] | None:
    """CPU microseconds per request of the worker and of corral's manager (None for a bare
    uvicorn); None when profiled (py-spy costs the worker CPU)."""
    port = harness.free_port()
    argv, corral = command(variant, app, port)
    server = subprocess.Popen(argv, cwd=APPS, stdout=subprocess.DEVNULL)
    try:
        worker = worker_of(server, corral)
        wait_port(port)
        time.sleep(0.5)
        wrk(port, path, 1)  # warm up
        if profile is not None:
            record_profile(worker.pid, port, path, seconds, profile)
            return None
        processes = [worker, psutil.Process(server.pid)] if corral else [worker]
        before = [sum(process.cpu_times()[:2]) for process in processes]
        served = wrk(port, path, seconds)
        after = [sum(process.cpu_times()[:2]) for process in processes]
        each = [(end - start) / served * 1e6 for start, end in zip(before, after, strict=True)]
        return each[0], (each[1] if corral else None)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()  # leave no server behind; corral's zygote and workers die with it
            server.wait()
            raise


def record_profile(pid: int, port: int, path: str, seconds: float, out: Path) -> None:
    """py-spy's collapsed stacks of `pid` while wrk loads it for `seconds`."""
    spy = subprocess.Popen(
        [
            *("py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "500"),
            *("--duration", str(int(seconds)), "--output", str(out), "--nonblocking"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)  # py-spy attaches
    wrk(port, path, seconds)
    spy.wait(seconds + 30)


FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:]*?)(:\d+)?\)$")


def where_time_goes(profile: Path, top: int = 12) -> str:
    """The functions the samples end in (self time), and each file's share, as text."""
    functions: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        match = FRAME.match(stack.rsplit(";", 1)[-1])
        function, file = (match["function"], match["file"]) if match else (stack, "?")
        file = file.rsplit("/site-packages/", 1)[-1].rsplit("/src/", 1)[-1]
        functions[f"{function} ({file})"] += int(count)
        files[file] += int(count)
    total = sum(files.values()) or 1
    lines = [f"  {100 * n / total:5.1f}%  {name}" for name, n in functions.most_common(top)]
    lines.append("  by file: " + ", ".join(
        f"{file} {100 * n / total:.0f}%" for file, n in files.most_common(8)
    ))  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("variants", nargs="*", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--app", default="hello:app")
    parser.add_argument("--path", default="/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy profiles here")
    args = parser.parse_args()
    costs: dict[str, list[float]] = {variant: [] for variant in args.variants}
    managers: dict[str, list[float]] = {variant: [] for variant in args.variants}
    for _ in range(args.rounds):
        for variant in args.variants:
            measured = cpu_per_request(variant, args.app, args.path, args.seconds, None)
            assert measured is not None
            costs[variant].append(measured[0])
            if measured[1] is not None:
                managers[variant].append(measured[1])
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        for number, variant in enumerate(args.variants, 1):
            out = args.profile / f"{number}.txt"
            cpu_per_request(variant, args.app, args.path, args.seconds, out)
            print(f"where the time of {variant!r} goes ({out}):\n{where_time_goes(out)}")
    if not args.rounds:
        return
    first = statistics.median(costs[args.variants[0]])
    width = max(len(v) for v in args.variants)
    for variant, values in costs.items():
        cost = statistics.median(values)
        rounded = " ".join(f"{v:.2f}" for v in values)
        manager = (
            f"  manager {statistics.median(managers[variant]):.2f} us" if managers[variant] else ""
        )
        print(f"{variant:<{width}}  {cost:6.2f} us  x{cost / first:.3f}  rate x{first / cost:.3f}"
              f"  [{rounded}]{manager}")  # fmt: skip


if __name__ == "__main__":
    main()
