"""The protocol choices (--http, --http2, --ws), each served to a real client, counted, drained."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
import signal
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trustme
import websockets


def requests_counted(server, status: int = 200) -> int:
    text = server.control_get("/metrics").text
    found = re.search(rf'corral_http_requests_total{{method="GET",status="{status}"}} (\S+)', text)
    return int(float(found.group(1))) if found else 0


def wait_counted(server, expected: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (counted := requests_counted(server)) < expected:
        assert time.monotonic() < deadline, f"{counted} of {expected} requests counted"
        time.sleep(0.1)
    assert counted == expected


def tls_files(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in certificate.cert_chain_pems))
    keyfile.write_bytes(certificate.private_key_pem.bytes())
    return authority, certfile, keyfile


@pytest.mark.parametrize("http", ["httptools", "h11", "zttp"])
def test_each_http_choice_serves_counts_and_logs_every_request(corral, http):
    server = corral("run", "sockets:app", "--port", "0", "--http", http)
    url = server.url()
    workers = server.wait_workers(1)
    with httpx.Client() as client:  # keep-alive: several requests on one connection
        answers = [client.get(f"{url}/n/{n}?q={n}") for n in range(5)]
    assert {a.status_code for a in answers} == {200}
    assert {a.text for a in answers} == {f"{workers['web.1']} 1.1"}
    wait_counted(server, 5)
    for n in range(5):
        server.wait_for(rf'"GET /n/{n}\?q={n} HTTP/1.1" 200')
    assert server.stop() == 0


@pytest.mark.parametrize("http", ["h11", "zttp"])
def test_a_choice_that_cannot_enforce_the_head_limits_says_so_at_start(corral, http):
    server = corral("run", "sockets:app", "--port", "0", "--http", http)
    server.url()
    line = server.wait_for(rf"--http {http} does not enforce (.*)").group(1)
    assert "--limit-request-line" in line and "--header-read-timeout" in line, line
    assert server.stop() == 0


def test_httptools_enforces_every_limit_and_says_nothing(corral):
    server = corral("run", "sockets:app", "--port", "0")
    server.url()
    server.wait_workers(1)
    assert "does not enforce" not in server.output
    assert server.stop() == 0


def draining(status: dict, name: str) -> bool:
    return any(row["name"] == name and row["state"] == "draining" for row in status["processes"])


def kept_alive(url: str) -> http.client.HTTPConnection:
    """A connection that has served one request and stays open, idle."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    conn.request("GET", "/")
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    assert (response.getheader("connection") or "").lower() != "close"
    return conn


@pytest.mark.parametrize("http", ["h11", "zttp"])
def test_a_drain_answers_what_comes_finishes_what_runs_and_closes_idle_connections(corral, http):
    server = corral(
        *("run", "plain:app", "--port", "0", "--http", http, "--graceful-timeout", "10"),
    )
    url = server.url()
    server.wait_workers(1)
    idle, reused = kept_alive(url), kept_alive(url)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, f"{url}/slow?seconds=3", timeout=15)
        server.wait_accepted(urlsplit(url).port, 3)
        server.send(signal.SIGTERM)
        server.wait_status("draining", lambda status: draining(status, "web.1"))
        time.sleep(0.3)  # uvicorn shuts its connections down at its next tick (0.1 s)
        # A request on an idle connection within the drain's grace (1 s) is answered, then
        # the connection closes.
        reused.request("GET", "/")
        answer = reused.getresponse()
        answer.read()
        assert (answer.status, answer.getheader("connection")) == (200, "close")
        assert idle.sock is not None
        idle.sock.settimeout(5)
        assert idle.sock.recv(1) == b"", "the idle connection was not closed cleanly"
        assert not slow.done(), "the idle connection should be closed while requests finish"
        response = slow.result(timeout=15)
    assert (response.status_code, response.headers.get("connection")) == (200, "close")
    assert server.wait(15) == 0


def test_http2_over_tls_with_alpn_and_http1_beside_it(corral, tmp_path):
    authority, certfile, keyfile = tls_files(tmp_path)
    server = corral(
        *("run", "sockets:app", "--port", "0", "--http", "zttp", "--http2"),
        *("--certfile", str(certfile), "--keyfile", str(keyfile)),
    )
    url = server.url()
    workers = server.wait_workers(1)
    context = ssl.create_default_context()
    authority.configure_trust(context)
    with httpx.Client(http2=True, verify=context) as client:
        answers = [client.get(f"{url}/h2/{n}") for n in range(3)]
    assert {a.http_version for a in answers} == {"HTTP/2"}
    assert {a.text for a in answers} == {f"{workers['web.1']} 2"}
    with httpx.Client(http2=False, verify=context) as client:
        answer = client.get(f"{url}/h1")
    assert (answer.http_version, answer.text) == ("HTTP/1.1", f"{workers['web.1']} 1.1")
    wait_counted(server, 4)
    server.wait_for(r'"GET /h2/2 HTTP/2" 200')
    assert server.stop() == 0


