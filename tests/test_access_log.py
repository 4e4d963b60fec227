"""Access lines reach corral's output once each, and `corral logs` (and its followers) too.

The workers write their blocks of access lines to a pipe the manager reads
(`corral.manager.access_log`); it forwards them to its stdout and keeps
them in the log buffer. Text and `--log-format json` alike.
"""

from __future__ import annotations

import itertools
import json
import queue
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import Corral

CLI_TIMEOUT = 30


def _logs(server: Corral, *args: str) -> list[str]:
    """What `corral logs ARGS` prints, talking to `server` over its control socket."""
    done = subprocess.run(
        [sys.executable, "-m", "corral", "logs", "--control", str(server.control_socket()), *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _get(server: Corral, paths: list[str]) -> None:
    url = server.url()
    for path in paths:  # a new connection each: any worker may take it
        assert httpx.get(url + path, timeout=10).status_code == 200


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_corral_logs_shows_the_access_lines_that_corral_printed_once(corral, log_format):
    server = corral("run", "plain:app", "--port", "0", "--workers", "2", "--log-format", log_format)
    server.wait_workers(2)
    paths = [f"/seen-by-logs?n={n}" for n in range(6)]
    _get(server, paths)
    for path in paths:
        server.wait_for(path.replace("?", r"\?"), timeout=5)
        assert server.count(path.replace("?", r"\?") + " ") == 1, server.output  # printed once
    if log_format == "json":
        records = [json.loads(line) for line in server.lines if "seen-by-logs" in line]
        assert {r["path"] for r in records} == {"/seen-by-logs"}
        assert {r["status"] for r in records} == {200} and {r["level"] for r in records} == {"info"}

    shown = _logs(server, "-n", "200", "web")
    for path in paths:
        (line,) = [line for line in shown if f'"GET {path} HTTP/1.1" 200' in line]
        assert line.startswith(("web.1 ", "web.2 ")), line
    one_worker = _logs(server, "-n", "200", "web.1")
    assert all(line.startswith("web.1 ") for line in one_worker), one_worker
    assert _logs(server, "-n", "200", "corral")  # the manager's own lines, without the others
    assert not any("seen-by-logs" in line for line in _logs(server, "-n", "200", "corral"))
    assert server.stop() == 0


def test_a_follower_gets_new_access_lines(corral):
    server = corral("run", "plain:app", "--port", "0")
    server.wait_workers(1)
    command = [sys.executable, "-m", "corral", "logs", "-f", "-n", "0"]
    command += ["--control", str(server.control_socket()), "web"]
    follower = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert follower.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout])
    reader.start()
    try:
        # It follows from when it has subscribed: ask until a request of ours reaches it.
        deadline = time.monotonic() + 15
        for n in itertools.count():
            _get(server, [f"/followed?n={n}"])
            try:
                line = lines.get(timeout=0.5)
                break
            except queue.Empty:
                assert time.monotonic() < deadline, "the follower got no access line"
        assert re.match(r'web\.1 +\| 127\.0\.0\.1:\d+ - "GET /followed\?n=\d+ HTTP/1\.1" 200', line)
    finally:
        follower.terminate()
        follower.wait(10)
        reader.join(10)
    assert server.stop() == 0


def test_access_lines_do_not_reach_corral_logs_with_the_access_log_off(corral):
    server = corral("run", "plain:app", "--port", "0", "--no-access-log")
    server.wait_workers(1)
    _get(server, ["/unlogged"])
    assert not any("/unlogged" in line for line in _logs(server, "-n", "200"))
    assert server.stop() == 0


def test_a_decoded_newline_in_the_path_cannot_forge_an_access_line(corral):
    """uvicorn decodes %0A in the path; the line keeps it quoted, so one request is one line."""
    server = corral("run", "plain:app", "--port", "0")
    host, port = server.url().removeprefix("http://").rsplit(":", 1)
    forged = '127.0.0.1:1 - "GET /admin HTTP/1.1" 200 0.1ms'
    target = "/x%0A" + forged.replace(" ", "%20").replace('"', "%22")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        while sock.recv(65536):
            pass
    line = server.wait_for(r'"GET /x%0A127\.0\.0\.1:1%20-%20%22GET%20/admin', timeout=5)
    assert line.string.endswith("ms"), line.string
    assert not any(text.endswith(forged) for text in server.lines), server.output
    assert server.stop() == 0
