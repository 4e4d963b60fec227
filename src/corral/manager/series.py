"""What the dashboard charts: the web's request rate, latency and errors over the last minutes,
and each process's CPU and memory, sampled every SAMPLE_INTERVAL seconds on the manager's loop.

Bounded, in memory, gone when corral stops (Prometheus keeps history; this
is the page an operator watches during a deploy). The web series keeps the
cumulative totals at each sample (`Metrics.request_totals`, which the
workers' heartbeats feed) for KEPT seconds, and derives each point from two
samples RATE_WINDOW seconds apart: workers report once a second, so a
narrower window would jitter by whole heartbeats. Latency quantiles come
from the latency histogram's buckets, interpolated within a bucket as
Prometheus' histogram_quantile does.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import psutil

from corral.child.request_stats import BUCKETS
from corral.manager.metrics import Metrics, RequestTotals

SAMPLE_INTERVAL = 2.0  # seconds
KEPT = 20 * 60.0  # seconds of web history: the page shows the last 15 minutes
RATE_WINDOW = 10.0  # seconds each point's rate, errors and quantiles are measured over
SPARK_POINTS = 60  # samples of each process's CPU and memory: 2 minutes
QUANTILES = {"p50": 0.5, "p99": 0.99}


def quantile(q: float, buckets: tuple[int, ...] | list[int]) -> float | None:
    """The `q` quantile (seconds) of requests counted per bucket (BUCKETS, then +Inf).

    None when there are none; the highest bound when it falls in +Inf.
    """
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for index, count in enumerate(buckets):
        if count and below + count >= rank:
            if index == len(BUCKETS):
                return BUCKETS[-1]
            lower = BUCKETS[index - 1] if index else 0.0
            return lower + (BUCKETS[index] - lower) * (rank - below) / count
        below += count
    return BUCKETS[-1]


class RequestSeries:
    """The web's totals every SAMPLE_INTERVAL for KEPT seconds, and the points drawn from them."""

    def __init__(
        self, kept: float = KEPT, interval: float = SAMPLE_INTERVAL, window: float = RATE_WINDOW
    ) -> None:
        self.interval = interval
        self.window = window
        self._lag = max(round(window / interval), 1)  # samples between a point's two ends
        self._samples: deque[tuple[float, RequestTotals]] = deque(
            maxlen=round(kept / interval) + self._lag
        )

    def add(self, when: float, totals: RequestTotals) -> None:
        """The totals at `when` (a Unix time)."""
        self._samples.append((when, totals))

    def points(self) -> dict[str, list[Any]]:
        """Columns: `t` (Unix time), `rate` (requests/s), `p50` and `p99` (ms, None without
        requests), `errors` (5xx or unanswered requests/s)."""
        samples = list(self._samples)
        columns: dict[str, list[Any]] = {"t": [], "rate": [], "p50": [], "p99": [], "errors": []}
        # Until the window is full of samples (the first RATE_WINDOW seconds), the first
        # points are measured over what there is.
        full = len(samples) == self._samples.maxlen
        for index in range(self._lag if full else 1, len(samples)):
            (start, first), (end, last) = samples[max(index - self._lag, 0)], samples[index]
            elapsed = end - start
            if elapsed <= 0:
                continue
            buckets = [
                after - before for before, after in zip(first.buckets, last.buckets, strict=True)
            ]
            columns["t"].append(round(end, 3))
            columns["rate"].append(round((last.count - first.count) / elapsed, 2))
            columns["errors"].append(round((last.errors - first.errors) / elapsed, 3))
            for name, q in QUANTILES.items():
                seconds = quantile(q, buckets)
                columns[name].append(None if seconds is None else round(seconds * 1000, 2))
        return columns


class ProcessSeries:
    """Each process's CPU (% of one core) and RSS (bytes), the last SPARK_POINTS samples, by name.

    By name, not pid: web.2's line goes on across its restarts.
    """

    def __init__(self, points: int = SPARK_POINTS) -> None:
        self._points = points
        self._handles: dict[int, psutil.Process] = {}
        self._cpu: dict[int, tuple[float, float]] = {}  # pid -> (monotonic, CPU seconds) last seen
        self.series: dict[str, deque[tuple[float | None, int]]] = {}
        self.latest: dict[str, tuple[int, float | None, int]] = {}  # name -> pid, CPU %, RSS

    def sample(self, processes: list[tuple[str, int]]) -> None:
        """Sample each (name, pid); forget the pids and names no longer listed."""
        now = time.monotonic()
        live = dict(processes)
        pids = set(live.values())
        for name, pid in processes:
            measured = self._measure(pid, now)
            if measured is None:
                continue
            self.series.setdefault(name, deque(maxlen=self._points)).append(measured)
            self.latest[name] = (pid, *measured)
        for pid in [pid for pid in self._handles if pid not in pids]:
            del self._handles[pid]
            self._cpu.pop(pid, None)
        for name in [name for name in self.series if name not in live]:
            del self.series[name]
            self.latest.pop(name, None)

    def _measure(self, pid: int, now: float) -> tuple[float | None, int] | None:
        """CPU % since this pid's last sample (None the first time), and RSS."""
        try:
            process = self._handles.get(pid) or self._handles.setdefault(pid, psutil.Process(pid))
            with process.oneshot():
                times = process.cpu_times()
                rss = process.memory_info().rss
        except psutil.Error:
            self._handles.pop(pid, None)
            return None
        used = times.user + times.system
        before = self._cpu.get(pid)
        self._cpu[pid] = (now, used)
        cpu = None
        if before is not None and now > before[0]:
            cpu = round(100 * (used - before[1]) / (now - before[0]), 1)
        return cpu, rss


class Sampler:
    """Samples the metrics and the processes every SAMPLE_INTERVAL seconds, until closed."""

    def __init__(
        self,
        metrics: Metrics,
        processes: Callable[[], list[tuple[str, int]]],
        interval: float = SAMPLE_INTERVAL,
    ) -> None:
        """`processes` lists the (name, pid) of every live process to sample."""
        self.metrics = metrics
        self.processes = processes
        self.interval = interval
        self.requests = RequestSeries(interval=interval)
        self.resources = ProcessSeries()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def sample(self) -> None:
        self.requests.add(time.time(), self.metrics.request_totals())
        self.resources.sample(self.processes())

    def close(self) -> None:
        self._task.cancel()
