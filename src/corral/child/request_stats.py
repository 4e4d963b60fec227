"""A web worker's request counters, which the manager aggregates into /metrics.

The worker only counts: requests by method and status, a latency histogram,
and the requests in flight. It sends `snapshot()` to the manager with each
heartbeat; the manager sums the workers' snapshots and renders Prometheus
text (`corral.manager.metrics`). No prometheus_client here: its objects
take a lock per update and, in multiprocess mode, write an mmaped file,
while every request is counted and has to cost next to nothing.

Snapshots are cumulative since the worker started, so a lost or late
heartbeat loses nothing: the next one carries everything.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from itertools import pairwise
from operator import itemgetter, sub
from typing import Any

BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (inclusive, seconds) of the latency buckets; a last one, +Inf, is implied."""
_BOUNDS_NS = tuple(round(bound * 1e9) for bound in BUCKETS)

Entry = tuple[str, int, int, int]
"""One request as the protocol records it for counting: method, status (0
if the app sent none), and its start and end on the perf_counter_ns clock.
With the access log on, the protocol appends what the line needs after
those four (`corral.child.request_log.LoggedEntry`)."""

_METHOD_AND_STATUS = itemgetter(0, 1)
_STARTED = itemgetter(2)
_ENDED = itemgetter(3)

METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
OTHER_METHOD = "_OTHER"
"""What any method outside METHODS is counted as (as OpenTelemetry's HTTP conventions do).

The method comes from the client, and some HTTP parsers accept any token:
counting it verbatim would let a client grow the worker's table, the
manager's and /metrics' label set without bound.
"""


SWITCHING_PROTOCOLS = 101  # the status of an accepted WebSocket session


class RequestStats:
    """Counts of the requests a worker has finished, and how many it is serving now.

    `count` takes the requests recorded since its last call (a block, see
    `corral.child.request_log`); the worker sets `in_flight` from uvicorn's
    task set before each snapshot, which costs the request path nothing.
    """

    __slots__ = ("_buckets", "_by", "_sum", "in_flight")

    def __init__(self) -> None:
        self.in_flight = 0
        self._by: dict[tuple[str, int], int] = {}
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0

    def count(self, entries: list[Entry]) -> None:
        """Count a block of finished requests.

        Each step runs over the whole block in C (a Counter of (method,
        status) pairs, the durations subtracted and sorted, one bisection per
        bucket bound), so that a request costs a small fraction of what a
        Python call per request would. A duration equal to a bound falls in
        that bound's bucket, as Prometheus' `le` ("less or equal") requires;
        durations are compared in nanoseconds. A WebSocket session (status
        101) is counted, and left out of the latency histogram: it lasts as
        long as the client stays.
        """
        by = self._by
        sessions = False
        for key, number in Counter(map(_METHOD_AND_STATUS, entries)).items():
            sessions = sessions or key[1] == SWITCHING_PROTOCOLS
            if key in by:
                by[key] += number
            else:
                self._first(key, number)
        if sessions:  # seldom: a Python loop over the block only then
            entries = [entry for entry in entries if entry[1] != SWITCHING_PROTOCOLS]
        durations = sorted(map(sub, map(_ENDED, entries), map(_STARTED, entries)))
        within = [0, *(bisect_right(durations, bound) for bound in _BOUNDS_NS), len(durations)]
        buckets = self._buckets
        for index, (below, up_to) in enumerate(pairwise(within)):
            buckets[index] += up_to - below
        self._sum += sum(durations) / 1e9

    def _first(self, key: tuple[str, int], number: int) -> None:
        method, status = key
        if method not in METHODS:
            key = (OTHER_METHOD, status)
        self._by[key] = self._by.get(key, 0) + number

    @property
    def total(self) -> int:
        """Every request counted since the worker started (a sum: call it seldom)."""
        return sum(self._by.values())

    def snapshot(self) -> dict[str, Any]:
        """Everything counted since the worker started, as JSON-able data.

        `by`: [method, status, count] triples; `buckets`: counts per bucket,
        not cumulative, one per BUCKETS bound and a last one for +Inf;
        `sum`: total seconds; `in_flight`: requests being served now.
        """
        return {
            "by": [[method, status, count] for (method, status), count in self._by.items()],
            "buckets": list(self._buckets),
            "sum": self._sum,
            "in_flight": self.in_flight,
        }
