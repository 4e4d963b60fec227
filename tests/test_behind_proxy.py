"""Behind a proxy: whose X-Forwarded-* headers count, and how access lines write clients."""

from __future__ import annotations

import json
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Corral

FORWARDED = {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"}


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A Unix socket path short enough (108 bytes at most), removed after the test."""
    directory = Path(tempfile.mkdtemp(prefix="corral-"))
    yield directory / "app.sock"
    shutil.rmtree(directory, ignore_errors=True)


def through_unix_socket(path: Path, headers: dict[str, str]) -> tuple[str, str]:
    """GET / over the Unix socket at `path`: the client and the scheme the app saw."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as client:
        response = client.get("http://app/", headers=headers)
    assert response.status_code == 200, response.text
    seen_client, scheme = response.text.split()
    return seen_client, scheme


def serve_on_unix_socket(corral, path: Path, *args: str) -> Corral:
    server = corral("run", "clients:app", "--uds", str(path), *args)
    server.wait_for(r"listening on http\+unix:")
    server.wait_workers(1)
    return server


def access_line(server: Corral) -> str:
    """The client field of the worker's next access line."""
    return server.wait_for(r'^web\.1 +\| (\S+) - "GET / HTTP/1\.1" 200 ', timeout=5).group(1)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")


# -- a proxy on a Unix socket ----------------------------------------------------------------


def test_a_peer_on_a_unix_socket_is_trusted_as_the_local_proxy(corral, socket_path):
    server = serve_on_unix_socket(corral, socket_path)
    assert through_unix_socket(socket_path, FORWARDED) == ("203.0.113.9", "https")
    assert access_line(server) == "203.0.113.9"
    assert server.stop() == 0


@pytest.mark.parametrize(
    ("forwarded_for", "client", "logged"),
    [
        # What the client wrote itself comes first: the proxy's own entry, last, counts.
        ("198.51.100.1, 203.0.113.9", "203.0.113.9", "203.0.113.9"),
        # Through a second proxy on 127.0.0.1 (trusted by default) to the local one.
        ("203.0.113.9, 127.0.0.1", "203.0.113.9", "203.0.113.9"),
        ("[2001:db8::7]:443", "2001:db8::7", "[2001:db8::7]:443"),
    ],
    ids=["spoofed-first-entry", "two-proxies", "ipv6-with-port"],
)
def test_the_client_is_the_nearest_untrusted_address(
    corral, socket_path, forwarded_for, client, logged
):
    server = serve_on_unix_socket(corral, socket_path)
    headers = {"x-forwarded-for": forwarded_for}
    assert through_unix_socket(socket_path, headers) == (client, "http")
    assert access_line(server) == logged
    assert server.stop() == 0


def test_no_proxy_headers_trusts_no_peer_not_even_a_unix_socket(corral, socket_path):
    server = serve_on_unix_socket(corral, socket_path, "--no-proxy-headers")
    assert through_unix_socket(socket_path, FORWARDED) == ("-", "http")
    assert access_line(server) == "-"
    assert server.stop() == 0


# -- the trusted addresses and IPv6 -----------------------------------------------------------


def test_forwarded_allow_ips_defaults_to_what_help_says(corral):
    helped = corral("run", "--help")
    assert helped.wait(15) == 0
    entry = re.search(r"--forwarded-allow-ips IPS\s+(.*?)\]", helped.output, re.DOTALL)
    assert entry, helped.output
    assert "default: 127.0.0.1,::1;" in " ".join(entry.group(1).split())
    # uvicorn would take FORWARDED_ALLOW_IPS from the environment instead: not what help says.
    server = corral("run", "clients:app", "--port", "0", env={"FORWARDED_ALLOW_IPS": "*"})
    url = server.url()
    server.wait_workers(1)
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as client:
        answer = client.get(url, headers=FORWARDED).text
    assert answer == "127.0.0.2 http", "a peer help does not name was trusted"
    assert httpx.get(url, headers=FORWARDED).text == "203.0.113.9 https"  # from 127.0.0.1
    assert server.stop() == 0


@needs_ipv6
def test_ipv6_loopback_is_trusted_and_ipv6_clients_are_bracketed(corral):
    server = corral("run", "clients:app", "-b", "[::1]:0", "--log-format", "json")
    url = server.url()
    server.wait_workers(1)
    assert url.startswith("http://[::1]:")
    with socket.create_connection(("::1", int(url.rsplit(":", 1)[1])), timeout=10) as sock:
        port = sock.getsockname()[1]
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.endswith(b"\r\n\r\n::1 http")
    assert httpx.get(url, headers=FORWARDED).text == "203.0.113.9 https"  # ::1 is trusted
    record = server.wait_for(rf'^\{{.*"client": "\[::1\]:{port}"', timeout=5).string
    assert json.loads(record)["message"].startswith(f'[::1]:{port} - "GET / HTTP/1.1" 200 ')
    assert server.stop() == 0
