"""The control API's listeners: uvicorn servers running inside the manager's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from corral.addresses import TcpAddress, UnixAddress
from corral.control.api import ControlApp
from corral.control.protocol import MAX_HEAD, ControlProtocol
from corral.errors import UsageError
from corral.manager import listeners
from corral.manager.listeners import remove_stale_unix_socket

BACKLOG = 64
# Bounds a stop on a stuck call; /logs followers are ended at once (ControlApp.end_streams).
SHUTDOWN_TIMEOUT = 5


class AlreadyRunning(UsageError):
    """Another corral answers on this control socket (one given with --control PATH)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"a corral is already running with control socket {path}")
        self.path = path


class ControlServer(uvicorn.Server):
    """uvicorn's server, without its signal handlers: the manager keeps its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ControlServers:
    """The running listeners (the Unix socket, and TCP when asked), until `close`."""

    def __init__(self, unix_path: Path, listening: list[tuple[ControlApp, socket.socket]]) -> None:
        """Serve each app on its socket, already bound and listening."""
        self.unix_path = unix_path
        # Where they listen; a TCP port 0 shows as the port bound.
        self.addresses = [_address_of(sock) for _, sock in listening]
        self._apps = [app for app, _ in listening]
        servers = [(ControlServer(_config(app)), sock) for app, sock in listening]
        self._servers = [server for server, _ in servers]
        self._tasks = [asyncio.ensure_future(server.serve([sock])) for server, sock in servers]

    async def close(self) -> None:
        """Stop listening, let calls in progress finish, end log streams, remove the socket file."""
        for app in self._apps:
            app.end_streams()
        for server in self._servers:
            server.should_exit = True
        try:
            await asyncio.gather(*self._tasks)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_path)


async def serve_control(
    app: ControlApp, unix_path: Path, *tcp: tuple[TcpAddress, ControlApp]
) -> ControlServers:
    """Serve `app` on the Unix socket `unix_path` and each TCP app on its address, in order.

    Several apps because the listeners admit differently: the socket's mode
    admits only our user, while TCP needs a token (`make_app(controller, token)`),
    and a probes listener serves only the probes (`make_probes_app`).
    Raises AlreadyRunning when a corral answers on `unix_path` (a socket file
    nobody answers on is a leftover of a killed corral, and is replaced), and
    corral.manager.listeners.BindError when an address cannot be listened on.
    """
    listening = [(app, _listen_unix(unix_path))]
    try:
        for address, tcp_app in tcp:
            listening.append((tcp_app, _listen_tcp(address)))
    except listeners.BindError:
        for _, sock in listening:
            sock.close()
        os.unlink(unix_path)
        raise
    return ControlServers(unix_path, listening)


def _listen_unix(path: Path) -> socket.socket:
    """A listening socket at `path`, mode 0600 from the moment it exists.

    A chmod after bind() would leave a window in which another user could
    connect when the folder is open to them (--control in a shared folder):
    listeners.bind creates the file with no permission, then gives it 0600.
    """
    try:
        remove_stale_unix_socket(str(path))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise AlreadyRunning(path) from None
        raise
    sock = listeners.bind(listeners.Address(path=str(path)), BACKLOG, listeners.PRIVATE)
    sock.set_inheritable(False)  # listeners.bind makes sockets for workers; this one is ours
    return sock


def _listen_tcp(address: TcpAddress) -> socket.socket:
    sock = listeners.bind(listeners.Address(host=address.host, port=address.port), BACKLOG)
    sock.set_inheritable(False)
    return sock


def _address_of(sock: socket.socket) -> UnixAddress | TcpAddress:
    if sock.family == socket.AF_UNIX:
        return UnixAddress(Path(sock.getsockname()))
    host, port = sock.getsockname()[:2]
    return TcpAddress(host, port)


def _config(app: ControlApp) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=ControlProtocol,
        h11_max_incomplete_event_size=MAX_HEAD,
        interface="asgi3",
        lifespan="off",
        ws="none",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        backlog=BACKLOG,
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT,
    )
