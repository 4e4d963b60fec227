"""Every kind of connection an app serves counts alike for --max-requests, the access log and
/metrics (issue 11, item 7): a plain request, a streamed response, a WebSocket session.

For each kind, a worker with `--max-requests 3` serves three of them: the access log has three
lines, /metrics three requests, and the worker is replaced having served three (not before).
A WebSocket session is logged and counted as the `GET` of its handshake, status 101.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from conftest import Corral

LIMIT = 3


def _plain(url: str) -> None:
    assert httpx.get(f"{url}/plain", timeout=5).text == "plain"


def _stream(url: str) -> None:
    with httpx.stream("GET", f"{url}/stream", timeout=5) as response:
        assert list(response.iter_text()) and response.status_code == 200


def _session(url: str) -> None:
    with connect(url.replace("http://", "ws://") + "/ws", open_timeout=5) as websocket:
        websocket.send("hello")
        assert websocket.recv(timeout=5) == "hello"


KINDS: dict[str, tuple[Callable[[str], None], str]] = {
    "plain": (_plain, r'"GET /plain HTTP/1\.1" 200 '),
    "streamed": (_stream, r'"GET /stream HTTP/1\.1" 200 '),
    "websocket": (_session, r'"GET /ws HTTP/1\.1" 101 '),
}


def _requests_total(server: Corral) -> float:
    transport = httpx.HTTPTransport(uds=str(server.control_socket()))
    with httpx.Client(transport=transport, timeout=5) as client:
        text = client.get("http://corral/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "corral_http_requests_total"
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_counts_alike_for_max_requests_the_access_log_and_metrics(corral, kind):
    serve, logged = KINDS[kind]
    server = corral(
        "run",
        "kinds:app",
        "--port",
        "0",
        "--max-requests",
        str(LIMIT),
        "--max-requests-jitter",
        "0",
    )
    url = server.url()
    (first,) = server.wait_workers(1).values()
    for _ in range(LIMIT - 1):
        serve(url)
    time.sleep(1.5)  # two heartbeats: the worker's counts are in, and it has not asked to go
    assert server.count(r"replacing it \(max-requests\)") == 0, server.output
    assert _requests_total(server) == LIMIT - 1
    serve(url)
    server.wait_for(rf"web\.1 \(pid {first}\) served {LIMIT} requests: replacing it", timeout=10)
    deadline = time.monotonic() + 2  # an access line is written within 0.1 s of its request
    while server.count(rf"^web\.1\s+\| 127\.0\.0\.1:\d+ - {logged}") < LIMIT:
        assert time.monotonic() < deadline, server.output
        time.sleep(0.05)
    began = time.monotonic()
    assert server.stop() == 0, server.output
    assert time.monotonic() - began < 10, server.output
    lines = [line for line in server.lines if re.search(r"\| 127\.0\.0\.1:\d+ - ", line)]
    assert len(lines) == LIMIT, server.output  # nothing else was logged as a request
