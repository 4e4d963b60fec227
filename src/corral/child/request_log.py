"""Every HTTP request, recorded for the metrics and the access log, at next to no cost.

The request's own coroutine only appends a tuple of raw values to a list.
At most every `FLUSH_INTERVAL` seconds (and before each heartbeat) the
worker goes over the block in one tight loop: it counts the requests for
/metrics (`RequestStats`) and, with the access log on, formats their lines,
prefixes and all, and writes them in blocks to the access log's pipe, which
the manager forwards to its output as they come, with one write per read
(`corral.manager.access_log`). uvicorn's access log goes through `logging`
for every request instead, which costs a FastAPI app up to half its rate.

Formatting a block in one loop, away from the request's coroutine, is what
makes it cheap: a hello-world request costs 1.0-1.7 us less CPU than with a
line formatted as each request ends (`benchmarks/access_log_cost.py`). With
the access log off, `CountRequests` counts each request as it ends instead:
with no line to write there is nothing to batch.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from time import perf_counter_ns
from typing import Any
from urllib.parse import quote

from corral.child.request_stats import RequestStats

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Send], Awaitable[None]]

Entry = tuple[tuple[str, int] | None, str, str, bytes, str, int, int, int]
"""One request as it is recorded: client, method, path, query string, HTTP
version, status (0 if the app sent none), and its start and end on the
perf_counter_ns clock."""

FLUSH_INTERVAL = 0.1  # at most this long between a request and its line

# "0.0ms" ... "99.9ms": looking a duration up costs a third of formatting it.
_DURATIONS = tuple(f"{tenths // 10}.{tenths % 10}ms" for tenths in range(1000))


def format_client(client: tuple[str, int] | None) -> str:
    """`127.0.0.1:50312`, `[2001:db8::7]:443`; without the port when unknown (0); `-` for none.

    An IPv6 address goes in brackets, so that its last group and the port can be told apart.
    """
    if not client:
        return "-"
    host, port = client[0], client[1]
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


def format_lines(entries: Iterable[Entry]) -> Iterator[str]:
    """Access lines such as `127.0.0.1:50312 - "GET /a?b=1 HTTP/1.1" 200 0.4ms`."""
    durations = _DURATIONS
    for client, method, path, query, version, status, started, ended in entries:
        who = format_client(client)
        if not path.isprintable():  # a %0A the client sent, decoded: one request, one line
            path = quote(path, safe="/:@!$&'()*+,;=-._~")
        target = f"{path}?{query.decode('latin-1')}" if query else path
        tenths = (ended - started + 50_000) // 100_000  # of a millisecond, rounded
        took = durations[tenths] if tenths < 1000 else f"{tenths // 10}.{tenths % 10}ms"
        yield f'{who} - "{method} {target} HTTP/{version}" {status or "-"} {took}'


def format_json_lines(entries: list[Entry], process: str, pid: int) -> Iterator[str]:
    """The same lines for `--log-format json`: one object each, with the request's fields."""
    from corral.logformat import iso_time

    wall_minus_perf = time.time() - perf_counter_ns() / 1e9
    for entry, line in zip(entries, format_lines(entries), strict=True):
        client, method, path, query, version, status, started, ended = entry
        record = {
            "time": iso_time(wall_minus_perf + ended / 1e9),
            "process": process,
            "pid": pid,
            "level": "info",
            "message": line,
            "client": format_client(client) if client else None,
            "method": method,
            "path": path,
            "query": query.decode("latin-1"),
            "http_version": version,
            "status": status or None,
            "duration_ms": round((ended - started) / 1e6, 3),
        }
        yield json.dumps(record, ensure_ascii=False)


class BlockWriter:
    """Writes access lines to `fd` (the access log's pipe) in blocks no larger than PIPE_BUF.

    Writes of at most PIPE_BUF bytes to a pipe are atomic, so lines from
    several workers sharing the pipe never interleave mid-line.
    """

    def __init__(self, fd: int, prefix: str, json_for: tuple[str, int] | None = None) -> None:
        self._fd = fd
        self._prefix = prefix
        self._separator = "\n" + prefix
        self._json_for = json_for  # (process, pid) for JSON lines; None for text lines

    def write(self, entries: list[Entry]) -> None:
        if self._json_for is not None:
            text = "\n".join(format_json_lines(entries, *self._json_for)) + "\n"
        else:
            text = self._prefix + self._separator.join(format_lines(entries)) + "\n"
        self._write(text.encode("utf-8", "replace"))

    def _write(self, data: bytes) -> None:
        """Write `data` in blocks of at most PIPE_BUF bytes, each ending at a line's end.

        A memoryview hands each block to os.write without copying the rest of
        the data, as slicing the bytes would for every block.
        """
        view = memoryview(data)
        start, end = 0, len(data)
        while start < end:
            stop = min(start + select.PIPE_BUF, end)
            if stop < end:  # end the block at a line's end (a longer line is cut)
                stop = data.rfind(b"\n", start, stop) + 1 or stop
            start += os.write(self._fd, view[start:stop])


