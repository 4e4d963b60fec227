"""What corral asks of the operating system: process titles, parent-death signals, privileges,
the length of a listening socket's queue, the output a socket's peer has not taken.

Used by the manager and the children alike; it imports nothing of corral's but its error type.
"""

from __future__ import annotations

import ctypes
import fcntl
import grp
import os
import pwd
import signal
import socket
import sys
import termios
from collections.abc import Iterable
from types import FrameType
from typing import Any

import setproctitle

from corral.errors import UsageError

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# The C library, loaded once: `CDLL(None)` is the running program's own symbols, libc among
# them, so nothing is searched for (ctypes.util.find_library runs `ldconfig -p`, a process).
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

MANAGER_TITLE = "corral: manager"


class IdentityError(UsageError):
    """A user or group that does not exist, or that corral cannot run its children as."""


def set_title(title: str) -> None:
    """Name this process as `ps` and `top` show it, e.g. "corral: web.2"."""
    setproctitle.setproctitle(title)


def die_with_parent(expected_parent: int, sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` when our parent exits; False if it has already gone.

    Linux only (prctl); elsewhere the channel to the parent closing is the
    signal, which every child also watches. A change of user or group
    clears the request (the kernel's rule), so call this after `assume_identity`.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    return os.getppid() == expected_parent


_held: list[int] = []  # the signals noted by hold_signals, oldest first
_holding: dict[int, Any] = {}  # each held signal's handler before


def hold_signals(signals: Iterable[int]) -> None:
    """Note each of `signals` as it comes, rather than die of it (or raise KeyboardInterrupt).

    For the manager's start, before its event loop takes the signals over:
    a stop asked for meanwhile is honoured once the loop runs (`held_signals`).
    """
    for sig in signals:
        _holding.setdefault(sig, signal.signal(sig, _hold))


def _hold(number: int, frame: FrameType | None) -> None:
    _held.append(number)


def held_signals() -> list[int]:
    """The signals `hold_signals` noted so far, oldest first; each is returned once."""
    noted = _held[:]
    del _held[: len(noted)]
    return noted


def release_signals() -> None:
    """The handlers from before `hold_signals` again (in its process, or in one forked from it)."""
    for sig, before in _holding.items():
        signal.signal(sig, before)
    _holding.clear()
    _held.clear()


def become_subreaper() -> bool:
    """Be the parent of every orphan among our descendants; False where the OS cannot.

    Linux only (prctl, since 3.4): a process of our subtree whose parent
    exits is handed to us instead of to init, so we can still stop it.
    Elsewhere it goes to init (launchd); see `corral.child.launcher`.
    """
    if _LIBC is None:
        return False
    return int(_LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def is_manager(pid: int) -> bool:
    """Whether `pid` is a live corral manager (by its title), whose files are not leftovers."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return " ".join(process.cmdline()).startswith(MANAGER_TITLE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # not ours to look at, so not ours to clean up after either


def identity(
    user: str | None, group: str | None, given_as: tuple[str, str] = ("user", "group")
) -> dict[str, Any]:
    """The `user`, `group` and `extra_groups` ids for running a child as `user`/`group`,
    and the `environment` that says who it is (HOME, USER, LOGNAME, as su and systemd set).

    The manager keeps its own identity (so it can remove its pidfile and
    socket files, and bind again on reload); the children, which run the
    user's code, are started as the user. Names or numeric ids.
    IdentityError names one that does not exist, or one that only root
    could become: not being root, corral can only keep its own identity
    (then nothing needs changing, and {} is returned). `given_as` says how
    the user and the group were given (`corral.settings.System.given_as`),
    for the message.
    """
    if user is None and group is None:
        return {}
    chosen: dict[str, Any] = {}
    if group is not None:
        chosen["group"] = _gid(group, given_as[1])
    if user is not None:
        entry = _passwd(user, given_as[0])
        gid = chosen.setdefault("group", entry.pw_gid)
        chosen["user"] = entry.pw_uid
        chosen["extra_groups"] = os.getgrouplist(entry.pw_name, gid)
        chosen["environment"] = {
            "HOME": entry.pw_dir,
            "USER": entry.pw_name,
            "LOGNAME": entry.pw_name,
        }
    if os.geteuid() != 0:
        if (chosen.get("user", os.geteuid()), chosen["group"]) == (os.geteuid(), os.getegid()):
            return {}
        asked = " ".join(f"{k} {v!r}" for k, v in zip(given_as, (user, group), strict=True) if v)
        raise IdentityError(
            f"{asked}: only root can run the children as another user or group "
            f"(corral runs as uid {os.geteuid()}, gid {os.getegid()})"
        )
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


def _passwd(user: str, given_as: str) -> pwd.struct_passwd:
    try:
        if user.isascii() and user.isdigit():
            return pwd.getpwuid(int(user))
        return pwd.getpwnam(user)
    except (KeyError, ValueError, OverflowError):  # a NUL, an id beyond what uid_t holds
        raise IdentityError(f"{given_as} {user!r}: no such user") from None


_ID_MAX = 2**32 - 2  # the largest uid or gid: (uid_t) -1 means "unchanged"


def _gid(group: str, given_as: str) -> int:
    if group.isascii() and group.isdigit() and int(group) <= _ID_MAX:
        return int(group)  # a number needs no entry in the group database
    try:
        return grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):  # none, or a NUL in the name
        raise IdentityError(f"{given_as} {group!r}: no such group") from None


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
