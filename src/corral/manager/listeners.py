"""Listening sockets: parsing bind addresses and binding them, before any worker starts.

The manager binds every socket itself, so workers come and go without the
address ever refusing a connection: all of them accept from the same queue.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass

from corral.errors import UsageError
from corral.settings import addresses as bind_addresses
from corral.settings.addresses import Address

SYSTEMD_FIRST_FD = 3
UPGRADE_FDS_VARIABLE = "CORRAL_UPGRADE_FDS"


class BindError(UsageError):
    """An address that cannot be listened on; the message names it."""


def parse_bind(spec: str) -> Address:
    """gunicorn's forms: HOST:PORT, [IPV6]:PORT, unix:PATH, fd://N (and a bare HOST, port 8000).

    BindError says what is wrong and what was expected.
    """
    try:
        return bind_addresses.parse_bind(spec)
    except ValueError as error:
        raise BindError(f"--bind {error}") from None


def upgrade_sockets(environ: MutableMapping[str, str]) -> list[socket.socket]:
    """The listening sockets an upgrading manager handed over (`corral.manager.upgrade`).

    Consumed from `environ`, so that this manager's own children do not see them.
    """
    fds = environ.pop(UPGRADE_FDS_VARIABLE, "")
    sockets = [socket.socket(fileno=int(fd)) for fd in fds.split(",") if fd.isdigit()]
    for sock in sockets:
        sock.set_inheritable(True)
    return sockets


def systemd_sockets(environ: dict[str, str] | os._Environ[str]) -> list[socket.socket]:
    """Sockets passed by systemd socket activation (LISTEN_FDS), consumed from `environ`."""
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(environ.pop("LISTEN_FDS", "0"))
    environ.pop("LISTEN_PID", None)
    environ.pop("LISTEN_FDNAMES", None)
    sockets = [socket.socket(fileno=SYSTEMD_FIRST_FD + i) for i in range(count)]
    for sock in sockets:
        sock.set_inheritable(True)
    return sockets


@dataclass(frozen=True)
class UnixSocketFile:
    """Who may connect to a Unix socket file corral creates: its mode, and its owner if set."""

    mode: int
    owner: tuple[int, int] | None = None  # (uid, gid): --user's and --group's


PRIVATE = UnixSocketFile(0o600)


def bind(address: Address, backlog: int, unix_file: UnixSocketFile = PRIVATE) -> socket.socket:
    """A listening socket for `address`, inheritable by children; BindError says why not.

    A Unix socket file gets `unix_file`'s mode and owner (by default, only
    corral's own user may connect).
    """
    try:
        if address.fd is not None:
            sock = socket.socket(fileno=address.fd)
        elif address.path is not None:
            sock = _bind_unix(address.path, unix_file)
        else:
            sock = _bind_tcp(address)
        sock.listen(backlog)
    except OSError as error:
        raise BindError(f"cannot listen on {address}: {_reason(error)}") from None
    sock.set_inheritable(True)
    return sock


def _bind_tcp(address: Address) -> socket.socket:
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "[::]" means IPv6 only, so that 0.0.0.0 can be bound beside it.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_unix(path: str, unix_file: UnixSocketFile) -> socket.socket:
    """Bind `path` with `unix_file`'s mode and owner.

    Connecting takes write permission on the file, which the usual umask
    (022) denies to everyone but its owner: a proxy running as another user
    would get "Permission denied". The file is created with no permission at
    all (umask 777, for the bind alone), then given its owner and mode, so
    that nobody can connect in between.
    """
    remove_stale_unix_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(0o777)
        try:
            sock.bind(path)
        finally:
            os.umask(previous)
        if unix_file.owner is not None:
            os.chown(path, *unix_file.owner)
        os.chmod(path, unix_file.mode)
    except OSError:
        sock.close()
        raise
    return sock


def remove_stale_unix_socket(path: str) -> None:
    """Unlink a socket file nobody answers on (left by a killed server); refuse a live one."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    else:
        raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
    finally:
        probe.close()


def _reason(error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return "address already in use (is another server running there?)"
    if error.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return error.strerror or str(error)


def close(sockets: list[socket.socket], addresses: list[Address]) -> None:
    """Close the sockets and remove the Unix socket files corral created."""
    for sock in sockets:
        sock.close()
    for address in addresses:
        if address.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address.path)


def url(address: Address, sock: socket.socket, tls: bool) -> str:
    """The address as a user would type it, with the real port when 0 was asked for."""
    scheme = "https" if tls else "http"
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{port}"
    if sock.family == socket.AF_UNIX:
        return f"{scheme}+unix:{sock.getsockname()}"
    return f"{scheme} on {address}"


def listen(
    binds: list[str],
    uds: str | None,
    host: str,
    port: int,
    backlog: int,
    unix_file: UnixSocketFile,
) -> tuple[list[Address], list[socket.socket]]:
    """Bind what the settings ask for: the sockets an upgrading manager or systemd handed
    over, else --bind, else --uds, else host:port.

    Unix socket files are created as `unix_file` says. All or nothing: on a
    BindError the sockets bound so far are closed.
    """
    inherited = upgrade_sockets(os.environ) or systemd_sockets(os.environ)
    if inherited:
        return [Address(fd=s.fileno()) for s in inherited], inherited
    if binds:
        addresses = [parse_bind(spec) for spec in binds]
    elif uds is not None:
        addresses = [Address(path=uds)]
    else:
        addresses = [Address(host=host, port=port)]
    sockets: list[socket.socket] = []
    try:
        for address in addresses:
            sockets.append(bind(address, backlog, unix_file))
    except BindError:
        close(sockets, addresses[: len(sockets)])
        raise
    return addresses, sockets
