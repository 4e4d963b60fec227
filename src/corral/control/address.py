"""Where the control API listens: a Unix socket per manager, and TCP when asked.

Each manager's socket is named after its project directory and its pid
(`/tmp/corral-UID/NAME-HASH.PID.sock`), so several corrals can run from one
directory; `corral.control.discovery` finds them.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import stat
from pathlib import Path

from corral.errors import UsageError
from corral.settings.addresses import UNIX_PATH_MAX, TcpAddress, UnixAddress, parse_address

_NAME_MAX = 32  # of the project directory's name in the socket's name; the hash keeps it unique
ROOT = Path("/tmp")

__all__ = ["UNIX_PATH_MAX", "ControlPathError", "TcpAddress", "UnixAddress", "parse_control"]


class ControlPathError(UsageError):
    """The control address or socket path cannot be used; the message says why and what to do."""


def parse_control(value: str) -> UnixAddress | TcpAddress:
    """HOST:PORT or [IPV6]:PORT is TCP; anything else (anything with a '/' too) is a socket path.

    ControlPathError says what is wrong and what was expected.
    """
    try:
        return parse_address(value)
    except ValueError as error:
        raise ControlPathError(str(error)) from None


def control_path(project: Path, pid: int, root: Path = ROOT) -> Path:
    """The control socket of the manager `pid` run in `project`, in a folder private to its user.

    `/tmp/corral-UID/NAME-HASH.PID.sock`, where NAME is the directory's name
    (readable in `ls`), HASH comes from its real path (so two checkouts
    named `app` differ) and PID is the manager's (so two corrals can run
    from one directory). Not under $XDG_RUNTIME_DIR: a service and its
    user's shell rarely agree on that variable, and the CLI must find the
    socket from either. ControlPathError if the folder cannot be trusted
    (see `control_folder`) or the path is too long for a socket.
    """
    path = control_folder(root) / f"{project_key(project)}.{pid}.sock"
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ControlPathError(
            f"the control socket path {path} is longer than a Unix socket allows "
            f"({UNIX_PATH_MAX} bytes): pass --control PATH"
        )
    return path


def control_paths(project: Path, root: Path = ROOT) -> dict[int, Path]:
    """The control sockets in the folder that managers run in `project` made, by manager pid.

    Some may be leftovers of managers that were killed: see `corral.control.discovery`.
    """
    key = project_key(project)
    found = {}
    for path in control_folder(root).glob(f"{glob.escape(key)}.*.sock"):
        pid = path.name.removeprefix(f"{key}.").removesuffix(".sock")
        if pid.isdigit():
            found[int(pid)] = path
    return found


def project_key(project: Path) -> str:
    """NAME-HASH: what every control socket of `project` is named after."""
    real = os.path.realpath(project)
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(real))[:_NAME_MAX] or "root"
    return f"{name}-{digest}"


def control_folder(root: Path = ROOT) -> Path:
    """`root`/corral-UID, where this user's managers put their control sockets.

    Created mode 0700; an existing one that another user owns, or that
    others can enter, is refused (ControlPathError): whoever controls the
    folder could put a socket of theirs where the CLI would send its commands.
    """
    directory = root / f"corral-{os.geteuid()}"
    _make_private_directory(directory)
    return directory


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
