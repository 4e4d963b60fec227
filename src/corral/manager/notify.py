"""systemd's service notifications (sd_notify(3)), for a `Type=notify` unit.

systemd starts the unit's dependents when corral says READY=1 (once web
serves), waits for READY=1 again after RELOADING=1, and knows a stop is
corral's own after STOPPING=1. A notification is one datagram to the Unix
socket named by $NOTIFY_SOCKET (a path, or an abstract address written with
a leading '@'). Without $NOTIFY_SOCKET, as outside systemd, nothing is sent.

Written here rather than taken from a library: the protocol is one
`sendto`, and the pure-Python client on PyPI (sdnotify) has not had a
release since 2017; the others wrap libsystemd.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

VARIABLE = "NOTIFY_SOCKET"


class Notifier:
    """Tells systemd what corral is doing; does nothing when not run by systemd."""

    def __init__(self, address: str | None, say: Callable[[str], None]) -> None:
        self.address = address
        self.say = say
        self._failed = False

    @classmethod
    def from_environment(
        cls, say: Callable[[str], None], environ: MutableMapping[str, str] = os.environ
    ) -> Notifier:
        """Take $NOTIFY_SOCKET out of `environ`: it is for corral, not for the app it starts
        (an app that notified too would be read as the unit's own readiness)."""
        return cls(environ.pop(VARIABLE, None) or None, say)

    def ready(self) -> None:
        """Serving: web's first worker is ready (or, without web, everything started)."""
        self._send("READY=1")

    def reloading(self) -> None:
        """A reload begins; `ready` says when it is over. systemd 253+ wants the clock with it."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000  # microseconds
        self._send(f"RELOADING=1\nMONOTONIC_USEC={now}")

    def main_pid(self, pid: int) -> None:
        """The service's main process is now `pid` (a new manager after an upgrade)."""
        self._send(f"MAINPID={pid}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    async def ready_after(self, reloads: Iterable[asyncio.Future[Any]]) -> None:
        """READY=1 once every part of a reload has finished, whether it worked or not:
        a failed reload leaves the old code serving."""
        pending = list(reloads)
        if pending:
            await asyncio.wait(pending)
        self.ready()

    def _send(self, state: str) -> None:
        if self.address is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode(), target)
        except OSError as error:
            if not self._failed:  # said once: systemd will act on the silence (a start timeout)
                self._failed = True
                self.say(f"cannot notify systemd at {self.address}: {error.strerror or error}")
