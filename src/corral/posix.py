"""What corral asks of the operating system: process titles, parent-death signals, privileges,
the length of a listening socket's queue, the output a socket's peer has not taken.

Used by the manager and the children alike; it imports nothing of corral's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import grp
import os
import pwd
import signal
import socket
import sys
import termios
from typing import Any

import setproctitle

_PR_SET_PDEATHSIG = 1


def set_title(title: str) -> None:
    """Name this process as `ps` and `top` show it, e.g. "corral: web.2"."""
    setproctitle.setproctitle(title)


def die_with_parent(expected_parent: int, sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` when our parent exits; False if it has already gone.

    Linux only (prctl); elsewhere the channel to the parent closing is the
    signal, which every child also watches.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    return os.getppid() == expected_parent


def identity(user: str | None, group: str | None) -> dict[str, Any]:
    """The `user`, `group` and `extra_groups` ids for running a child as `user`/`group`.

    The manager keeps its own identity (so it can remove its pidfile and
    socket files, and bind again on reload); the children that run the
    app are started as the user. Names or numeric ids; ValueError names
    one that does not exist.
    """
    if user is None and group is None:
        return {}
    chosen: dict[str, Any] = {}
    if group is not None:
        chosen["group"] = _gid(group)
    if user is not None:
        entry = _passwd(user)
        gid = chosen.setdefault("group", entry.pw_gid)
        chosen["user"] = entry.pw_uid
        chosen["extra_groups"] = os.getgrouplist(entry.pw_name, gid)
    return chosen


def owner(chosen: dict[str, Any]) -> tuple[int, int] | None:
    """(uid, gid) for os.chown from what `identity()` chose (-1: left as is); None for neither."""
    if not chosen:
        return None
    return chosen.get("user", -1), chosen.get("group", -1)


def assume_identity(chosen: dict[str, Any]) -> None:
    """Become what `identity()` chose, as Popen would: supplementary groups, group, then user."""
    if "extra_groups" in chosen:
        os.setgroups(chosen["extra_groups"])
    if "group" in chosen:
        os.setgid(chosen["group"])
    if "user" in chosen:
        os.setuid(chosen["user"])


def _passwd(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"--user: no such user {user!r}") from None


def _gid(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"--group: no such group {group!r}") from None


def describe_exit(code: int) -> str:
    """Human words for a waitstatus_to_exitcode() result: "exit code 1", "killed by SIGKILL"."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"


_TCP_INFO_SIZE = 104
_TCPI_UNACKED_OFFSET = 24  # for a listening socket, Linux reports its accept queue length here


def waiting_connections(sock: socket.socket) -> int | None:
    """How many connections wait in `sock`'s accept queue; None where the OS does not say."""
    if not hasattr(socket, "TCP_INFO") or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    return int.from_bytes(info[_TCPI_UNACKED_OFFSET : _TCPI_UNACKED_OFFSET + 4], sys.byteorder)


def unsent_bytes(fd: int) -> int:
    """Bytes written to socket `fd` that its peer has not taken yet (SIOCOUTQ); 0 where unknown.

    They sit in the kernel, out of the sender's sight: the progress of a
    client reading slowly shows here before it shows in the sender's own buffer.
    """
    request = getattr(termios, "TIOCOUTQ", None)
    if request is None:
        return 0
    try:
        answer = fcntl.ioctl(fd, request, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(answer, sys.byteorder)
