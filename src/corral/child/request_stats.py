"""A web worker's request counters, which the manager aggregates into /metrics.

The worker only counts: requests by method and status, a latency histogram,
and the requests in flight. It sends `snapshot()` to the manager with each
heartbeat; the manager sums the workers' snapshots and renders Prometheus
text (`corral.manager.metrics`). No prometheus_client here: its objects
take a lock per update and, in multiprocess mode, write an mmaped file,
while `finished` runs for every request and has to cost next to nothing.

Snapshots are cumulative since the worker started, so a lost or late
heartbeat loses nothing: the next one carries everything.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (inclusive, seconds) of the latency buckets; a last one, +Inf, is implied."""

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

    `finished` is called once per request (by the middleware, or in a batch
    with the access log); the worker sets `in_flight` from uvicorn's task
    set before each snapshot, which costs the request path nothing.
    """

    __slots__ = ("_buckets", "_by", "_sum", "in_flight")

    def __init__(self) -> None:
        self.in_flight = 0
        self._by: dict[tuple[str, int], int] = {}
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0

    def finished(self, method: str, status: int, seconds: float) -> None:
        """Count one finished request that took `seconds`.

        The common case is one dict increment, one bisect and one addition;
        a (method, status) pair seen for the first time takes the slower path,
        which is also where an unknown method is folded into OTHER_METHOD.
        A WebSocket session (status 101) is counted, and left out of the
        latency histogram: it lasts as long as the client stays.
        `bisect_left` puts a duration equal to a bound into that bound's
        bucket, as Prometheus' `le` ("less or equal") requires.
        """
        try:
            self._by[method, status] += 1
        except KeyError:
            self._first(method, status)
        if status == SWITCHING_PROTOCOLS:
            return  # a WebSocket session: its length is no response time
        self._buckets[bisect_left(BUCKETS, seconds)] += 1
        self._sum += seconds

    def _first(self, method: str, status: int) -> None:
        key = (method if method in METHODS else OTHER_METHOD, status)
        self._by[key] = self._by.get(key, 0) + 1

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
