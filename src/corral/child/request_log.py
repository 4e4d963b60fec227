"""Every HTTP request and WebSocket session, recorded for the metrics and the access log,
at next to no cost.

The protocol that serves a request (`corral.child.http_protocols`) appends a
tuple of raw values to a list when its response is complete: it already
holds the request's scope, and notes the status and the times. At most every
`FLUSH_INTERVAL` seconds (and before each heartbeat) the worker goes over
the block at once: it counts the requests for /metrics (`RequestStats.count`,
in C loops) and, with the access log on, formats their lines, prefixes and
all, and writes them in blocks to the access log's pipe, which the manager
forwards to its output as they come, with one write per read
(`corral.manager.output.Output.access_pipe`). uvicorn's access log goes through `logging`
for every request instead, which costs a FastAPI app up to half its rate.

Handling a block at once, away from the request, is what makes it cheap:
an ASGI middleware around the app that counted each request as it ended
cost a hello-world worker 4.1 us (15%) more CPU per request than none
(`benchmarks/cpu_per_request.py`); recorded by the protocol and counted in
blocks, 1.9-2.0 us (6-7%). WebSocket sessions, few and long, are recorded
by a middleware on the WebSocket protocol's app only (`RecordSessions`).
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

from corral.child.request_stats import Entry, RequestStats

LoggedEntry = tuple[str, int, int, int, tuple[str, int] | None, str, bytes, str]
"""A request recorded for the access log: the `Entry` counted for /metrics
(method, status, start, end), then client, path, query string and HTTP version."""

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Any, Send], Awaitable[None]]

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


def format_lines(entries: Iterable[LoggedEntry]) -> Iterator[str]:
    """Access lines such as `127.0.0.1:50312 - "GET /a?b=1 HTTP/1.1" 200 0.4ms`."""
    durations = _DURATIONS
    for method, status, started, ended, client, path, query, version in entries:
        who = format_client(client)
        if not path.isprintable():  # a %0A the client sent, decoded: one request, one line
            path = quote(path, safe="/:@!$&'()*+,;=-._~")
        target = f"{path}?{query.decode('latin-1')}" if query else path
        tenths = (ended - started + 50_000) // 100_000  # of a millisecond, rounded
        took = durations[tenths] if tenths < 1000 else f"{tenths // 10}.{tenths % 10}ms"
        yield f'{who} - "{method} {target} HTTP/{version}" {status or "-"} {took}'


def format_json_lines(entries: list[LoggedEntry], process: str, pid: int) -> Iterator[str]:
    """The same lines for `--log-format json`: one object each, with the request's fields."""
    from corral.logformat import iso_time

    wall_minus_perf = time.time() - perf_counter_ns() / 1e9
    for entry, line in zip(entries, format_lines(entries), strict=True):
        method, status, started, ended, client, path, query, version = entry
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

    def write(self, entries: list[LoggedEntry]) -> None:
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

    The protocol appends to `entries` itself (a method call per request
    would cost more than the append) and calls `schedule` when `entries` was
    empty.
    """

    def __init__(self, stats: RequestStats, writer: BlockWriter | None) -> None:
        self.stats = stats
        self.writer = writer
        self.entries: list[Entry] = []  # LoggedEntry when there is a writer
        self.counting = False  # whether the protocols record into it (`RequestLog.served`)
        self._timer: asyncio.TimerHandle | None = None

    def record(
        self, scope: MutableMapping[str, Any], method: str, status: int, started: int
    ) -> None:
        """Append one request that ended now: what /metrics counts (`Entry`), and with the
        access log on what its line needs after that (`LoggedEntry`), from its `scope`.

        (The httptools protocol appends its entries itself: a call less per request.)
        """
        entries = self.entries
        if not entries:
            self.schedule()
        ended = perf_counter_ns()
        if self.writer is None:
            entries.append((method, status, started, ended))
        else:
            where = (scope["client"], scope["path"], scope["query_string"])
            entries.append((method, status, started, ended, *where, scope["http_version"]))  # type: ignore[arg-type]  # LoggedEntry

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
        self.stats.count(entries)
        if self.writer is not None:
            self.writer.write(entries)  # type: ignore[arg-type]  # LoggedEntry, with a writer
        entries.clear()


class RecordSessions:
    """ASGI middleware of the WebSocket protocol: records each session as a request.

    A session is the `GET` of its handshake, with status 101 once accepted
    (403 if closed before, or its denial's status) and the session's length
    as its duration, so the access log, /metrics and --max-requests count
    it. HTTP requests are recorded by their protocol
    (`corral.child.http_protocols`); only the WebSocket protocol's app is
    wrapped (`http_protocols.ws_protocol`), so no HTTP request pays for this.
    """

    def __init__(self, app: ASGIApp, log: RequestLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Send) -> None:
        status = 0

        def noting(message: Message) -> Awaitable[None]:
            nonlocal status
            if not status:
                kind = message["type"]
                if kind == "websocket.accept":
                    status = 101
                elif kind == "websocket.close":
                    status = 403
                elif kind == "websocket.http.response.start":
                    status = message["status"]
            return send(message)

        started = perf_counter_ns()
        try:
            await self.app(scope, receive, noting)
        except BaseException:
            status = status or 500  # uvicorn answers a handshake the app failed with a 500
            raise
        finally:
            self.log.record(scope, "GET", status, started)  # the handshake's method
