"""The control API against bad bodies, bad methods, bad tokens, huge requests and slow clients.

On its TCP listener (`--control HOST:PORT`, which needs the token) and on the probes listener
(`--probes`, which a container exposes to its network): never an answer of 500 nor a
traceback in corral's output, never a change without the token, and a manager whose memory
and connections no client can make grow without bound.

The fuzzing test draws its examples with hypothesis; in CI a fixed sequence (the "ci" profile
of conftest.py), the long form draws new ones:
`pytest tests/test_fuzz_control.py --hypothesis-profile long`.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import APPS, Corral, Started, fuzz_timeout
from corral.control.protocol import REQUEST_TIMEOUT

TOKEN = "the-token-of-the-fuzz"
MIB = 1 << 20


@dataclass
class Target:
    server: Corral
    port: int  # the control API on TCP (the token needed)
    probes: int  # the probes listener
    initial: tuple[Any, ...] = ()  # its state when the tests began: no example may change it

    def state(self) -> tuple[Any, ...]:
        """What a call that changes something changes: reloads, processes, their pids."""
        status = self.server.status()
        processes = sorted((row["name"], row["pid"], row["state"]) for row in status["processes"])
        return status["corral"]["reloads"], processes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    directory: Path = tmp_path_factory.mktemp("fuzz-control")
    (directory / "plain.py").write_text((APPS / "plain.py").read_text())
    (directory / "corral.toml").write_text(
        '[web]\napp = "plain:app"\nport = 0\n\n[jobs.hourly]\ncommand = "true"\nevery = "1h"\n'
    )
    port, probes = _free_port(), _free_port()
    started = Started()
    try:
        server = started.corral(
            "run", "--control", f"127.0.0.1:{port}", "--probes", f"127.0.0.1:{probes}",
            cwd=directory, env={"CORRAL_TOKEN": TOKEN},
        )  # fmt: skip
        server.url()
        server.wait_workers(1)
        target = Target(server, port, probes)
        target.initial = target.state()
        yield target
        assert server.stop() == 0
    finally:
        started.cleanup()


def exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send `data`, end our side once the server has had time to answer, read to the close."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        sock.settimeout(0.3)
        try:
            while chunk := sock.recv(65536):
                received += chunk
            return received
        except TimeoutError:
            pass
        except ConnectionResetError:
            return received
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        sock.settimeout(timeout)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return received


# -- what a client may send ------------------------------------------------------------------

PATHS = st.sampled_from(
    [
        *("/status", "/logs", "/livez", "/readyz", "/metrics", "/reload", "/restart", "/scale"),
        *("/stop", "/jobs/hourly/run", "/jobs/nope/run", "/jobs//run", "/", "/status/", "//x"),
        *("/logs?lines=abc", "/logs?lines=99999999999999999999", "/logs?follow=2", "/%2e%2e"),
    ]
) | st.text(st.characters(codec="ascii", exclude_characters=" \r\n"), max_size=30).map(
    lambda text: "/" + text
)
ROUTES = st.sampled_from(
    ["/status", "/reload", "/restart", "/scale", "/stop", "/jobs/hourly/run", "/nowhere"]
)  # paths that are valid HTTP, so that each answer is the API's own
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW"])
WRONG_AUTH = st.sampled_from(
    [
        None, "", "Bearer", "Bearer ", "Bearer wrong", "bearer wrong", f"Basic {TOKEN}",
        f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"{TOKEN}", "Bearer \u00e9",
    ]
)  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
BODIES = (
    JSON.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=200)
    | st.sampled_from([b"{", b'{"counts": {"web": -1}}', b'{"group": 5}', b"[]", b"\xff\xfe"])
    | st.integers(65_000, 300_000).map(lambda size: b'{"target": "' + b"x" * size + b'"}')
)
# With the token, only what is refused before it changes anything: fields no call takes.
REFUSED_BODIES = st.dictionaries(
    st.text(min_size=1, max_size=8).filter(lambda k: k not in ("group", "target", "counts")),
    JSON,
    min_size=1,
).map(lambda value: json.dumps(value).encode()) | st.sampled_from([b"[]", b"3", b"{"])


def request(method: str, path: str, auth: str | None, body: bytes) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: corral\r\nConnection: close\r\n"
    if auth is not None:
        head += f"Authorization: {auth}\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode("utf-8") + body


STATUS = re.compile(rb"^HTTP/1\.1 (\d{3}) ")


@fuzz_timeout(per_example=0.5)
@given(
    method=METHODS,
    path=PATHS,
    auth=WRONG_AUTH,
    body=BODIES,
    probes=st.booleans(),
)
def test_without_the_token_a_call_changes_nothing_and_gets_no_500(
    target: Target, method: str, path: str, auth: str | None, body: bytes, probes: bool
):
    mark = target.server.mark()
    port = target.probes if probes else target.port
    answer = exchange(port, request(method, path, auth, body))
    status = STATUS.match(answer)
    assert status is not None, answer[:300]
    assert int(status[1]) in (200, 400, 401, 404, 405, 413, 503), answer[:500]
    assert target.state() == target.initial
    assert "Traceback" not in "\n".join(target.server.lines[mark:]), target.server.output


@fuzz_timeout(per_example=0.5)
@given(method=st.sampled_from(["POST", "PUT", "GET"]), path=ROUTES, body=REFUSED_BODIES)
def test_with_the_token_a_bad_body_is_refused_with_a_reason_and_changes_nothing(
    target: Target, method: str, path: str, body: bytes
):
    mark = target.server.mark()
    answer = exchange(target.port, request(method, path, f"Bearer {TOKEN}", body))
    status = STATUS.match(answer)
    assert status is not None, answer[:300]
    assert int(status[1]) in (200, 400, 404, 405, 413), answer[:500]
    if int(status[1]) >= 400:
        assert b'"error"' in answer, answer[:500]
    assert target.state() == target.initial
    assert "Traceback" not in "\n".join(target.server.lines[mark:]), target.server.output


# -- clients that hold on ----------------------------------------------------------------------


def _rss(server: Corral) -> int:
    return psutil.Process(server.pid).memory_info().rss


@pytest.mark.parametrize("listener", ["control", "probes"])
def test_huge_request_heads_cannot_grow_the_managers_memory(target: Target, listener: str):
    """Ten clients send a header without end: each is refused once its head passes a bound."""
    port = target.port if listener == "control" else target.probes
    before = _rss(target.server)
    clients = []
    for _ in range(10):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: corral\r\nX-Big: ")
        clients.append(sock)
    refused = 0
    chunk = b"a" * MIB
    for sock in clients:
        try:
            for _ in range(20):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            refused += 1
    grew = _rss(target.server) - before
    for sock in clients:
        sock.close()
    assert grew < 20 * MIB, f"the manager grew by {grew / MIB:.0f} MiB"
    assert refused == 10


def test_a_client_that_sends_no_whole_request_head_is_closed(target: Target):
    silent = socket.create_connection(("127.0.0.1", target.port), timeout=REQUEST_TIMEOUT + 5)
    trickling = socket.create_connection(("127.0.0.1", target.probes), timeout=REQUEST_TIMEOUT + 5)
    started = time.monotonic()
    trickling.sendall(b"GET /metrics HTTP/1.1\r\n")
    with silent, trickling:
        while time.monotonic() - started < REQUEST_TIMEOUT - 1:
            trickling.sendall(b"X: y\r\n")  # a header line a second: never a whole head
            time.sleep(1)
        for sock in (silent, trickling):
            assert sock.recv(1) == b"", "not closed"  # blocks until the close, or times out
    assert time.monotonic() - started < REQUEST_TIMEOUT + 3
    answer = exchange(target.port, request("GET", "/livez", None, b""))
    assert answer.startswith(b"HTTP/1.1 200 "), answer


def test_a_client_that_sends_no_whole_body_is_closed(target: Target):
    """The head says 100 bytes of body come; ten come, then nothing."""
    with socket.create_connection(("127.0.0.1", target.port), timeout=REQUEST_TIMEOUT + 5) as sock:
        started = time.monotonic()
        head = f"POST /reload HTTP/1.1\r\nHost: corral\r\nAuthorization: Bearer {TOKEN}\r\n"
        sock.sendall(head.encode() + b"Content-Length: 100\r\n\r\n" + b"{" * 10)
        answer = b""
        while chunk := sock.recv(65536):  # until the close, or the socket's timeout
            answer += chunk
    assert time.monotonic() - started < REQUEST_TIMEOUT + 3, answer
    assert not answer or answer.startswith(b"HTTP/1.1 4"), answer


def test_a_huge_body_is_refused_with_413_and_read_no_further(target: Target):
    before = _rss(target.server)
    body = b'{"counts": {"web": 1}, "x": "' + b"a" * (50 * MIB) + b'"}'
    answer = exchange(target.port, request("POST", "/scale", f"Bearer {TOKEN}", body))
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert _rss(target.server) - before < 20 * MIB
