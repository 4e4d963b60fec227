"""Each job's last runs: when, how long, the result, and what each run printed.

The dashboard shows them; a failed run's traceback is the end of its output
(`RunRecord.traceback`). Bounded: the last RUNS_KEPT runs of each job, the
last LINES_KEPT lines of each run, each line cut at LINE_LIMIT characters.
A run's lines come from its output pump (`corral.manager.output.Pump`'s
tee), which may hand over the last ones after the run has been reported
finished: they still land in its record.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

RUNS_KEPT = 20
LINES_KEPT = 200
LINE_LIMIT = 2000  # characters
TRACEBACK_START = "Traceback (most recent call last):"


@dataclass
class RunRecord:
    """One run of a job, or a tick skipped (overlap) or missed (no zygote to fork it)."""

    job: str
    number: int  # 1 for the job's first run since corral started
    trigger: str  # "schedule" or "run now"
    started: float = field(default_factory=time.time)  # Unix time
    duration: float | None = None  # seconds; None while it runs
    result: str | None = None  # None while it runs; ok, failed: exit code 1, timeout, skipped...
    output: deque[str] = field(default_factory=lambda: deque(maxlen=LINES_KEPT))
    lines: int = 0  # every line it printed, kept or not

    def take(self, lines: list[str]) -> None:
        """The run printed `lines` (its output pump's tee)."""
        self.lines += len(lines)
        self.output.extend(line[:LINE_LIMIT] for line in lines)

    @property
    def failed(self) -> bool:
        """It ran and failed: not ok, not running, not a tick skipped or missed."""
        return self.result is not None and self.result.partition(":")[0] in ("failed", "timeout")

    def traceback(self) -> list[str]:
        """The last traceback the run printed, to the end of its output; [] if none."""
        output = list(self.output)
        for index in range(len(output) - 1, -1, -1):
            if output[index].startswith(TRACEBACK_START):
                return output[index:]
        return []

    def as_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "trigger": self.trigger,
            "started": self.started,
            "duration": self.duration,
            "result": self.result,
            "output": list(self.output),
            "lines_dropped": self.lines - len(self.output),
            "traceback": self.traceback() if self.failed else [],
        }


class JobRuns:
    """The last RUNS_KEPT runs of every job, newest last."""

    def __init__(self, kept: int = RUNS_KEPT) -> None:
        self._kept = kept
        self._runs: dict[str, deque[RunRecord]] = {}
        self._numbers: dict[str, itertools.count[int]] = {}

    def begin(self, job: str, trigger: str) -> RunRecord:
        """A run of `job` starts now."""
        number = next(self._numbers.setdefault(job, itertools.count(1)))
        record = RunRecord(job, number, trigger)
        self._runs.setdefault(job, deque(maxlen=self._kept)).append(record)
        return record

    @staticmethod
    def finish(record: RunRecord, result: str, duration: float) -> None:
        record.result, record.duration = result, duration

    def of(self, job: str) -> list[RunRecord]:
        return list(self._runs.get(job, ()))

    def forget(self, job: str) -> None:
        """`job` is no longer declared."""
        self._runs.pop(job, None)
