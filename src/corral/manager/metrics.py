"""/metrics: what the manager knows, summed over the workers, plus the app's own metrics.

Sources: each live web worker's latest request snapshot (cumulative, sent
with its heartbeat; see `corral.child.request_stats`), the counts the
manager keeps itself (restarts, reloads, job runs), per-process samples
taken at scrape time, and the files the app's prometheus_client metrics
write into the multiprocess directory. The exposition is built afresh at
each scrape from metric families, on a registry of its own: the manager
never creates prometheus_client Counter or Gauge objects.

Counters never go down while corral runs: when a worker exits, its last
snapshot joins the totals of exited workers, and its replacement counts
from zero on top of them. Requests a worker finished after its last
heartbeat are lost, so a worker should send a final snapshot as it exits.

The multiprocess directory, and a trap. prometheus_client chooses how a
metric stores its value (in the process, or in an mmaped file of the
multiprocess directory) once, when `prometheus_client.values` is first
imported, from PROMETHEUS_MULTIPROC_DIR in the environment at that moment.
Workers are forked (launcher -> zygote -> worker) from a copy of the
manager's imports, so if the manager imported prometheus_client before
setting that variable, every worker would inherit the in-process choice
and an app's Counter would count in each worker alone, invisible to
/metrics. Hence the order: `prepare_multiprocess_dir`, then set
PROMETHEUS_MULTIPROC_DIR in the manager's own os.environ, then anything
that imports prometheus_client. This module imports it only inside the
functions that need it, so importing the module does not spring the trap.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import stat
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil

from corral.child.request_stats import BUCKETS
from corral.errors import UsageError
from corral.manager.metrics_files import AppMetrics, fold_into
from corral.posix import is_manager

if TYPE_CHECKING:
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

    Family = TypeVar("Family", CounterMetricFamily, GaugeMetricFamily)

RESTART_CAUSES = frozenset(
    {"crash", "timeout", "max-requests", "max-memory", "reload", "scale", "restart"}
)
RELOAD_RESULTS = ("ok", "failed")
JOB_RESULTS = frozenset({"ok", "failed", "timeout", "skipped", "stopped"})
RELOADS_KEPT = 100  # the last reloads' results, with their times, for the dashboard's charts

_OWN_DIR_PREFIX = "corral-metrics-"  # then the manager's pid: corral-metrics-PID-XXXXXXXX
# prometheus_client's per-process files: counter_<pid>.db, gauge_livesum_<pid>.db, ...
_PROCESS_FILE = re.compile(r"(?:counter|histogram|summary|gauge_[a-z]+)_(\d+)\.db")


@dataclass(frozen=True)
class ProcessSample:
    """One process's resources, sampled by the manager (psutil) at scrape time."""

    process: str
    group: str
    pid: int
    rss: int
    cpu_seconds: float  # user + system CPU time so far


@dataclass
class _Requests:
    """Request counts summed over worker snapshots (see RequestStats.snapshot for the format)."""

    by: Counter[tuple[str, int]] = field(default_factory=Counter)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    sum: float = 0.0

    def add(self, snapshot: dict[str, Any]) -> None:
        for method, status, count in snapshot["by"]:
            self.by[method, status] += count
        for index, count in enumerate(snapshot["buckets"]):
            self.buckets[index] += count
        self.sum += snapshot["sum"]

    def copy(self) -> _Requests:
        return _Requests(Counter(self.by), list(self.buckets), self.sum)


@dataclass(frozen=True)
class RequestTotals:
    """Requests finished by every worker since corral started (what the dashboard charts)."""

    count: int
    errors: int  # answered 5xx, or not answered at all (status 0)
    buckets: tuple[int, ...]  # per latency bucket (BUCKETS, then +Inf), not cumulative


@dataclass
class _JobDurations:
    count: int = 0
    sum: float = 0.0


