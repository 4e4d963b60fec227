"""A WSGI app in a web worker: a2wsgi's adapter and a pool of `--threads` threads.

a2wsgi (`a2wsgi.WSGIMiddleware`, the adapter uvicorn's documentation points
WSGI users to) turns the WSGI app into an ASGI app: each request runs whole
in a thread of its pool (the call, the body's iteration, `close()`), and
its response goes back to uvicorn's protocol on the event loop. corral's
access log, counters, drain and recycling then work as for any ASGI app.

A request blocked in a thread does not block the event loop, so the
heartbeat alone cannot see it. `BusyThreads` notes which request each
thread runs and since when; the heartbeat carries the longest-running one,
and the manager applies `--timeout` to it as gunicorn's arbiter does to a
sync worker's request (`corral.manager.web_group`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from a2wsgi import WSGIMiddleware  # imported before the fork, so that workers share it

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class BusyThreads:
    """WSGI middleware: which request each thread is running, and since when.

    A thread's entry is removed when the server closes the response body,
    as PEP 3333 requires every server to do, so a streamed response counts
    until its last chunk.
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.running: dict[int, tuple[float, str]] = {}  # thread id -> (monotonic start, request)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        ident = threading.get_ident()
        request = f"{environ.get('REQUEST_METHOD', '-')} {environ.get('PATH_INFO', '')}"
        self.running[ident] = (time.monotonic(), request)
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self.running.pop(ident, None)
            raise
        return _Body(body, self.running, ident)

    def longest(self) -> list[Any] | None:
        """[seconds, thread id in hex, request] of the request running longest; None if idle.

        Read from the event loop while threads change the table: `dict.copy`
        is atomic under the GIL.
        """
        running = self.running.copy()
        if not running:
            return None
        ident, (since, request) = min(running.items(), key=lambda item: item[1][0])
        return [round(time.monotonic() - since, 3), f"{ident:#018x}", request]


class _Body:
    """The app's response body, which frees its thread's entry when the server closes it."""

    __slots__ = ("_body", "_ident", "_running")

    def __init__(self, body: Iterable[bytes], running: dict[int, Any], ident: int) -> None:
        self._body = body
        self._running = running
        self._ident = ident

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._running.pop(self._ident, None)


def serve_wsgi(app: WSGIApp, threads: int) -> tuple[Any, BusyThreads]:
    """The ASGI app that runs `app` in a pool of `threads` threads, and its busy table.

    Call it in the worker, after the fork: the pool's threads must not be
    started in the zygote.
    """
    busy = BusyThreads(app)
    return WSGIMiddleware(busy, workers=threads), busy
