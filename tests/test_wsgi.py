"""WSGI apps (Flask here), tested on real processes: served through a2wsgi with a thread pool
per worker, and everything corral does for an ASGI app: access log and /metrics, a request
stuck in a thread caught by --timeout with every thread's stack, reload under load without a
failed request (with and without preload), recycling, and processes and jobs beside it.
"""

from __future__ import annotations

import re
import signal
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import APPS, load_result, start_load

TWO_SECONDS_TIMEOUT = ("--timeout", "2", "--graceful-timeout", "3")


def _served_by(response: httpx.Response) -> tuple[str, int]:
    worker, pid, *_ = response.text.split()
    return worker, int(pid)


def test_a_flask_app_is_told_wsgi_served_logged_and_counted(corral):
    server = corral("run", "flaskapp:app", "--port", "0", "--workers", "2")
    url = server.url()
    server.wait_workers(2)
    line = server.wait_for(r"web: app flaskapp:app .*").group(0)
    assert line == (
        "web: app flaskapp:app (flask.app.Flask), WSGI, 1 thread per worker; as given"
    ), line

    for _ in range(5):
        response = httpx.get(url, timeout=5)
        assert response.status_code == 200
        worker, _pid, thread, version = response.text.split()
        assert worker.startswith("web.") and thread.startswith("WSGI") and version == "v1"
    assert httpx.get(f"{url}/missing", timeout=5).status_code == 404
    body = b"x" * 100_000
    assert httpx.post(f"{url}/echo", content=body, timeout=5).content == body

    server.wait_for(r'^web\.\d\s*\| 127\.0\.0\.1:\d+ - "GET / HTTP/1\.1" 200 [\d.]+ms$')
    server.wait_for(r'"GET /missing HTTP/1\.1" 404 ')
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        counts = _requests_total(server.control_get("/metrics").text)
        if counts == {("GET", "200"): 5, ("GET", "404"): 1, ("POST", "200"): 1}:
            break
        time.sleep(0.2)
    assert counts == {("GET", "200"): 5, ("GET", "404"): 1, ("POST", "200"): 1}, counts
    assert server.stop() == 0


def _requests_total(text: str) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["method"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "corral_http_requests_total"
    }


@pytest.mark.parametrize("threads", [1, 4])
def test_threads_is_how_many_requests_one_worker_runs_at_once(corral, threads: int):
    args = ["--threads", str(threads)] if threads != 1 else []  # 1 is the default
    server = corral("run", "flaskapp:app", "--port", "0", *args)
    url = server.url()
    server.wait_workers(1)
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: httpx.get(f"{url}/slow?seconds=1", timeout=10), range(4)))
    took = time.monotonic() - started
    assert [a.status_code for a in answers] == [200] * 4
    threads_used = {a.text.split()[1] for a in answers}
    print(f"--threads {threads}: 4 requests of 1 s took {took:.2f}s in {threads_used}")
    if threads == 1:
        assert took >= 3.9, took  # one after the other
        assert len(threads_used) == 1
    else:
        assert took < 2.5, took  # side by side
        assert len(threads_used) == 4
    assert server.stop() == 0


def test_a_request_stuck_in_a_thread_is_caught_by_timeout_with_that_threads_stack(corral):
    server = corral("run", "flaskapp:app", "--port", "0", "--threads", "2", *TWO_SECONDS_TIMEOUT)
    url = server.url()
    old_pid = server.wait_workers(1)["web.1"]
    mark = server.mark()

    with ThreadPoolExecutor(1) as pool:
        sent = time.monotonic()
        blocked = pool.submit(httpx.get, f"{url}/block?seconds=60", timeout=15)
        # The event loop is free meanwhile: the other thread answers, heartbeats go on.
        assert httpx.get(url, timeout=5).status_code == 200
        notice = server.line_index(
            rf"web\.1 \(pid {old_pid}\) has run GET /block for 2s in thread (0x[0-9a-f]+): "
            r"sending SIGABRT to log every thread's stack, then SIGKILL",
            after=mark,
            timeout=10,
        )
        noticed_after = time.monotonic() - sent
        thread = re.search(r"thread (0x[0-9a-f]+)", server.lines[notice]).group(1)
        header = server.line_index(rf"^web\.1\s*\| Thread {thread} \(most recent call first\)")
        frame = server.line_index(r"^web\.1\s*\|.*flaskapp\.py.* in stuck_in_a_wsgi_thread$")
        assert frame == header + 1, server.output  # that thread's innermost frame is the app's
        exited = server.line_index(
            rf"web\.1 exited \(pid {old_pid}, killed by SIG(ABRT|KILL) \(timeout", after=frame
        )
        new_pid = int(server.wait_for(r"web\.1 started \(pid (\d+)\)", after=exited)[1])
        with pytest.raises(httpx.TransportError):  # its worker died under it
            blocked.result(timeout=10)

    # The request's age comes with each heartbeat (one a second): caught 2 to 3 s after it.
    assert 1.9 <= noticed_after < 6, f"noticed after {noticed_after:.1f}s with --timeout 2"
    assert server.wait_workers(1) == {"web.1": new_pid}
    assert _served_by(httpx.get(url, timeout=5)) == ("web.1", new_pid)
    assert server.stop() == 0