@pytest.mark.parametrize(
    ("args", "toml", "named"),
    [
        (["--http2"], "", "--http2: "),
        ([], "[web]\nhttp2 = true\n", "corral.toml: [web] http2: "),
    ],
    ids=["flag", "file"],
)
def test_http2_without_zttp_is_refused_naming_where_it_was_asked(tmp_path, args, toml, named):
    (tmp_path / "corral.toml").write_text(toml)
    done = subprocess.run(
        [sys.executable, "-m", "corral", "run", "sockets:app", "--port", "0", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    expected = "HTTP/2 is served by zttp: give http zttp (--http zttp) too, not 'auto'"
    assert f"corral: error: {named}{expected}" in done.stderr, done.stderr


@pytest.mark.parametrize("ws", ["websockets", "websockets-sansio", "wsproto"])
def test_each_websocket_choice_serves_a_session(corral, ws):
    server = corral("run", "sockets:app", "--port", "0", "--ws", ws)
    url = server.url().replace("http://", "ws://")
    workers = server.wait_workers(1)

    async def session() -> tuple[str, str]:
        async with websockets.connect(url, open_timeout=5) as socket:
            pid = await asyncio.wait_for(socket.recv(), 5)
            await socket.send("echo")
            return str(pid), str(await asyncio.wait_for(socket.recv(), 5))

    assert asyncio.run(session()) == (str(workers["web.1"]), "echo")
    assert server.stop() == 0


SESSIONS = 100


async def hold_sessions(
    url: str, connected: asyncio.Event, deadline: float
) -> list[tuple[str, int | None, float, str | None]]:
    """SESSIONS sessions: each connects, and when closed with 1012 connects again (once).

    Returns, per session: its first worker's pid, the close code it got, when
    (time.monotonic()), and the pid of the worker it reconnected to.
    """
    opened = 0

    async def one() -> tuple[str, int | None, float, str | None]:
        nonlocal opened
        async with websockets.connect(url, open_timeout=10) as first:
            pid = str(await asyncio.wait_for(first.recv(), 10))
            opened += 1
            if opened == SESSIONS:
                connected.set()
            with contextlib.suppress(websockets.ConnectionClosed):
                await asyncio.wait_for(first.recv(), deadline - time.monotonic())
            code, closed_at = first.close_code, time.monotonic()
        again = None
        if code == 1012:
            async with websockets.connect(url, open_timeout=10) as second:
                again = str(await asyncio.wait_for(second.recv(), 10))
        return pid, code, closed_at, again

    return await asyncio.gather(*(one() for _ in range(SESSIONS)))


def test_websocket_sessions_are_told_to_reconnect_after_the_grace_when_a_reload_drains_them(
    corral,
):
    grace = 1.0
    server = corral(
        *("run", "sockets:app", "--port", "0", "--workers", "2"),
        *("--ws-drain-grace", str(grace), "--backlog", "512"),
    )
    url = server.url().replace("http://", "ws://")
    old = set(server.wait_workers(2).values())

    async def scenario() -> tuple[float, list[tuple[str, int | None, float, str | None]]]:
        connected = asyncio.Event()
        sessions = asyncio.create_task(hold_sessions(url, connected, time.monotonic() + 40))
        await asyncio.wait_for(connected.wait(), 20)
        hup = time.monotonic()
        server.send(signal.SIGHUP)
        return hup, await sessions

    hup, results = asyncio.run(scenario())
    new = set(server.wait_workers(2).values())
    assert not old & new
    codes = [code for _, code, _, _ in results]
    reconnected = [again for _, code, _, again in results if code == 1012 and again]
    assert codes.count(1012) == SESSIONS, codes
    assert len(reconnected) == SESSIONS
    assert {int(pid) for pid, _, _, _ in results} <= old
    assert {int(pid) for pid in reconnected} <= new  # every session came back to the new code
    first_close = min(closed for _, _, closed, _ in results)
    assert first_close - hup >= grace, f"a session closed {first_close - hup:.2f}s after the HUP"
    assert server.stop() == 0
