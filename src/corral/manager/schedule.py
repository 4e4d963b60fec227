"""Schedules: when a job runs, from `every` (an interval) or `schedule` (cron, in a time zone).

Each intended time gets exactly one run, whatever the calendar or the clock does:

- `next_run` hands each time out once: a timer that fires a little before
  its time (the wall clock was slewed back while it waited) gets the next
  time, not the same one again.
- Daylight saving time, as cron (Vixie cron, cronie) handles it. A job at
  fixed times of day (`30 2 * * *`) runs once per wall time: in the hour
  the clocks repeat (autumn) only at the first pass, unless corral started
  after it; at a time the clocks skip (spring), once, right after the
  change. A job that repeats through the hour or the day, a `*` or `*/N`
  in its minute or hour field (`0 * * * *`, `*/20 2 * * *`), runs at each
  real occurrence: in both passes of a repeated hour, never at a time that
  does not exist.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from corral.settings import JobConfig


def repeats_within_the_day(expression: str) -> bool:
    """Whether a cron expression's minute or hour field is `*` or `*/N` (cron's "wildcard" job)."""
    if expression.startswith("@"):
        return expression.lower() == "@hourly"
    minute, hour = expression.split()[:2]
    return minute.startswith("*") or hour.startswith("*")


def _croniter() -> Any:
    """croniter's class, imported only for a cron schedule: croniter and dateutil take about
    1 MiB, which every process of the tree would map for what most systems do not declare."""
    from croniter import croniter

    return croniter


def _zone(config: JobConfig) -> tzinfo:
    """The time zone a job's cron schedule is read in: its `timezone`, else UTC."""
    return ZoneInfo(config.timezone) if config.timezone else timezone.utc


def tick_environment(tick: float) -> dict[str, str]:
    """What a run learns of itself: CORRAL_JOB_TICK, the Unix time of the tick it runs for.

    A late run (a zygote being replaced, a busy machine) still knows its tick, so a job can
    use it as the key of the work it does once per tick.
    """
    return {"CORRAL_JOB_TICK": f"{tick:.3f}"}


def latest_tick(config: JobConfig, now: float) -> float:
    """The tick a run started at `now` by another engine (a Kubernetes CronJob, a systemd
    timer: `corral job NAME`) runs for, as a Unix time: the latest time its cron schedule
    names at or before `now` (an engine starts a run a little after its time); `now` for an
    `every` schedule, which has no grid outside corral."""
    if config.schedule is None:
        return now
    # Just after `now`: a run started right on its tick runs for that tick.
    just_after = datetime.fromtimestamp(now + 0.001, _zone(config))
    tick: float = _croniter()(config.schedule, just_after).get_prev(float)
    return tick


class Schedule:
    """The intended times of one job's runs, as Unix times; jitter delays each run, not its time.

    `clock` gives the wall-clock time (time.time); the schedule starts at
    its first reading.
    """

    def __init__(self, config: JobConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.start = clock()
        self.last: float | None = None  # the last time handed out by next_run
        self.zone = _zone(config)
        self.wildcard = config.schedule is not None and repeats_within_the_day(config.schedule)
        if config.schedule is not None:
            self.minutes, self.hours = _croniter().expand(config.schedule)[0][:2]

    def next_run(self) -> float:
        """The next intended time: after now, and after the last one handed out."""
        now = self.clock()
        self.last = self.next_tick(now if self.last is None else max(now, self.last))
        return self.last

    def next_tick(self, after: float) -> float:
        """The first intended time strictly after `after` (intervals stay on the start's grid)."""
        if self.config.schedule is not None:
            tick = self._cron_after(after)
            while not self._intended(tick):
                tick = self._cron_after(tick)
            return tick
        assert self.config.every is not None
        every = self.config.every
        count = int((after - self.start) // every) + 1
        while self.start + count * every <= after:  # floating point can land on `after`
            count += 1
        return self.start + count * every

    def _cron_after(self, after: float) -> float:
        assert self.config.schedule is not None
        cron = _croniter()(self.config.schedule, datetime.fromtimestamp(after, self.zone))
        tick: float = cron.get_next(float)
        while tick <= after:
            tick = cron.get_next(float)
        return tick

    def _intended(self, tick: float) -> bool:
        """Whether croniter's `tick` is a run, by the rules of daylight saving time above."""
        local = datetime.fromtimestamp(tick, self.zone)
        if not self.wildcard:
            first_pass = local.replace(fold=0).timestamp()  # this wall time's first occurrence
            return first_pass == tick or first_pass < self.start
        # croniter runs a time the clocks skipped at the change: a wildcard job does not.
        return self._matches(self.minutes, local.minute) and self._matches(self.hours, local.hour)

    @staticmethod
    def _matches(values: list[int | str], value: int) -> bool:
        return values == ["*"] or value in values

    def jitter(self) -> float:
        return random.uniform(0, self.config.jitter) if self.config.jitter else 0.0