class RequestLog:
    """The requests recorded since the last flush; a flush counts them and logs them.

    `RecordRequests` appends to `entries` itself (a method call per request
    would cost more than the append) and calls `schedule` when `entries` was
    empty.
    """

    def __init__(self, stats: RequestStats, writer: BlockWriter | None) -> None:
        self.stats = stats
        self.writer = writer
        self.counting = False  # whether a middleware counts into `stats` (see `instrument`)
        self.entries: list[Entry] = []
        self._timer: asyncio.TimerHandle | None = None

    def schedule(self) -> None:
        """Flush within FLUSH_INTERVAL."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        entries = self.entries
        if not entries:
            return
        finished = self.stats.finished
        for entry in entries:
            finished(entry[1], entry[5], (entry[7] - entry[6]) / 1e9)
        if self.writer is not None:
            self.writer.write(entries)
        entries.clear()


class _Noter:
    """Stands in for `send` to note the status the client got.

    `send` returns the real send's own awaitable: it adds a call per message
    but no coroutine frame. Measured, a closure or a `__call__` costs the same.
    """

    __slots__ = ("_send", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0

    def failed(self) -> None:
        """The app raised: with no response started, uvicorn answers 500 (that is the status)."""
        if not self.status:
            self.status = 500


class _StatusNoter(_Noter):
    """An HTTP request's: the status of its response."""

    __slots__ = ()

    def send(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        return self._send(message)


class _SessionNoter(_Noter):
    """A WebSocket session's: 101 once accepted, 403 if closed before, or its denial's status."""

    __slots__ = ()

    def send(self, message: Message) -> Awaitable[None]:
        if not self.status:
            kind = message["type"]
            if kind == "websocket.accept":
                self.status = 101
            elif kind == "websocket.close":
                self.status = 403
            elif kind == "websocket.http.response.start":
                self.status = message["status"]
        return self._send(message)


def _noter(scope: Scope, send: Send) -> _Noter | None:
    """The noter for a connection the app serves (a request, a session); None for lifespan."""
    kind = scope["type"]
    if kind == "http":
        return _StatusNoter(send)
    if kind == "websocket":
        return _SessionNoter(send)
    return None


class RecordRequests:
    """ASGI middleware: records each request (client, method, path, status, duration).

    Every connection the app serves is one: an HTTP request (streamed or
    not) and a WebSocket session, recorded as the `GET` of its handshake,
    with status 101 once accepted and the session's length as its duration.
    The request's own coroutine only records the raw values (reading the
    scope after the app, which may have rewritten it); `RequestLog` counts
    and formats them later. It keeps no reference to the scope: holding
    thousands of scopes until the next flush would cost the garbage
    collector far more.
    """

    def __init__(self, app: ASGIApp, log: RequestLog) -> None:
        self.app = app
        self.log = log
        self._entries = log.entries

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        noter = _noter(scope, send)
        if noter is None:
            await self.app(scope, receive, send)
            return
        started = perf_counter_ns()
        try:
            await self.app(scope, receive, noter.send)
        except BaseException:
            noter.failed()
            raise
        finally:
            entries = self._entries
            if not entries:
                self.log.schedule()
            entries.append(
                (
                    scope.get("client"),
                    scope.get("method", "GET"),
                    scope["path"],
                    scope["query_string"],
                    scope["http_version"],
                    noter.status,
                    started,
                    perf_counter_ns(),
                )
            )


class CountRequests:
    """ASGI middleware for when the access log is off: counts each request at once (as above).

    Without lines to write there is nothing to batch, and holding a block of
    entries for FLUSH_INTERVAL only makes them survive into the garbage
    collector's older generations. Its body repeats RecordRequests' on
    purpose: a shared base calling a hook would cost a call per request.
    """

    def __init__(self, app: ASGIApp, stats: RequestStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        noter = _noter(scope, send)
        if noter is None:
            await self.app(scope, receive, send)
            return
        started = perf_counter_ns()
        try:
            await self.app(scope, receive, noter.send)
        except BaseException:
            noter.failed()
            raise
        finally:
            seconds = (perf_counter_ns() - started) / 1e9
            self.stats.finished(scope.get("method", "GET"), noter.status, seconds)


def instrument(app: ASGIApp, log: RequestLog, count: bool) -> ASGIApp:
    """`app`, recording its requests for the access log (and counting them), or only counting
    them if `count` (for /metrics, for --max-requests), or as it is if nothing needs them."""
    if log.writer is not None:
        app = RecordRequests(app, log)  # counts too: in its blocks, at no extra cost
    elif count:
        app = CountRequests(app, log.stats)
    else:
        return app
    log.counting = True
    return app
