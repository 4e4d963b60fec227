"""What one client may take of a worker: its request head, the time it takes, its reads and writes.

Each test is a client that misbehaves on a real socket against a real
worker (tests/apps/clients.py), and what the worker does about it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import time
from collections.abc import Callable

import psutil
import pytest

from conftest import Corral

MIB = 1 << 20


def serve(corral: Callable[..., Corral], *args: str) -> tuple[Corral, int, int]:
    """corral serving tests/apps/clients.py with one worker: the server, its port, the worker."""
    server = corral("run", "clients:app", "--port", "0", *args)
    port = int(server.url().rsplit(":", 1)[1])
    pid = server.wait_workers(1)["web.1"]
    return server, port, pid


def connect(port: int, timeout: float = 10, receive_buffer: int = 0) -> socket.socket:
    """A connection to the worker; a small `receive_buffer` (bytes) makes a client slow to take."""
    sock = socket.socket()
    sock.settimeout(timeout)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """All the server sends until it closes the connection (TimeoutError if it does not)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def exchange(port: int, request: bytes) -> bytes:
    with connect(port) as sock:
        sock.sendall(request)
        return read_until_closed(sock)


def request_with(line: bytes = b"GET / HTTP/1.1", fields: list[bytes] | None = None) -> bytes:
    head = [line, b"Host: x", b"Connection: close", *(fields or [])]
    return b"\r\n".join(head) + b"\r\n\r\n"


def status(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:200]
    return int(reply[9:12])


def worker_holds(pid: int, client_port: int) -> bool:
    """Whether the worker still has the connection from `client_port` open."""
    connections = psutil.Process(pid).net_connections(kind="tcp")
    return any(c.raddr and c.raddr.port == client_port for c in connections)


def wait_dropped(pid: int, client_port: int, timeout: float) -> float:
    """Seconds until the worker lets go of the connection from `client_port` (at most `timeout`)."""
    started = time.monotonic()
    while not worker_holds(pid, client_port):  # accepted yet?
        assert time.monotonic() - started < 5, "the worker did not accept the connection"
        time.sleep(0.01)
    held = time.monotonic()
    while worker_holds(pid, client_port):
        assert time.monotonic() - held < timeout, "the worker still holds the connection"
        time.sleep(0.05)
    return time.monotonic() - held


# -- the request head's size ---------------------------------------------------------------


