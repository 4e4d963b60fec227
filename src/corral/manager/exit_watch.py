"""Learning that a process which is not our child has exited: by its pidfd, else by polling.

The manager cannot wait() for a zygote (the launcher is its parent); when the
launcher dies, the manager still needs to know when each zygote is gone.
Linux gives a pidfd that becomes readable at that moment. Where there is
none (macOS), the process is looked at every POLL_INTERVAL instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import psutil

HAS_PIDFD = hasattr(os, "pidfd_open")
POLL_INTERVAL = 0.1  # seconds between looks, without a pidfd


def watch_exit(pid: int, gone: Callable[[], None], *, pidfd: bool = HAS_PIDFD) -> None:
    """Call `gone` once process `pid` has exited (at once if it already has).

    `pidfd=False` polls even where pidfds exist (it is how the fallback is
    tested on Linux). Either way, a zombie (exited, not yet reaped by its
    parent) counts as gone.
    """
    if pidfd:
        _watch_pidfd(pid, gone)
    else:
        _poll(pid, gone, asyncio.get_running_loop())


def _watch_pidfd(pid: int, gone: Callable[[], None]) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        gone()
        return
    loop = asyncio.get_running_loop()

    def readable() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        gone()

    loop.add_reader(fd, readable)


def _poll(pid: int, gone: Callable[[], None], loop: asyncio.AbstractEventLoop) -> None:
    if has_exited(pid):
        gone()
    else:
        loop.call_later(POLL_INTERVAL, _poll, pid, gone, loop)


def has_exited(pid: int) -> bool:
    """Whether `pid` has exited (a zombie has); a process we may not look at has not."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False
