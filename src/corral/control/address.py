"""Where the control API listens: a Unix socket per project directory, and TCP when asked."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

UNIX_PATH_MAX = 107  # bytes: sun_path holds 108, the last for the terminating NUL
_NAME_MAX = 32  # of the project directory's name in the socket's name; the hash keeps it unique


class ControlPathError(ValueError):
    """The control socket's path cannot be used; the message says why and what to do."""


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
    """HOST:PORT or [IPV6]:PORT is TCP; anything else (anything with a '/' too) is a socket path."""
    if not value:
        raise ValueError(
            "an empty control address: expected a socket PATH, HOST:PORT or [IPV6]:PORT"
        )
    host, colon, port = value.rpartition(":")
    if not colon or "/" in value or not (port.isascii() and port.isdigit()):
        return _unix_address(value)
    if int(port) > 65535:
        raise ValueError(f"{value!r}: the port must be a number from 0 to 65535")
    if host.startswith("[") and host.endswith("]") and len(host) > 2:
        return TcpAddress(host[1:-1], int(port))
    if not host or "[" in host or "]" in host:
        raise ValueError(f"{value!r}: expected HOST:PORT or [IPV6]:PORT, such as 127.0.0.1:9000")
    if ":" in host:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, as [::1]:9000")
    return TcpAddress(host, int(port))


def _unix_address(value: str) -> UnixAddress:
    size = len(os.fsencode(value))
    if size > UNIX_PATH_MAX:
        raise ValueError(
            f"{value!r}: a Unix socket path can have at most {UNIX_PATH_MAX} bytes, "
            f"this one has {size}"
        )
    return UnixAddress(Path(value))


def default_control_path(project: Path, root: Path = Path("/tmp")) -> Path:
    """The control socket of the corral run in `project`: one per directory, private to its user.

    `/tmp/corral-UID/NAME-HASH.sock`, where NAME is the directory's name
    (readable in `ls`) and HASH comes from its real path (so two checkouts
    named `app` get two sockets). Not under $XDG_RUNTIME_DIR: a service and
    its user's shell rarely agree on that variable, and the CLI must find
    the socket from either. The folder
    is created mode 0700; an existing one that another user owns, or that
    others can enter, is refused: whoever controls the folder could put a
    socket of theirs where the CLI would send its commands.
    """
    real = os.path.realpath(project)
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(real))[:_NAME_MAX] or "root"
    directory = root / f"corral-{os.geteuid()}"
    _make_private_directory(directory)
    path = directory / f"{name}-{digest}.sock"
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ControlPathError(
            f"the control socket path {path} is longer than a Unix socket allows "
            f"({UNIX_PATH_MAX} bytes): pass --control PATH"
        )
    return path


def _make_private_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as error:
        raise ControlPathError(
            f"cannot create {directory} for the control socket: {error.strerror}"
        ) from None
    info = directory.lstat()
    refusal = f"refusing {directory} for the control socket"
    if not stat.S_ISDIR(info.st_mode):
        raise ControlPathError(
            f"{refusal}: it is not a directory; remove it or pass --control PATH"
        )
    if info.st_uid != os.geteuid():
        raise ControlPathError(
            f"{refusal}: it belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}); "
            "remove it or pass --control PATH"
        )
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise ControlPathError(
            f"{refusal}: its mode {mode:04o} lets others in; it must be 0700 "
            f"(chmod 700 {directory}), or pass --control PATH"
        )
