"""`corral status` as text: the processes and jobs tables, from the status JSON. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from corral.words import counted

MISSING = "-"
# The states that have an uptime.
_LIVE_STATES = frozenset({"starting", "ready", "running", "draining", "retiring"})

PROCESS_HEADERS = (
    "NAME",
    "PID",
    "STATE",
    "UPTIME",
    "RESTARTS",
    "LAST EXIT",
    "CPU %",
    "RSS",
    "REQUESTS",
)
JOB_HEADERS = ("NAME", "SCHEDULE", "LAST RUN", "DURATION", "RESULT", "NEXT RUN", "RUNS/FAILURES")


def render_status(status: dict[str, Any], now: float) -> str:
    """A summary line, the processes table and, when there are jobs, the jobs table."""
    corral = status["corral"]
    started = corral.get("started")
    uptime = MISSING if started is None else human_duration(now - started)
    reloads = corral.get("reloads", 0)
    summary = (
        f"corral {corral.get('version', '?')}, pid {corral.get('pid', '?')}, up {uptime}, "
        f"{counted(reloads, 'reload')}, in {corral.get('project', '?')}"
    )
    parts = [summary, "", render_table(PROCESS_HEADERS, process_rows(status["processes"], now))]
    if status.get("jobs"):
        parts += ["", render_table(JOB_HEADERS, job_rows(status["jobs"], now))]
    return "\n".join(parts)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, no trailing spaces."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    ]
    return "\n".join(lines)


def process_rows(processes: list[dict[str, Any]], now: float) -> list[list[str]]:
    return [
        [
            process["name"],
            _or_missing(process.get("pid")),
            process.get("state") or MISSING,
            _uptime(process, now),
            _or_missing(process.get("restarts")),
            process.get("last_exit") or MISSING,
            MISSING if process.get("cpu_percent") is None else f"{process['cpu_percent']:.1f}",
            MISSING if process.get("rss") is None else mebibytes(process["rss"]),
            _or_missing(process.get("requests")),
        ]
        for process in processes
    ]


def job_rows(jobs: list[dict[str, Any]], now: float) -> list[list[str]]:
    rows = []
    for job in jobs:
        last = job.get("last_run") or {}
        next_run = job.get("next_run")
        result = "running" if job.get("running") else last.get("result") or MISSING
        rows.append(
            [
                job["name"],
                job.get("schedule") or MISSING,
                MISSING if not last else f"{human_duration(now - last['started'])} ago",
                MISSING if last.get("duration") is None else short_duration(last["duration"]),
                result,
                MISSING if next_run is None else time_until(next_run - now),
                f"{job.get('runs', 0)}/{job.get('failures', 0)}",
            ]
        )
    return rows


def human_duration(seconds: float) -> str:
    """Two units at most, as people say it: 5s, 3m12s, 2h5m, 3d4h."""
    whole = max(int(seconds), 0)
    minutes, secs = divmod(whole, 60)
    hours, mins = divmod(minutes, 60)
    days, hrs = divmod(hours, 24)
    if days:
        return f"{days}d{hrs}h"
    if hours:
        return f"{hours}h{mins}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def short_duration(seconds: float) -> str:
    """A run's duration: 120ms, 3.4s, then as human_duration."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return human_duration(seconds)


def time_until(seconds: float) -> str:
    """`in 12s`; `due` once the time has come (the scheduler is about to start it)."""
    return f"in {human_duration(seconds)}" if seconds >= 1 else "due"


def mebibytes(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _uptime(process: dict[str, Any], now: float) -> str:
    started = process.get("started")
    if started is None or process.get("state") not in _LIVE_STATES:
        return MISSING
    return human_duration(now - started)


def _or_missing(value: Any) -> str:
    return MISSING if value is None else str(value)