class Metrics:
    """The manager's metrics state, fed by events, rendered on scrape.

    Runs on the manager's event loop only, so it takes no locks.
    """

    def __init__(self, multiprocess_dir: Path | None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self._live: dict[int, dict[str, Any]] = {}  # pid -> latest snapshot
        self._exited = _Requests()
        self._restarts: Counter[tuple[str, str]] = Counter()
        self._reloads: Counter[str] = Counter(dict.fromkeys(RELOAD_RESULTS, 0))
        self._job_runs: Counter[tuple[str, str]] = Counter()
        self._job_durations: dict[str, _JobDurations] = {}
        self._job_last_success: dict[str, float] = {}
        self.reloads_done: deque[tuple[float, str]] = deque(maxlen=RELOADS_KEPT)  # (time, result)

    # -- events ------------------------------------------------------------------

    def worker_stats(self, process: str, pid: int, snapshot: dict[str, Any]) -> None:
        """Record a live worker's latest cumulative snapshot, replacing its previous one.

        Keyed by pid, not by `process`: a replacement worker takes over its
        predecessor's name (web.2) while the predecessor may still be
        draining and reporting. The name labels no series, so that /metrics
        keeps the same series however often workers are replaced.
        """
        self._live[pid] = snapshot

    def worker_exited(self, pid: int) -> None:
        """Fold an exited worker's last snapshot into the totals; forget its live gauges.

        Call it for every child that exits, web worker or not (process
        replicas, job runs), once it has exited: any of them may have
        written prometheus_client files. `mark_process_dead` removes the
        files of its `live*` gauges; its other files are folded into the
        manager's (`corral.manager.metrics_files`), so the app's counters
        do not go down, and the directory does not grow with each process.
        """
        snapshot = self._live.pop(pid, None)
        if snapshot is not None:
            self._exited.add(snapshot)
        # Only if it wrote any: the first import of prometheus_client (about 30 ms) would
        # otherwise delay the replacement of every crashed worker of an app that writes none.
        if self.multiprocess_dir is not None and _has_process_files(self.multiprocess_dir, pid):
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(pid, str(self.multiprocess_dir))
            fold_into(self.multiprocess_dir, pid, os.getpid())

    def restart(self, group: str, cause: str) -> None:
        if cause not in RESTART_CAUSES:
            raise ValueError(f"unknown restart cause {cause!r}")
        self._restarts[group, cause] += 1

    def reload(self, result: str) -> None:
        if result not in RELOAD_RESULTS:
            raise ValueError(f"unknown reload result {result!r}")
        self._reloads[result] += 1
        self.reloads_done.append((time.time(), result))

    def job_run(self, job: str, result: str, seconds: float, finished_at: float) -> None:
        """Count one run of `job`; `finished_at` is a Unix time.

        A skipped run did not run, so its duration is not recorded.
        """
        if result not in JOB_RESULTS:
            raise ValueError(f"unknown job result {result!r}")
        self._job_runs[job, result] += 1
        if result == "skipped":
            return
        durations = self._job_durations.setdefault(job, _JobDurations())
        durations.count += 1
        durations.sum += seconds
        if result == "ok":
            self._job_last_success[job] = finished_at

    # -- exposition --------------------------------------------------------------

    def render(self, samples: list[ProcessSample]) -> bytes:
        """The whole /metrics body, Prometheus text format 0.0.4."""
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Scrape(self, samples))
        if self.multiprocess_dir is not None:
            registry.register(AppMetrics(self.multiprocess_dir))
        return generate_latest(registry)

    def families(self, samples: list[ProcessSample]) -> Iterator[Metric]:
        """corral's own metric families, with `samples` for the per-process ones.

        Job durations are a summary (count and sum), not a histogram: jobs
        run seldom and their durations range from milliseconds to hours, so
        no one set of buckets would say much, while count and sum give the
        mean duration over any window. (A histogram's advantage, summing
        across instances, does not apply: the manager is the only source.)
        """
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            SummaryMetricFamily,
        )
        from prometheus_client.utils import floatToGoString

        requests = self._requests()
        yield _with(
            CounterMetricFamily(
                "corral_http_requests", "HTTP requests finished.", labels=["method", "status"]
            ),
            {(method, str(status)): count for (method, status), count in requests.by.items()},
        )
        bounds = [floatToGoString(bound) for bound in (*BUCKETS, float("inf"))]
        yield HistogramMetricFamily(
            "corral_http_request_duration_seconds",
            "Time the app took to serve each request, to the end of its response.",
            buckets=list(zip(bounds, itertools.accumulate(requests.buckets), strict=True)),
            sum_value=requests.sum,
        )
        yield GaugeMetricFamily(
            "corral_http_requests_in_flight",
            "HTTP requests being served now.",
            value=sum(snapshot["in_flight"] for snapshot in self._live.values()),
        )

        yield _with(
            GaugeMetricFamily(
                "corral_process_resident_memory_bytes",
                "Resident memory of each process.",
                labels=["process", "group"],
            ),
            {(sample.process, sample.group): sample.rss for sample in samples},
        )
        yield _with(
            CounterMetricFamily(
                "corral_process_cpu_seconds",
                "User and system CPU time of each process (from zero again when it restarts).",
                labels=["process", "group"],
            ),
            {(sample.process, sample.group): sample.cpu_seconds for sample in samples},
        )
        yield _with(
            CounterMetricFamily(
                "corral_restarts", "Processes restarted, by cause.", labels=["group", "cause"]
            ),
            self._restarts,
        )
        yield _with(
            CounterMetricFamily("corral_reloads", "Reloads, by result.", labels=["result"]),
            {(result,): count for result, count in self._reloads.items()},
        )

        yield _with(
            CounterMetricFamily(
                "corral_job_runs", "Job runs, by result.", labels=["job", "result"]
            ),
            self._job_runs,
        )
        durations = SummaryMetricFamily(
            "corral_job_duration_seconds",
            "Duration of job runs (skipped ones aside).",
            labels=["job"],
        )
        for job, duration in sorted(self._job_durations.items()):
            durations.add_metric([job], duration.count, duration.sum)
        yield durations
        yield _with(
            GaugeMetricFamily(
                "corral_job_last_success_timestamp_seconds",
                "Unix time at which the job's last successful run finished.",
                labels=["job"],
            ),
            {(job,): finished_at for job, finished_at in self._job_last_success.items()},
        )

    def request_totals(self) -> RequestTotals:
        requests = self._requests()
        errors = sum(count for (_, status), count in requests.by.items() if not 0 < status < 500)
        return RequestTotals(sum(requests.buckets), errors, tuple(requests.buckets))

    def in_flight(self, pid: int) -> int | None:
        """The requests worker `pid` was serving at its last heartbeat; None before the first."""
        snapshot = self._live.get(pid)
        return None if snapshot is None else snapshot["in_flight"]

    def _requests(self) -> _Requests:
        """Request counts of all workers, exited and live."""
        total = self._exited.copy()
        for snapshot in self._live.values():
            total.add(snapshot)
        return total


