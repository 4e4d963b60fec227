"""The app's prometheus_client files: counts kept exactly, however many processes come and go,
in a directory that does not grow with them.

prometheus_client writes one file per process and metric kind; corral folds the files of each
process that exits into its own (the manager's), so that the directory, and the time a scrape
takes, stay bounded through recycles, job runs, and zygotes that die with their workers.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent

import httpx
from prometheus_client.parser import text_string_to_metric_families

APP = '''
"""A plain app with prometheus_client metrics: hits, and its live workers (livesum)."""

import os

from prometheus_client import Counter, Gauge, Histogram

HITS = Counter("app_hits", "Requests served")
SECONDS = Histogram("app_seconds", "Time to answer")
ALIVE = Gauge("app_workers", "Workers alive", multiprocess_mode="livesum")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                ALIVE.inc()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    with SECONDS.time():
        HITS.inc()
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
'''

TASKS = """
from prometheus_client import Counter

RUNS = Counter("job_runs_seen", "Runs of the job")


def count():
    RUNS.inc()
"""


def _metrics_dir(server) -> Path:
    (path,) = Path(os.environ.get("TMPDIR", "/tmp")).glob(f"corral-metrics-{server.pid}-*")
    return path


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.db"))


def _value(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


def _until(what: str, probe: Callable[[], bool], server, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s\n{server.output}"
        time.sleep(0.1)


def test_recycled_workers_files_are_folded_and_their_counts_kept(corral, tmp_path):
    (tmp_path / "counted.py").write_text(APP)
    server = corral(
        "run", "counted:app", "--port", "0", "--workers", "2", "--max-requests", "5",
        "--no-access-log", cwd=tmp_path,
    )  # fmt: skip
    url = server.url()
    server.wait_workers(2)
    directory = _metrics_dir(server)
    sent = 0
    with httpx.Client(timeout=10) as client:
        while server.count(r"replacing it \(max-requests\)") < 12:
            assert client.get(url, headers={"connection": "close"}).status_code == 200
            sent += 1
            assert sent < 2000, server.output
    server.wait_workers(2)
    _until(
        "the app's counter adds up",
        lambda: _value(server.control_get("/metrics").text, "app_hits_total") == sent,
        server,
    )
    text = server.control_get("/metrics").text
    assert _value(text, "app_seconds_count") == sent, text
    assert _value(text, "app_workers") == 2, text  # the live ones only
    files = _files(directory)
    pids = {int(n) for name in files for n in re.findall(r"_(\d+)\.db$", name)}
    live = {row["pid"] for row in server.status()["processes"]}  # the zygote imported the app
    assert pids <= live, (files, live)  # none of an exited worker's
    assert server.stop() == 0


def test_job_runs_files_are_folded_and_their_counts_kept(corral, tmp_path):
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "corral.toml").write_text(
        dedent(
            """
            [jobs.count]
            call = "tasks:count"
            every = "0.2s"
            """
        )
    )
    server = corral("run", cwd=tmp_path)
    _until("ten runs", lambda: server.status()["jobs"][0]["runs"] >= 10, server)
    directory = _metrics_dir(server)
    runs = server.status()["jobs"][0]["runs"]
    text = server.control_get("/metrics").text
    seen = _value(text, "job_runs_seen_total")
    assert seen is not None and seen >= runs, text  # every finished run counted
    assert len(_files(directory)) <= 2, _files(directory)  # the manager's, and a run going
    assert server.stop() == 0


def test_workers_gone_with_their_zygote_leave_no_live_gauge_nor_file(corral, tmp_path):
    (tmp_path / "counted.py").write_text(APP)
    server = corral(
        "run", "counted:app", "--port", "0", "--workers", "2", "--no-access-log", cwd=tmp_path
    )
    url = server.url()
    old = server.wait_workers(2)
    for _ in range(10):
        assert httpx.get(url, headers={"connection": "close"}, timeout=10).status_code == 200
    (zygote,) = [row["pid"] for row in server.status()["processes"] if row["kind"] == "zygote"]
    os.kill(zygote, signal.SIGKILL)
    _until(
        "two new workers",
        lambda: set(server.wait_workers(2).values()).isdisjoint(old.values()),
        server,
    )
    for _ in range(5):
        assert httpx.get(url, headers={"connection": "close"}, timeout=10).status_code == 200
    _until(
        "the old workers' live gauges gone",
        lambda: _value(server.control_get("/metrics").text, "app_workers") == 2,
        server,
    )
    _until(
        "every request counted",
        lambda: _value(server.control_get("/metrics").text, "corral_http_requests_total") == 15,
        server,
    )
    text = server.control_get("/metrics").text
    assert _value(text, "app_hits_total") == 15, text
    assert _value(text, "corral_http_requests_in_flight") == 0, text
    pids = {
        int(n) for name in _files(_metrics_dir(server)) for n in re.findall(r"_(\d+)\.db$", name)
    }
    assert pids.isdisjoint(old.values()), _files(_metrics_dir(server))
    for name, pid in old.items():  # their parent, the zygote, took their exit status with it
        assert f"{name} stopped (pid {pid}, exit status unknown): its zygote exited" in (
            server.output
        )
    assert server.stop() == 0


def test_a_scrape_that_meets_a_file_being_created_still_answers(corral, tmp_path):
    """Found by the soak: prometheus_client creates a process's file empty, then sizes it; a
    scrape in between read the empty file and answered 500 (struct.error)."""
    (tmp_path / "counted.py").write_text(APP)
    server = corral("run", "counted:app", "--port", "0", "--no-access-log", cwd=tmp_path)
    url = server.url()
    server.wait_workers(1)
    assert httpx.get(url, timeout=10).status_code == 200
    being_created = _metrics_dir(server) / f"counter_{os.getpid()}.db"  # a live pid's
    being_created.touch()
    answer = server.control_get("/metrics")
    assert answer.status_code == 200, answer.text
    assert _value(answer.text, "app_hits_total") == 1, answer.text
    being_created.unlink()
    assert server.stop() == 0
