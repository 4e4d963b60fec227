"""The app's prometheus_client files of a process that has exited, folded into the manager's.

In multiprocess mode prometheus_client writes one file per process and kind of metric
(`counter_<pid>.db`, `histogram_<pid>.db`, `gauge_max_<pid>.db`...), and its collector
reads every file at each scrape. The files of a process that has exited stay, since its
counts must not be lost: with workers recycled (--max-requests) and a job run every second,
the directory would grow without bound, and every scrape would take longer.

So when a process exits, its values are added into the file of the same kind that bears
the manager's pid, which no metric of the manager's writes to (it never creates
prometheus_client metrics, see `corral.manager.metrics`), and its files are removed. Each
kind folds its own way: counters, histograms, summaries and `sum` gauges add up, `min` and
`max` gauges keep the least and the greatest value, `mostrecent` gauges the latest.

What is not folded: the `live*` gauges of a dead process, which prometheus_client's
`mark_process_dead` removes (call it first), and gauges in mode `all`, which keep one series
per process, labelled with its pid, dead or alive: prometheus_client's definition of that
mode. Their files stay; a gauge set by processes that come and go wants another mode.

The scrape (`AppMetrics`) reads the directory as prometheus_client's MultiProcessCollector
does, but skips a file still empty: prometheus_client creates a process's file, then sizes
it, and a scrape in between would fail on it. The manager folds on its event loop, which
also serves the scrapes, so no scrape of its own sees a half-folded directory. A reader in
another process (an app serving its own /metrics from the same directory) can, for the
instant between the new file's rename and the old file's removal, count the dead process
twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

Reading = tuple[float, float]  # a value and its timestamp (Unix time; 0 when unset)


def _add(kept: Reading, new: Reading) -> Reading:
    return kept[0] + new[0], max(kept[1], new[1])


def _least(kept: Reading, new: Reading) -> Reading:
    return min(kept, new, key=lambda reading: reading[0])


def _greatest(kept: Reading, new: Reading) -> Reading:
    return max(kept, new, key=lambda reading: reading[0])


def _latest(kept: Reading, new: Reading) -> Reading:
    return max(kept, new, key=lambda reading: reading[1])


FOLDS: dict[str, Callable[[Reading, Reading], Reading]] = {
    "counter": _add,
    "histogram": _add,  # the files hold each bucket's own count, not the cumulative one
    "summary": _add,
    "gauge_sum": _add,
    "gauge_min": _least,
    "gauge_max": _greatest,
    "gauge_mostrecent": _latest,
}


def fold_into(directory: Path, dead: int, keeper: int) -> None:
    """Add the values of process `dead`'s files into process `keeper`'s, then remove them.

    `dead` must have exited: a process still writing would lose what it writes after.
    OSError if a file cannot be read or written.
    """
    from prometheus_client.mmap_dict import MmapedDict

    for kind, fold in FOLDS.items():
        source = directory / f"{kind}_{dead}.db"
        if not source.exists():
            continue
        target = directory / f"{kind}_{keeper}.db"
        readings: dict[str, Reading] = {}
        for path in (target, source):
            if not path.exists():
                continue
            values = MmapedDict(str(path), read_mode=True)
            try:
                for key, value, timestamp in values.read_all_values():
                    reading = (value, timestamp)
                    readings[key] = fold(readings[key], reading) if key in readings else reading
            finally:
                values.close()
        staging = target.with_name(f"{target.name}.new")  # not *.db: no scrape reads it
        staging.unlink(missing_ok=True)
        merged = MmapedDict(str(staging))
        try:
            for key, (value, timestamp) in readings.items():
                merged.write_value(key, value, timestamp)
        finally:
            merged.close()
        os.replace(staging, target)
        source.unlink()


class AppMetrics:
    """The app's metrics, merged from the directory's files: a collector for a registry."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = []
        for path in self.directory.glob("*.db"):
            try:
                if path.stat().st_size > 0:  # an empty one is being created: its next scrape
                    files.append(str(path))
            except FileNotFoundError:  # a live gauge's, removed as its process exited
                continue
        return MultiProcessCollector.merge(files, accumulate=True)
