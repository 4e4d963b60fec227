"""What corral asks of the operating system: process titles, parent-death signals, privileges,
the length of a listening socket's queue, the output a socket's peer has not taken.

Used by the manager and the children alike; it imports nothing of corral's but
`corral.identity` (the lookups of users and groups, which the settings use too).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import sys
import termios
from collections.abc import Iterable
from types import FrameType
from typing import Any

import setproctitle

# What the manager asks about identities, looked up where the settings can use it too.
from corral.identity import IdentityError as IdentityError
from corral.identity import identity as identity
from corral.identity import owner as owner

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# The C library, loaded once: `CDLL(None)` is the running program's own symbols, libc among
# them, so nothing is searched for (ctypes.util.find_library runs `ldconfig -p`, a process).
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

MANAGER_TITLE = "corral: manager"


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


def assume_identity(chosen: dict[str, Any]) -> None:
    """Become what `identity()` chose, as Popen would: supplementary groups, group, then user."""
    if "extra_groups" in chosen:
        os.setgroups(chosen["extra_groups"])
    if "group" in chosen:
        os.setgid(chosen["group"])
    if "user" in chosen:
        os.setuid(chosen["user"])


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