def _line(length: int) -> bytes:
    """A request line of `length` bytes: GET /aaa... HTTP/1.1."""
    return b"GET /" + b"a" * (length - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"


def _fields(count: int, size: int = 20) -> list[bytes]:
    """`count` header fields of `size` bytes each, CRLF included."""
    return [b"X-%03d: " % n + b"v" * (size - len(b"X-000: \r\n")) for n in range(count)]


@pytest.mark.parametrize(
    ("args", "within", "beyond", "refused"),
    [
        ([], request_with(_line(4094)), request_with(_line(4095)), 414),
        # Host and Connection are two of the fields.
        ([], request_with(fields=_fields(98)), request_with(fields=_fields(99)), 431),
        ([], request_with(fields=_fields(1, 8190)), request_with(fields=_fields(1, 8191)), 431),
        (
            ["--limit-request-head", "16KiB"],
            request_with(fields=_fields(3, 5000)),
            request_with(fields=_fields(4, 5000)),
            431,
        ),
        (["--limit-request-line", "20"], request_with(_line(20)), request_with(_line(21)), 414),
        (
            ["--limit-request-fields", "3"],
            request_with(fields=_fields(1)),
            request_with(fields=_fields(2)),
            431,
        ),
        (
            ["--limit-request-field_size", "100"],
            request_with(fields=_fields(1, 100)),
            request_with(fields=_fields(1, 101)),
            431,
        ),
    ],
    ids=["line", "fields", "field-size", "head", "line-flag", "fields-flag", "field-size-flag"],
)
def test_a_request_head_past_a_limit_is_refused_and_closed(corral, args, within, beyond, refused):
    server, port, _ = serve(corral, *args)
    assert status(exchange(port, within)) == 200
    reply = exchange(port, beyond)  # ends: the server closed the connection
    assert status(reply) == refused
    assert b"connection: close" in reply.lower()
    server.wait_for(rf"WARNING: 127\.0\.0\.1:\d+: {refused}, ", timeout=5)
    assert server.stop() == 0


def test_zero_means_no_limit_as_with_gunicorn(corral):
    server, port, _ = serve(
        corral, "--limit-request-line", "0", "--limit-request-fields", "0",
        "--limit-request-field_size", "0", "--limit-request-head", "1MiB",
    )  # fmt: skip
    request = request_with(_line(20_000), _fields(300) + _fields(1, 20_000))
    assert status(exchange(port, request)) == 200
    assert server.stop() == 0


def test_a_64_mib_header_is_refused_without_the_worker_growing(corral):
    server, port, pid = serve(corral)
    worker = psutil.Process(pid)
    exchange(port, request_with())  # the worker's first request costs it a little memory
    before = worker.memory_info().rss
    sent = 0
    reply = b""
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        block = b"a" * MIB
        try:
            while sent < 64 * MIB:
                sock.sendall(block)
                sent += len(block)
            sock.sendall(b"\r\n\r\n")
            reply = read_until_closed(sock)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker closed on the header: its answer may have been lost with the reset
    grown = worker.memory_info().rss - before
    server.wait_for(r"431, a request head larger than --limit-request-head", timeout=5)
    assert sent < 64 * MIB, "the worker read the whole 64 MiB header"
    assert grown < 4 * MIB, f"the worker grew by {grown / MIB:.1f} MiB"
    assert not reply or status(reply) == 431
    assert server.stop() == 0


def test_endless_trailer_fields_are_refused(corral):
    server, port, _ = serve(corral)
    sent = 0
    with connect(port) as sock:
        sock.sendall(
            b"POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Trailer: "
        )
        block = b"a" * (64 * 1024)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 8 * MIB:
                sock.sendall(block)
                sent += len(block)
    assert sent < 8 * MIB, "the worker read 8 MiB of trailer field"
    server.wait_for(r"431, trailer fields larger than --limit-request-head", timeout=5)
    assert server.stop() == 0


# -- the request head's time ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "args", "bound"),
    [
        ("stalled", ["--keep-alive", "5"], 5.0),  # the default --header-read-timeout: 5 s
        ("stalled", ["--header-read-timeout", "1", "--keep-alive", "30"], 1.0),
        ("trickled", ["--header-read-timeout", "1", "--keep-alive", "30"], 1.0),
    ],
    ids=["stalled-default", "stalled", "trickled"],
)
def test_a_request_head_not_whole_in_time_gets_408(corral, how, args, bound):
    server, port, _ = serve(corral, *args)
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
    with connect(port) as sock:
        started = time.monotonic()
        if how == "stalled":
            sock.sendall(head)
        else:  # a byte at a time, each in time: the head as a whole is not
            for byte in head * 2:
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    break  # refused
                time.sleep(0.05)
        reply = read_until_closed(sock)
        took = time.monotonic() - started
    assert status(reply) == 408
    assert bound - 0.2 < took < bound + 2, took
    assert server.stop() == 0


@pytest.mark.parametrize(
    ("args", "closed_after"),
    [
        (["--header-read-timeout", "1", "--keep-alive", "30"], 1.0),
        (["--header-read-timeout", "30", "--keep-alive", "1"], 1.0),
    ],
    ids=["header-read-timeout", "keep-alive"],
)
def test_a_connection_that_sends_nothing_is_closed_silently(corral, args, closed_after):
    server, port, _ = serve(corral, *args)
    with connect(port) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        took = time.monotonic() - started
    assert closed_after - 0.2 < took < closed_after + 2, took
    assert server.stop() == 0


def test_the_next_request_head_is_timed_from_its_first_byte(corral):
    server, port, _ = serve(corral, "--header-read-timeout", "1", "--keep-alive", "30")
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while not response.endswith(b"127.0.0.1 http"):  # the app's whole answer
            response += sock.recv(65536)
        assert status(response) == 200
        time.sleep(1.5)  # idle on keep-alive: not the head's time
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        reply = read_until_closed(sock)
        assert status(reply) == 408
        assert 0.8 < time.monotonic() - started < 3
    assert server.stop() == 0


def test_ten_idle_connections_do_not_take_limit_concurrency_10_for_good(corral):
    server, port, _ = serve(corral, "--limit-concurrency", "10", "--keep-alive", "5")
    idle = [connect(port) for _ in range(10)]
    try:
        server.wait_accepted(port, 10)
        opened = time.monotonic()
        assert status(exchange(port, request_with())) == 503  # they hold every place...
        while status(exchange(port, request_with())) != 200:  # ...until the head timeout (5 s)
            assert time.monotonic() - opened < 9, "idle connections still hold every place"
            time.sleep(0.25)
        for sock in idle:
            assert sock.recv(1) == b"", "an idle connection was answered, not closed"
    finally:
        for sock in idle:
            sock.close()
    assert server.stop() == 0