def _with(family: Family, values: Mapping[tuple[str, ...], float]) -> Family:
    """`family` with one sample per label values, in a stable order."""
    for labels, value in sorted(values.items()):
        family.add_metric(labels, value)
    return family


@dataclass(eq=False)  # the registry keeps its collectors in a dict
class _Scrape:
    """One scrape's collector, in the form prometheus_client's registry takes."""

    metrics: Metrics
    samples: list[ProcessSample]

    def collect(self) -> Iterator[Metric]:
        return self.metrics.families(self.samples)


# -- the multiprocess directory ---------------------------------------------------


def prepare_multiprocess_dir(
    environ: Mapping[str, str], owner: tuple[int, int] | None = None
) -> tuple[Path, bool]:
    """The directory for the app's prometheus_client files, and whether corral owns it.

    The user's PROMETHEUS_MULTIPROC_DIR (or the older lower-case name) wins,
    created if missing; corral does not own it and never removes it. Else a
    fresh private directory (mode 0700) named after the manager's pid, which
    corral owns and removes (and a later corral, should this one be killed:
    `remove_dead_managers_dirs`).

    prometheus_client wants the directory emptied between runs: files left
    by a previous run would add its counts to this run's. In a directory
    corral owns that is given. In the user's, corral removes only what is
    clearly stale: prometheus_client's per-process files (`counter_<pid>.db`,
    `gauge_livesum_<pid>.db`, ...) whose pid no process has now. Anything
    else stays, and so do the files of a pid that is alive (possibly reused
    by an unrelated process: then its old counts stay too, a lesser harm
    than deleting the files of a process still writing them).

    `owner` (uid, gid; -1 leaves one unchanged) is the user the app runs
    as, if not corral's: a directory corral creates is handed to it, or the
    workers could not write their files. UsageError if the user's directory
    cannot be made or read.
    """
    given = environ.get("PROMETHEUS_MULTIPROC_DIR") or environ.get("prometheus_multiproc_dir")
    if given:
        path = Path(given).absolute()
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            _remove_stale_files(path)
        except OSError as error:
            raise UsageError(
                f"PROMETHEUS_MULTIPROC_DIR={given}: cannot use it as a directory: {error.strerror}"
            ) from None
        owned = False
    else:
        path = Path(tempfile.mkdtemp(prefix=f"{_OWN_DIR_PREFIX}{os.getpid()}-"))
        created = owned = True
    if created and owner is not None:
        os.chown(path, *owner)
    return path, owned


def _has_process_files(path: Path, pid: int) -> bool:
    """Whether process `pid` wrote prometheus_client files in `path`."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(path):
            match = _PROCESS_FILE.fullmatch(entry.name)
            if match and int(match[1]) == pid:
                return True
    return False


def _remove_stale_files(path: Path) -> None:
    for entry in path.iterdir():
        match = _PROCESS_FILE.fullmatch(entry.name)
        if match and not psutil.pid_exists(int(match[1])):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def remove_dead_managers_dirs(parent: Path | None = None) -> list[Path]:
    """Remove the private directories (in the temp folder) of managers that are gone; list them.

    A manager removes its own at exit, but one killed with SIGKILL cannot.
    Each name carries its manager's pid (`corral-metrics-PID-XXXXXXXX`): a
    directory whose pid is no live corral manager (exited, or reused by
    another program) is a leftover. Only directories, never symbolic links;
    and when not root, only our own (another user's are theirs to clean).
    """
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    removed = []
    for entry in parent.glob(f"{_OWN_DIR_PREFIX}*-*"):
        pid = entry.name.removeprefix(_OWN_DIR_PREFIX).partition("-")[0]
        try:
            info = entry.lstat()
        except FileNotFoundError:
            continue
        mine = os.geteuid() in (0, info.st_uid)
        if not (pid.isdigit() and stat.S_ISDIR(info.st_mode) and mine):
            continue
        if not is_manager(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def remove_multiprocess_dir(path: Path, owned: bool) -> None:
    """Remove the directory if corral made it; a user's stays (the next run clears it)."""
    if owned:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)
