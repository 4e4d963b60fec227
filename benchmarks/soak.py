"""The soak: 100,000 requests and 1,000 worker recycles, then the manager is looked at again.

    python benchmarks/soak.py            # 100,000 requests and 1,000 recycles (a few minutes)
    python benchmarks/soak.py --short    # 5,000 requests and 50 recycles (the tests' form)

corral serves benchmarks/apps/soak_app.py (plain ASGI with the prometheus_client metrics an
app usually has: a counter, a histogram, a gauge summed over live workers) with 4 workers,
`--max-requests 25 --max-requests-jitter 10` and the access log off; wrk (-c16, on
127.0.0.1, an answer slower than 10 s counted failed) loads it in slices of a few seconds
until corral has counted both numbers
(corral_http_requests_total, corral_restarts_total{cause="max-requests"}). Measured once the
workers have all been recycled once (the start), after every slice, and at the end (the
start's and the end's looks 2 s after the load stopped, so no recycle is under way):

- the manager's memory (RSS and USS) and open file descriptors;
- the metrics directory (PROMETHEUS_MULTIPROC_DIR): its files and the bytes they take on disk;
- /metrics: the median and the slowest of 20 scrapes over the control socket.

It passes when, from start to end, the manager's open descriptors are the same (give or
take 2), its RSS has grown by less than 10% + 2 MiB, the directory holds no file of a
process that has exited (only those of the live processes, a few each), /metrics answers as
fast (median at most twice the start's + 5 ms), no request failed, and the app's own counter
equals corral's (no count was lost to a recycle). Exit code 0 when it passes; the JSON
report goes to `--json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import harness
import httpx
import psutil

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
RESULTS = HERE / "results"
WORKERS = 4
MAX_REQUESTS = 25
JITTER = 10
CONNECTIONS = 16
WRK_TIMEOUT = "10s"  # wrk's --timeout: a slower answer counts as failed (2 s by default)
SLICE = 5.0  # seconds of wrk between two looks
SCRAPES = 20
QUIET = 2.0  # seconds without load before the start's and the end's looks: recycles settle
MIB = 1 << 20


@dataclass
class Look:
    """The manager and its metrics directory at one moment."""

    at_s: float  # since the start
    requests: int  # corral_http_requests_total
    recycles: int  # corral_restarts_total{cause="max-requests"}
    rss: int  # bytes
    uss: int
    fds: int
    files: int  # *.db in the metrics directory
    dead_files: int  # those of processes that have exited
    disk: int  # bytes those files take on disk
    scrape_ms: float  # median of SCRAPES
    scrape_max_ms: float
    app_requests: int  # the app's own counter, summed over workers by corral


class Soak:
    def __init__(self, scratch: Path) -> None:
        self.control = scratch / "control.sock"
        self.port = harness.free_port()
        self.client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.control)),
            base_url="http://corral",
            timeout=30,
        )

    def argv(self) -> list[str]:
        return [
            *(sys.executable, "-m", "corral", "run", "soak_app:app"),
            *("--port", str(self.port), "--workers", str(WORKERS)),
            *("--max-requests", str(MAX_REQUESTS), "--max-requests-jitter", str(JITTER)),
            *("--no-access-log", "--control", str(self.control)),
        ]

    def metrics(self) -> str:
        answer = self.client.get("/metrics")
        answer.raise_for_status()
        return answer.text

    def look(self, run: harness.Running, directory: Path, started: float) -> Look:
        times = []
        text = ""
        for _ in range(SCRAPES):
            began = time.perf_counter()
            text = self.metrics()
            times.append((time.perf_counter() - began) * 1000)
        manager = psutil.Process(run.pid)
        memory = manager.memory_full_info()
        files = list(directory.glob("*.db"))
        disk = 0
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                disk += path.stat().st_blocks * 512
        pids = [int(found[0]) for f in files if (found := re.findall(r"_(\d+)\.db$", f.name))]
        dead = sum(1 for pid in pids if not _alive(pid))
        return Look(
            at_s=round(time.monotonic() - started, 1),
            requests=int(_sample(text, "corral_http_requests_total")),
            recycles=int(_sample(text, "corral_restarts_total", 'cause="max-requests"')),
            rss=memory.rss,
            uss=memory.uss,
            fds=manager.num_fds(),
            files=len(files),
            dead_files=dead,
            disk=disk,
            scrape_ms=statistics.median(times),
            scrape_max_ms=max(times),
            app_requests=int(_sample(text, "soak_requests_total")),
        )


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _sample(text: str, name: str, label: str = "") -> float:
    """The sum of the samples of `name` (with `label` among their labels) in /metrics."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match and label in (match.group(1) or ""):
            total += float(match.group(2))
    return total


@dataclass
class Verdict:
    looks: list[Look]
    wrk_requests: int
    failed: int
    errors: dict[str, int]  # wrk's failures by kind
    p99_ms: float  # the worst of the slices' 99th percentile latencies
    problems: list[str]