# -- bodies, responses, pipelines, WebSockets ----------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
        b"POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_a_body_that_stops_coming_gets_408(corral, head):
    server, port, _ = serve(corral, "--body-read-timeout", "1")
    with connect(port) as sock:
        sock.sendall(head + b"0123456789")
        started = time.monotonic()
        reply = read_until_closed(sock)
        took = time.monotonic() - started
    assert status(reply) == 408
    assert 0.8 < took < 3, took
    server.wait_for(r"WARNING: 127\.0\.0\.1:\d+: 408, no request body for 1s", timeout=5)
    # A body that keeps coming is not cut, however long it takes.
    with connect(port) as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n")
        sock.sendall(b"Connection: close\r\n\r\n")
        for byte in b"abcde":
            time.sleep(0.6)
            sock.sendall(bytes([byte]))
        assert read_until_closed(sock).endswith(b"\r\n\r\n5")
    assert server.stop() == 0


def test_a_client_that_reads_no_response_is_dropped_after_the_send_timeout(corral):
    server, port, pid = serve(corral, "--send-timeout", "1")
    with connect(port, receive_buffer=4096) as sock:
        sock.sendall(b"GET /big?mib=32 HTTP/1.1\r\nHost: x\r\n\r\n")
        took = wait_dropped(pid, sock.getsockname()[1], timeout=10)
    assert took > 0.8, took
    server.wait_for(r"took none of \d+ bytes of output in 1s \(--send-timeout\)", timeout=5)
    assert server.stop() == 0


def test_a_slow_reader_is_not_dropped(corral):
    server, port, _ = serve(corral, "--send-timeout", "0.5")
    with connect(port, receive_buffer=64 * 1024) as sock:
        sock.sendall(b"GET /big?mib=8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received, started = 0, time.monotonic()
        # About 1.5 MiB/s: the kernel's buffer for the socket drains slowly, and makes room
        # for more of the worker's output only every second or so.
        while chunk := sock.recv(64 * 1024):
            received += len(chunk)
            time.sleep(0.04)
        took = time.monotonic() - started
    assert received > 8 * MIB
    assert took > 2, f"{took:.1f}s: not slow enough to test anything"
    assert server.count("--send-timeout") == 0, server.output
    assert server.stop() == 0


def test_pipelined_requests_do_not_pile_up_in_the_worker(corral):
    server, port, pid = serve(corral)
    worker = psutil.Process(pid)
    exchange(port, request_with())
    before = worker.memory_info().rss
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    block = request * (64 * 1024 // len(request))
    closed = False
    with connect(port, timeout=1) as sock:
        deadline = time.monotonic() + 3  # sending, never reading
        try:
            while time.monotonic() < deadline:
                sock.sendall(block)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        except TimeoutError:
            pass  # the worker stopped reading
    grown = worker.memory_info().rss - before
    assert grown < 8 * MIB, f"the worker grew by {grown / MIB:.1f} MiB"
    assert closed, "the worker kept reading what it could not answer"
    server.wait_for(r"more than 32 pipelined requests: closing after those", timeout=5)
    assert server.stop() == 0


def _websocket(port: int, path: str, receive_buffer: int = 0) -> socket.socket:
    """A WebSocket opened by hand: the test's client must not answer pings by itself."""
    sock = connect(port, receive_buffer=receive_buffer)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), key)
    )
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(1)
    assert status(reply) == 101, reply
    return sock


def test_a_websocket_client_that_does_not_answer_pings_is_closed(corral):
    server, port, _ = serve(corral, "--ws-ping-interval", "0.5", "--ws-ping-timeout", "0.5")
    with _websocket(port, "/ws") as sock:
        started = time.monotonic()
        frames = read_until_closed(sock)
        took = time.monotonic() - started
    assert frames[:1] == b"\x89", "the first frame was not a ping"
    assert 0.8 < took < 4, took
    assert server.stop() == 0


def test_a_websocket_client_that_reads_nothing_is_dropped(corral):
    server, port, pid = serve(
        corral, "--send-timeout", "1", "--ws-ping-interval", "0.5", "--ws-ping-timeout", "0.5"
    )
    with _websocket(port, "/ws?mib=64", receive_buffer=4096) as sock:
        wait_dropped(pid, sock.getsockname()[1], timeout=10)
    assert server.stop() == 0
