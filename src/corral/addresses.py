"""Addresses as the user writes them: where web listens (`--bind`), where the control API and
the probes listen (`--control`, `--probes`).

Parsing only, no socket: the settings models validate with it (so `run`,
`check` and a reload refuse the same addresses, naming where each came
from), `corral.manager.listeners` and `corral.control.server` bind what it
returns. Imports nothing of corral's but its error type, so the settings may use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from corral.errors import UsageError

UNIX_PATH_MAX = 107  # bytes: sun_path holds 108, the last for the terminating NUL


class AddressError(UsageError, ValueError):
    """An address that does not parse; the message quotes it and says what was expected.

    A ValueError too, so that a settings validator that meets one reports it
    as the setting's problem.
    """


# -- web: --bind -----------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """Where to listen: a TCP host and port, a Unix socket path, or an inherited descriptor."""

    host: str | None = None
    port: int | None = None
    path: str | None = None
    fd: int | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        if self.fd is not None:
            return f"fd://{self.fd}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_bind(spec: str) -> Address:
    """gunicorn's forms: HOST:PORT, [IPV6]:PORT, unix:PATH, fd://N (and a bare HOST, port 8000).

    AddressError names `spec` and what was expected.
    """
    if spec.startswith("unix:"):
        path = spec[len("unix:") :]
        if not path or "\0" in path:
            raise AddressError(f"{spec!r}: expected unix:PATH")
        return Address(path=str(unix_socket_path(path)))
    if spec.startswith("fd://"):
        number = spec[len("fd://") :]
        if not (number.isascii() and number.isdigit()):
            raise AddressError(f"{spec!r}: expected fd://N with N a file descriptor number")
        return Address(fd=int(number))
    if spec.startswith("["):
        host, bracket, rest = spec[1:].partition("]")
        if not bracket or not host or (rest and not rest.startswith(":")):
            raise AddressError(f"{spec!r}: expected [IPV6]:PORT such as [::1]:8000")
        return Address(host=host, port=_port(spec, rest[1:] or "8000"))
    host, colon, port = spec.rpartition(":")
    if not colon:
        host, port = spec, "8000"
    if ":" in host:
        raise AddressError(f"{spec!r}: write an IPv6 address in brackets, as [::1]:8000")
    return Address(host=host or "0.0.0.0", port=_port(spec, port))


def _port(spec: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise AddressError(f"{spec!r}: expected a port number from 0 to 65535")
    return int(text)


def unix_socket_path(path: str) -> Path:
    """`path` if a Unix socket can be bound there (no NUL, short enough); else AddressError."""
    if "\0" in path:
        raise AddressError(f"{path!r}: a socket path cannot hold a NUL character")
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise AddressError(
            f"{path!r}: a Unix socket path can have at most {UNIX_PATH_MAX} bytes, "
            f"this one has {size}"
        )
    return Path(path)


# -- the control API: --control, --probes ------------------------------------------------


@dataclass(frozen=True)
class UnixAddress:
    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_control(value: str) -> UnixAddress | TcpAddress:
    """A value with a '/', or without a ':', is a socket path; any other is HOST:PORT or
    [IPV6]:PORT, with a numeric port.

    So `127.0.0.1:notaport` is refused rather than taken for a file of that
    name; a socket path with a ':' says it is a path with a '/' (`./name:x`).
    AddressError names `value` and what was expected.
    """
    if not value:
        raise AddressError(
            "an empty control address: expected a socket PATH, HOST:PORT or [IPV6]:PORT"
        )
    if "/" in value or ":" not in value:
        return UnixAddress(unix_socket_path(value))
    return _host_and_port(value, f"; a socket path with a ':' needs a '/', such as ./{value}")


def parse_tcp(value: str) -> TcpAddress:
    """HOST:PORT or [IPV6]:PORT, and nothing else (the probes' listener); else AddressError."""
    if "/" in value or ":" not in value:
        raise AddressError(f"{value!r}: expected HOST:PORT, such as 0.0.0.0:9000")
    return _host_and_port(value)


def _host_and_port(value: str, hint: str = "") -> TcpAddress:
    """`value`, which has a ':', as HOST:PORT or [IPV6]:PORT; else AddressError, a bad port's
    message ending with `hint`."""
    host, _, port = value.rpartition(":")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise AddressError(
            f"{value!r}: expected HOST:PORT with a port number from 0 to 65535{hint}"
        )
    if host.startswith("[") and host.endswith("]") and len(host) > 2:
        return TcpAddress(host[1:-1], int(port))
    if not host or "[" in host or "]" in host:
        raise AddressError(f"{value!r}: expected HOST:PORT or [IPV6]:PORT, such as 127.0.0.1:9000")
    if ":" in host:
        raise AddressError(f"{value!r}: write an IPv6 address in brackets, as [::1]:9000")
    return TcpAddress(host, int(port))
