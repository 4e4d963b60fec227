"""Restarting a name after its process died: when, and the timer until then.

Shared by every group whose members come back on their own (web workers,
process replicas). The delay comes from `Backoff`: at once after a stable
run, doubling while deaths repeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from corral.manager.backoff import Backoff


class Respawner:
    """The pending restarts of one group, by name, and each name's backoff."""

    def __init__(self) -> None:
        self._backoffs: dict[str, Backoff] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def schedule(self, name: str, served_for: float | None, start: Callable[[], None]) -> float:
        """Call `start` once `name`'s backoff allows; return the delay in seconds.

        `served_for` is how long the dead process served (None if it never
        became ready): a long enough run resets the backoff.
        """
        delay = self._backoffs.setdefault(name, Backoff()).delay_after_death(served_for)
        self.cancel(name)

        def fire() -> None:
            del self._timers[name]
            start()

        self._timers[name] = asyncio.get_running_loop().call_later(delay, fire)
        return delay

    def pending(self, name: str) -> bool:
        return name in self._timers

    def cancel(self, name: str) -> bool:
        """Call off `name`'s pending restart; True if there was one."""
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        return timer is not None

    def cancel_all(self) -> None:
        for name in list(self._timers):
            self.cancel(name)