def soak(requests: int, recycles: int, timeout: float) -> Verdict:
    with tempfile.TemporaryDirectory(prefix="corral-soak-") as scratch:
        soak = Soak(Path(scratch))
        with harness.running(soak.argv(), APPS, {}, "BENCH_READY_DIR", soak.port) as run:
            harness.wait_ready(run, WORKERS, "/")
            (directory,) = Path(tempfile.gettempdir()).glob(f"corral-metrics-{run.pid}-*")
            started = time.monotonic()
            sent = failed = 0
            errors: Counter[str] = Counter()
            slowest = 0.0  # the worst p99 of the slices, ms
            looks: list[Look] = []
            # The start: once every worker has been recycled once (its replacement's files,
            # the manager's fold of the dead one's), the steady state; then, as at the end,
            # the load stops and the last heartbeats come in before the look.
            while not looks or looks[-1].recycles < WORKERS:
                report = harness.run_wrk(run.port, "/", CONNECTIONS, 1.0, WRK_TIMEOUT)
                sent, failed = sent + report.requests, failed + report.failed
                errors += _errors(report)
                looks.append(soak.look(run, directory, started))
            time.sleep(QUIET)
            looks = [soak.look(run, directory, started)]
            while looks[-1].requests < requests or looks[-1].recycles < recycles:
                if time.monotonic() - started > timeout:
                    break
                report = harness.run_wrk(run.port, "/", CONNECTIONS, SLICE, WRK_TIMEOUT)
                slowest = max(slowest, report.p99_ms or 0.0)
                sent, failed = sent + report.requests, failed + report.failed
                errors += _errors(report)
                look = soak.look(run, directory, started)
                looks.append(look)
                progress(
                    f"{look.at_s:6.1f}s  {look.requests} requests, {look.recycles} recycles, "
                    f"RSS {look.rss / MIB:.1f} MiB, {look.fds} fds, {look.files} files, "
                    f"/metrics {look.scrape_ms:.1f} ms"
                )
            time.sleep(QUIET)
            looks.append(soak.look(run, directory, started))
        soak.client.close()
    problems = judge(looks, failed, requests, recycles)
    return Verdict(looks, sent, failed, dict(errors), slowest, problems)


def _errors(report: harness.WrkReport) -> Counter[str]:
    kinds = ("connect_errors", "read_errors", "write_errors", "timeouts", "non_2xx")
    return Counter({kind: getattr(report, kind) for kind in kinds if getattr(report, kind)})


def judge(looks: list[Look], failed: int, requests: int, recycles: int) -> list[str]:
    start, end = looks[0], looks[-1]
    problems = []
    if end.requests < requests or end.recycles < recycles:
        problems.append(f"only {end.requests} requests and {end.recycles} recycles in time")
    if failed:
        problems.append(f"{failed} requests failed")
    if abs(end.fds - start.fds) > 2:
        problems.append(f"open descriptors: {start.fds} at the start, {end.fds} at the end")
    if end.rss > start.rss * 1.1 + 2 * MIB:
        problems.append(f"RSS: {start.rss / MIB:.1f} MiB, then {end.rss / MIB:.1f} MiB")
    if end.dead_files:
        problems.append(f"metrics directory: {end.dead_files} files of processes that exited")
    if end.scrape_ms > 2 * start.scrape_ms + 5:
        problems.append(f"/metrics: {start.scrape_ms:.1f} ms, then {end.scrape_ms:.1f} ms")
    if end.app_requests != end.requests:
        problems.append(f"the app counted {end.app_requests} requests, corral {end.requests}")
    return problems


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--short", action="store_true", help="5,000 requests, 50 recycles")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--recycles", type=int, default=1_000)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds at most")
    parser.add_argument("--json", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args(argv)
    if args.short:
        args.requests, args.recycles = 5_000, 50
    began = time.monotonic()
    meta: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "nproc": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
    cpu = harness.cpu_reading()
    verdict = soak(args.requests, args.recycles, args.timeout)
    meta["other_load"] = harness.others_share(cpu, harness.cpu_reading())
    meta["load_after"] = os.getloadavg()
    meta["elapsed_s"] = round(time.monotonic() - began, 1)
    print(render(meta, verdict))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "verdict": asdict(verdict), "passed": not verdict.problems}
    args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0 if not verdict.problems else 1


def render(meta: dict[str, Any], verdict: Verdict) -> str:
    start, end = verdict.looks[0], verdict.looks[-1]
    rows = [
        ("requests (corral's count)", f"{start.requests}", f"{end.requests}"),
        ("worker recycles (max-requests)", f"{start.recycles}", f"{end.recycles}"),
        ("manager RSS, MiB", f"{start.rss / MIB:.1f}", f"{end.rss / MIB:.1f}"),
        ("manager USS, MiB", f"{start.uss / MIB:.1f}", f"{end.uss / MIB:.1f}"),
        ("manager open fds", f"{start.fds}", f"{end.fds}"),
        ("metrics directory: files", f"{start.files}", f"{end.files}"),
        ("... of processes that exited", f"{start.dead_files}", f"{end.dead_files}"),
        ("metrics directory: KiB on disk", f"{start.disk // 1024}", f"{end.disk // 1024}"),
        ("/metrics, ms (median of 20)", f"{start.scrape_ms:.1f}", f"{end.scrape_ms:.1f}"),
        ("/metrics, ms (slowest of 20)", f"{start.scrape_max_ms:.1f}", f"{end.scrape_max_ms:.1f}"),
        ("the app's own request counter", f"{start.app_requests}", f"{end.app_requests}"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [
        f"{meta['date']}  nproc {meta['nproc']}",
        "load average before: {:.2f} {:.2f} {:.2f}".format(*meta["load_before"])
        + ", after: {:.2f} {:.2f} {:.2f}".format(*meta["load_after"]),
        f"other processes used {meta['other_load']:.0%} of the CPUs during the run",
        f"wrk: {verdict.wrk_requests} requests, {verdict.failed} failed {verdict.errors or ''}, "
        f"p99 at most {verdict.p99_ms:.0f} ms (the worst slice)",
        "",
        f"{'':{width}}  {'start':>10}  {'end':>10}",
        *(f"{name:{width}}  {a:>10}  {b:>10}" for name, a, b in rows),
        "",
        "PASS" if not verdict.problems else "FAIL",
        *(f"  problem: {p}" for p in verdict.problems),
        f"{meta['elapsed_s']:.0f} s",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
