"""Restart delays: at once after a death following a stable run, doubling while deaths repeat."""

from __future__ import annotations

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
STABLE_AFTER = 10.0  # seconds of serving after which a death is no longer "in a row"


class Backoff:
    def __init__(self) -> None:
        self.failures = 0

    def delay_after_death(self, served_for: float | None) -> float:
        """Seconds to wait before the next start; `served_for` is None if it never became ready."""
        if served_for is not None and served_for >= STABLE_AFTER:
            self.failures = 0
        self.failures += 1
        if self.failures == 1:
            return 0.0
        return min(FIRST_DELAY * 2 ** (self.failures - 2), MAX_DELAY)
