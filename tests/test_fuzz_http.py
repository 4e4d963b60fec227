"""Malformed, truncated and oversized requests against a running worker, made by hypothesis.

Whatever arrives (a broken request line, headers with invalid bytes, lengths that lie, bad
chunked bodies, several requests pipelined, a request cut anywhere), the worker never dies,
answers with a status below 500 (4xx; 2xx when what arrived happens to be a valid request)
or closes the connection, and the next good request, on a fresh connection, is served.

In CI the examples are a fixed sequence (the "ci" profile of conftest.py); the long form
draws new ones: `pytest tests/test_fuzz_http.py --hypothesis-profile long`.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import Corral, Started, fuzz_timeout

APP = '''
"""Reads the whole body, answers its length: every byte of the request reaches the parser."""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
'''

SILENCE = 0.2  # seconds without a byte from the server before our side of the request ends
ANSWER_WITHIN = 5.0  # seconds the server has to answer or close once the request has ended
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")  # the app's bodies are digits: no false match


@dataclass
class Target:
    server: Corral
    port: int
    worker: psutil.Process


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    directory: Path = tmp_path_factory.mktemp("fuzz-http")
    (directory / "sized.py").write_text(APP)
    started = Started()
    try:
        server = started.corral(
            "run", "sized:app", "--port", "0", "--workers", "1", "--no-access-log",
            cwd=directory,
        )  # fmt: skip
        port = int(server.url().rsplit(":", 1)[1])
        (pid,) = server.wait_workers(1).values()
        yield Target(server, port, psutil.Process(pid))
        assert server.stop() == 0
    finally:
        started.cleanup()


# -- the parts of a request ------------------------------------------------------------------

EOL = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"\r\r\n", b""])
TOKEN = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"CONNECT"])
METHOD = TOKEN | st.binary(max_size=12)
TARGET = st.sampled_from(
    [b"/", b"/a?b=c&d", b"*", b"http://example.com/x", b"//x", b"/%00", b"/%zz", b"/\xff", b""]
) | st.binary(max_size=300).map(lambda raw: b"/" + raw)
VERSION = st.sampled_from(
    [b"HTTP/1.1"] * 4 + [b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.10", b"http/1.1", b""]
) | st.binary(max_size=10)
NAME = st.sampled_from(
    [
        *(b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect"),
        *(b"Upgrade", b"content-length", b"X-Forwarded-For", b"Cookie", b"Host ", b" Host", b""),
    ]
) | st.binary(min_size=1, max_size=30)
NUMBER = st.integers(min_value=-5, max_value=200).map(lambda n: str(n).encode()) | st.sampled_from(
    [b"1, 2", b"0x10", b"+5", b"99999999999999999999999", b"1e3", b" 3", b""]
)
ENCODING = st.sampled_from(
    [b"chunked", b"gzip, chunked", b"chunked, gzip", b"identity", b"Chunked", b"chunked, chunked"]
)
VALUE = NUMBER | ENCODING | st.binary(max_size=100) | st.sampled_from([b"close", b"keep-alive"])
HEADER = st.tuples(NAME, st.sampled_from([b": ", b":", b" : ", b"::", b""]), VALUE)


@st.composite
def chunked(draw: st.DrawFn) -> bytes:
    """A chunked body: sizes true or not, in hex or not, extensions, a last chunk or none."""
    out = b""
    for data in draw(st.lists(st.binary(max_size=40), max_size=4)):
        size = draw(st.sampled_from([b"%x" % len(data)] * 4 + [b"%X" % len(data)]) | NUMBER)
        extension = draw(st.sampled_from([b"", b";a=b", b"; x", b";" * 40]))
        out += size + extension + draw(EOL) + data + draw(EOL)
    if draw(st.booleans()):
        out += b"0" + draw(EOL)
        if draw(st.booleans()):
            out += b"Trailer-Field: " + draw(st.binary(max_size=20)) + draw(EOL)
        out += draw(EOL)
    return out


@st.composite
def one_request(draw: st.DrawFn) -> bytes:
    eol = draw(EOL)
    line = draw(METHOD) + b" " + draw(TARGET) + b" " + draw(VERSION)
    if draw(st.integers(0, 9)) == 0:
        line = draw(st.binary(max_size=80))  # no request line at all
    head = line + eol
    if draw(st.booleans()):
        head += b"Host: localhost" + eol
    for name, separator, value in draw(st.lists(HEADER, max_size=6)):
        head += name + separator + value + draw(EOL)
    if draw(st.integers(0, 14)) == 0:  # oversized: one long header
        head += b"X-Big: " + b"a" * draw(st.integers(8_000, 300_000)) + eol
    body = draw(chunked() | st.binary(max_size=200))
    return head + eol + body


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request or several pipelined, cut short sometimes."""
    data = b"".join(draw(st.lists(one_request(), min_size=1, max_size=3)))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


# -- talking to the worker -------------------------------------------------------------------


def exchange(port: int, data: bytes) -> bytes:
    """Send `data`; read until the server closes. If it goes silent, end our side first (the
    request may be incomplete, and the server waits for the rest) and read what comes then."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        sock.settimeout(SILENCE)
        ended = False
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                if ended:
                    raise AssertionError(
                        f"no answer and no close within {ANSWER_WITHIN}s of the request's end"
                    ) from None
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                sock.settimeout(ANSWER_WITHIN)
                ended = True
                continue
            if not chunk:
                break
            received += chunk
    return received


def served(port: int) -> bytes:
    return exchange(port, b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@fuzz_timeout(per_example=0.3)
@given(data=requests())
def test_any_request_gets_a_status_below_500_or_a_close_and_the_worker_serves_on(
    target: Target, data: bytes
):
    answer = exchange(target.port, data)
    assert not answer or answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), answer[:200]
    statuses = [int(code) for code in STATUS.findall(answer)]
    assert all(status < 500 for status in statuses), (statuses, answer[:500])
    assert alive(target.worker), f"the worker died:\n{target.server.output}"
    after = served(target.port)
    assert after.startswith(b"HTTP/1.1 200 "), after[:200]
