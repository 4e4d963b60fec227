"""Whose X-Forwarded-For and X-Forwarded-Proto count: --forwarded-allow-ips, and Unix sockets.

A peer on a Unix socket has no address to check, and only a process on this
machine can be one: the local proxy (nginx in front of `--uds`). gunicorn
trusts such a peer unconditionally; uvicorn, seeing no address, trusts it
only under `--forwarded-allow-ips '*'`, so behind nginx on a socket the app
saw neither the client nor https. Here uvicorn's middleware does the work,
and a peer without an address is trusted, as with gunicorn.
"""

from __future__ import annotations

from typing import Any, Protocol

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware


class _Trust(Protocol):
    def __contains__(self, host: object) -> bool: ...

    def get_trusted_client_address(self, x_forwarded_for: str) -> tuple[str, int]: ...


class _AlsoUnixPeers:
    """uvicorn's trusted hosts, plus a peer with no address (a Unix socket's)."""

    def __init__(self, trusted: _Trust) -> None:
        self._trusted = trusted

    def __contains__(self, host: object) -> bool:
        return host is None or host in self._trusted

    def get_trusted_client_address(self, x_forwarded_for: str) -> tuple[str, int]:
        """The client: the nearest address in the header that is not a trusted proxy's."""
        return self._trusted.get_trusted_client_address(x_forwarded_for)


class ProxyHeaders(ProxyHeadersMiddleware):
    """uvicorn's ProxyHeadersMiddleware, which also trusts a peer on a Unix socket."""

    def __init__(self, app: Any, trusted_hosts: str) -> None:
        super().__init__(app, trusted_hosts)
        self.trusted_hosts = _AlsoUnixPeers(self.trusted_hosts)  # type: ignore[assignment]
