"""What the dashboard shows, from the manager's records: one JSON document the page asks for
every couple of seconds (`GET /dashboard/state`), and one job run's output on demand.

Nothing here measures: CPU and memory come from the sampler's last sample
(`corral.manager.series`), so a page asking often costs the manager no
psutil calls, and the charts' series are computed from totals it keeps.
A job's runs are listed without their output, but for the traceback of its
latest failure, which the page shows as it is.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from corral.manager.job_runs import RunRecord
from corral.manager.series import Sampler

if TYPE_CHECKING:
    from corral.manager.supervisor import Manager


def state(
    manager: Manager, about: dict[str, Any], sampler: Sampler, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The dashboard's document: `about` (status's "corral"), every process's `rows` (status's)
    with their latest CPU, memory and sparkline, the groups, the jobs, the web's series."""
    web = manager.groups.get("web")
    return {
        "now": time.time(),
        "corral": {**about, "stopping": manager.stopping},
        "processes": [_process(manager, sampler, row) for row in rows],
        "groups": [
            {"name": name, "size": group.size, "scalable": name != "jobs"}
            for name, group in manager.groups.items()
            if name != "jobs" or manager.system.jobs
        ],
        "jobs": _jobs(manager),
        "web": None
        if web is None
        else {
            **sampler.requests.points(),
            "interval": sampler.requests.interval,
            "window": sampler.requests.window,
            "reloads": [{"t": t, "result": r} for t, r in manager.metrics.reloads_done],
        },
    }


def _process(manager: Manager, sampler: Sampler, row: dict[str, Any]) -> dict[str, Any]:
    latest = sampler.resources.latest.get(row["name"])
    current = latest is not None and latest[0] == row["pid"]
    series = sampler.resources.series.get(row["name"], ())
    return {
        **row,
        "cpu_percent": latest[1] if current else None,
        "rss": latest[2] if current else None,
        "in_flight": manager.metrics.in_flight(row["pid"])
        if row["kind"] == "worker" and row["pid"] is not None
        else None,
        "rss_series": [rss for _, rss in series],
        "cpu_series": [cpu for cpu, _ in series],
    }


def _jobs(manager: Manager) -> list[dict[str, Any]]:
    jobs = manager.jobs
    if jobs is None:
        return []
    rows = []
    for row in jobs.schedule_status():
        runs = jobs.history.of(row["name"])
        failures = [run for run in runs if run.failed]
        latest_failure = _failure(failures[-1]) if failures else None
        rows.append(
            {**row, "history": [_summary(run) for run in runs], "last_failure": latest_failure}
        )
    return rows


def _summary(run: RunRecord) -> dict[str, Any]:
    return {
        "number": run.number,
        "trigger": run.trigger,
        "started": run.started,
        "duration": run.duration,
        "result": run.result,
        "lines": run.lines,
    }


def _failure(run: RunRecord) -> dict[str, Any]:
    return {**_summary(run), "traceback": run.traceback(), "tail": list(run.output)[-20:]}


def job_run(manager: Manager, job: str, number: int) -> dict[str, Any] | None:
    if manager.jobs is None:
        return None
    found = [run for run in manager.jobs.history.of(job) if run.number == number]
    return found[0].as_json() if found else None
