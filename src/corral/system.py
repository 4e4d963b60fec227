"""What corral asks of the operating system: process titles, parent-death signals, privileges."""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import os
import pwd
import signal
import sys

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


def drop_privileges(user: str | None, group: str | None) -> None:
    """Become `user`/`group` (names or numeric ids); the group first, while we may still."""
    if group is not None:
        os.setgid(_gid(group))
    if user is not None:
        entry = _passwd(user)
        if group is None:
            os.setgid(entry.pw_gid)
        os.initgroups(entry.pw_name, os.getgid())
        os.setuid(entry.pw_uid)


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
