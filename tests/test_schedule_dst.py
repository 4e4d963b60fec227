"""A scheduled job runs exactly once for each intended time, whatever the calendar does in its
time zone (issue 11, item 7): the autumn hour that happens twice, the spring hour that does not
happen, a zone that moves by half an hour or at midnight, a timer that fires a little early.

`Schedule` is driven here as the jobs group drives it, with a clock the test sets (each run
moves the clock to its time) and real time zones; then one real corral runs a cron job once
per tick.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path

import pytest

from conftest import Clock
from corral.manager.schedule import Schedule
from corral.settings import JobConfig


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M")


def _runs(schedule: str, zone: str, start: str, end: str, early: float = 0.0) -> list[str]:
    """The runs from `start` to `end` (UTC), each timer firing `early` seconds before its time."""
    clock = Clock(_utc(start))
    plan = Schedule(JobConfig(command="true", schedule=schedule, timezone=zone), clock)
    runs = []
    while (tick := plan.next_run()) < _utc(end):
        runs.append(_iso(tick))
        clock.now = tick - early
    return runs


PARIS = "Europe/Paris"  # 2024-03-31 02:00 CET -> 03:00 CEST; 2024-10-27 03:00 CEST -> 02:00 CET


@pytest.mark.parametrize("early", [0.0, 0.4], ids=["on_time", "timer_fires_early"])
def test_a_daily_time_in_the_repeated_autumn_hour_runs_once(early):
    assert _runs("30 2 * * *", PARIS, "2024-10-25T12:00", "2024-10-29T00:00", early) == [
        "2024-10-26T00:30",  # 02:30 CEST
        "2024-10-27T00:30",  # 02:30 CEST, the first pass; not again at 02:30 CET
        "2024-10-28T01:30",  # 02:30 CET
    ]


def test_a_daily_time_in_the_repeated_hour_runs_in_the_second_pass_if_started_after_the_first():
    assert _runs("30 2 * * *", PARIS, "2024-10-27T01:10", "2024-10-28T12:00") == [
        "2024-10-27T01:30",  # 02:30 CET: corral was not running at 02:30 CEST
        "2024-10-28T01:30",
    ]


def test_a_daily_time_the_spring_change_skips_runs_once_right_after_it():
    assert _runs("30 2 * * *", PARIS, "2024-03-29T12:00", "2024-04-02T00:00") == [
        "2024-03-30T01:30",  # 02:30 CET
        "2024-03-31T01:00",  # 03:00 CEST: 02:30 did not happen that day
        "2024-04-01T00:30",  # 02:30 CEST
    ]


def test_hourly_runs_every_real_hour_across_both_changes():
    autumn = _runs("0 * * * *", PARIS, "2024-10-26T21:30", "2024-10-27T04:30")
    assert [_utc(b) - _utc(a) for a, b in pairwise(autumn)] == [3600.0] * 6, autumn  # 02:00 twice
    spring = _runs("0 * * * *", PARIS, "2024-03-30T22:30", "2024-03-31T03:30")
    assert spring == [
        f"2024-03-{day}T{hour}:00"
        for day, hour in (("30", "23"), ("31", "00"), ("31", "01"), ("31", "02"), ("31", "03"))
    ]  # 00:00 and 01:00 CET, then 03:00, 04:00, 05:00 CEST: no 02:00 that night


def test_every_20_minutes_in_the_2_oclock_hour_follows_the_real_hours():
    """Its minute field repeats: each real 02:xx runs, a 02:xx that does not exist does not."""
    assert _runs("*/20 2 * * *", PARIS, "2024-10-26T12:00", "2024-10-27T12:00") == [
        "2024-10-27T00:00",  # 02:00 CEST
        "2024-10-27T00:20",
        "2024-10-27T00:40",
        "2024-10-27T01:00",  # 02:00 CET
        "2024-10-27T01:20",
        "2024-10-27T01:40",
    ]
    assert _runs("*/20 2 * * *", PARIS, "2024-03-30T12:00", "2024-04-01T00:30") == [
        "2024-04-01T00:00",  # 02:00 CEST; none on the 31st, whose 02:xx never happened
        "2024-04-01T00:20",
    ]


def test_a_zone_that_changes_at_midnight_and_one_that_moves_half_an_hour():
    # Santiago: 2024-09-08 00:00 -04 -> 01:00 -03; 2024-04-07 00:00 -03 -> 23:00 -04 (on the 6th).
    assert _runs("30 0 * * *", "America/Santiago", "2024-09-06T12:00", "2024-09-09T12:00") == [
        "2024-09-07T04:30",
        "2024-09-08T04:00",  # 01:00 -03: 00:30 did not happen
        "2024-09-09T03:30",
    ]
    assert _runs("30 23 * * *", "America/Santiago", "2024-04-05T12:00", "2024-04-08T12:00") == [
        "2024-04-06T02:30",  # 23:30 -03 on the 5th
        "2024-04-07T02:30",  # 23:30 -03 on the 6th, the first pass; not 23:30 -04
        "2024-04-08T03:30",
    ]
    # Lord Howe: 2024-04-07 02:00 +11 -> 01:30 +10:30, so 01:30-02:00 happens twice.
    assert _runs("45 1 * * *", "Australia/Lord_Howe", "2024-04-06T00:00", "2024-04-08T00:00") == [
        "2024-04-06T14:45",  # 01:45 +11 on the 7th, the first pass; not 01:45 +10:30
        "2024-04-07T15:15",  # 01:45 +10:30 on the 8th
    ]


def test_an_interval_runs_once_per_tick_when_its_timer_fires_early():
    clock = Clock(1_000_000.0)
    plan = Schedule(JobConfig(command="true", every=10), clock)
    runs = []
    for _ in range(5):
        runs.append(plan.next_run())
        clock.now = runs[-1] - 0.003  # a timer a hair early: the same tick must not come again
    assert runs == [1_000_010.0, 1_000_020.0, 1_000_030.0, 1_000_040.0, 1_000_050.0]


def test_a_cron_job_in_a_time_zone_runs_once_per_tick(corral, tmp_path: Path):
    """A real corral: a tick every second, in Paris' time, for a few seconds: each once."""
    (tmp_path / "corral.toml").write_text(
        "[jobs.tick]\n"
        f'command = "{sys.executable} -c \'import time; print(\\"at\\", time.time())\'"\n'
        'schedule = "* * * * * */1"\n'
        'timezone = "Europe/Paris"\n'
    )
    server = corral("run", cwd=tmp_path)
    server.wait_for(r"^tick\s+\| at ", timeout=10)
    time.sleep(4.5)
    assert server.stop() == 0
    seconds = [int(float(line.split()[-1])) for line in server.lines if "| at " in line]
    assert len(seconds) >= 4, server.output
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), (
        seconds
    )  # no repeat, none lost