def test_a_long_request_under_the_timeout_is_left_alone(corral):
    server = corral("run", "flaskapp:app", "--port", "0", *TWO_SECONDS_TIMEOUT)
    url = server.url()
    server.wait_workers(1)
    assert httpx.get(f"{url}/slow?seconds=1.5", timeout=10).status_code == 200
    time.sleep(2.5)  # a finished request no longer counts, however old
    assert server.count("SIGABRT") == 0, server.output
    assert server.stop() == 0


@pytest.mark.parametrize("preload", ["--preload", "--no-preload"])
def test_a_reload_under_load_loses_no_request_and_serves_the_new_code(
    corral, tmp_path: Path, preload: str
):
    env_file = tmp_path / ".env"
    env_file.write_text("FLASKAPP_VERSION=v1\n")
    server = corral(
        "run", "flaskapp:app", "--port", "0", "--workers", "2", "--threads", "4",
        "--env-file", str(env_file), preload, cwd=APPS,
    )  # fmt: skip
    url = server.url()
    server.wait_workers(2)
    load = start_load(url, 4, connections=16)
    try:
        time.sleep(1.5)
        env_file.write_text("FLASKAPP_VERSION=v2\n")
        mark = server.mark()
        server.send(signal.SIGHUP)
        server.wait_for(r"reload complete: 2 workers on the new code", after=mark, timeout=20)
    finally:
        result = load_result(load)
    print(f"{preload}: {result.requests} requests, {result.failures} failed")
    assert result.failures == 0, result.report
    assert result.requests >= 500, result.report
    server.wait_workers(2)
    versions = {httpx.get(url, timeout=5).text.split()[3] for _ in range(6)}
    assert versions == {"v2"}, versions
    assert server.stop() == 0


@pytest.mark.parametrize("preload", ["--preload", "--no-preload"])
def test_preload_imports_the_wsgi_app_once_for_every_worker(corral, tmp_path: Path, preload):
    imports = tmp_path / "imports.txt"
    server = corral(
        "run", "flaskapp:app", "--port", "0", "--workers", "3", preload,
        env={"FLASKAPP_IMPORTS": str(imports)},
    )  # fmt: skip
    server.url()
    workers = set(server.wait_workers(3).values())
    importers = {int(pid) for pid in imports.read_text().split()}
    if preload == "--preload":
        (zygote,) = importers
        assert " ".join(psutil.Process(zygote).cmdline()).startswith("corral: web.zygote")
    else:
        assert importers == workers, (importers, workers)
    assert server.stop() == 0


def test_max_requests_replaces_a_wsgi_worker_first(corral):
    server = corral("run", "flaskapp:app", "--port", "0", "--max-requests", "20")
    url = server.url()
    old_pid = server.wait_workers(1)["web.1"]
    with httpx.Client(timeout=5) as client:
        for _ in range(25):
            assert client.get(url).status_code == 200
    index = server.line_index(
        rf"web\.1 \(pid {old_pid}\) served \d+ requests: replacing it \(max-requests\)"
    )
    started = server.line_index(r"web\.1 started \(pid (\d+)\)", after=index)
    stopped = server.line_index(
        rf"web\.1 stopped \(pid {old_pid}, exit code 0\): max-requests", after=index
    )
    assert started < stopped, server.output
    assert server.stop() == 0


def test_processes_and_jobs_run_beside_a_wsgi_app(corral, tmp_path: Path):
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent(
            """
            import os, time

            def tick():
                with open("tick.txt", "a") as f:
                    f.write(f"{time.time()}\\n")

            def consume():
                with open("consumer.txt", "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(60)
            """
        )
    )
    (tmp_path / "corral.toml").write_text(
        textwrap.dedent(
            f"""
            [web]
            app = "{APPS / "flaskapp.py"}"
            port = 0

            [processes.consumer]
            call = "tasks:consume"

            [jobs.tick]
            call = "tasks:tick"
            every = "1s"
            """
        )
    )
    server = corral("run", cwd=tmp_path)
    url = server.url()
    server.wait_workers(1)
    assert httpx.get(url, timeout=5).text.split()[0] == "web.1"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ticks = (
            (tmp_path / "tick.txt").read_text().split() if (tmp_path / "tick.txt").exists() else []
        )
        if len(ticks) >= 2 and (tmp_path / "consumer.txt").exists():
            break
        time.sleep(0.2)
    assert len(ticks) >= 2, server.output
    assert (tmp_path / "consumer.txt").read_text().isdigit(), server.output
    server.wait_for(
        r"web: app flaskapp:app \(flask\.app\.Flask\), WSGI, .*; found by its name in /"
    )
    assert server.stop() == 0
