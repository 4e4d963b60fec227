"""Schedules: when a job's next tick is, from `every` (an interval) or `schedule` (cron)."""

from __future__ import annotations

import random
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from corral.settings import JobConfig


class Schedule:
    """The ticks of one job, as wall-clock timestamps; jitter delays each run, not the tick."""

    def __init__(self, config: JobConfig, now: float | None = None) -> None:
        self.config = config
        self.start = time.time() if now is None else now
        self.cron = None
        if config.schedule is not None:
            # Imported here: croniter and dateutil take about 1 MiB, which every process of
            # the tree would map for a cron schedule that most systems do not declare.
            from croniter import croniter

            zone = ZoneInfo(config.timezone) if config.timezone else timezone.utc
            self.cron = croniter(config.schedule, datetime.fromtimestamp(self.start, zone))

    def next_tick(self, after: float) -> float:
        """The first tick strictly after `after` (interval ticks stay on the start's grid)."""
        if self.cron is not None:
            tick = self.cron.get_next(float)
            while tick <= after:
                tick = self.cron.get_next(float)
            return tick
        assert self.config.every is not None
        every = self.config.every
        count = int((after - self.start) // every) + 1
        while self.start + count * every <= after:  # floating point can land on `after`
            count += 1
        return self.start + count * every

    def jitter(self) -> float:
        return random.uniform(0, self.config.jitter) if self.config.jitter else 0.0
