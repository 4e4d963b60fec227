"""Access logging that does not cost the request rate.

uvicorn's access log goes through `logging` for every request, which costs a
FastAPI app up to half its rate. Here a request costs one f-string and a list
append; the lines are written by the worker itself, straight to corral's
output, in blocks at most every `FLUSH_INTERVAL` seconds, never through the
manager's loop.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

FLUSH_INTERVAL = 0.1  # at most this long between a request and its line


class BlockWriter:
    """Buffers lines and writes them to `fd` in blocks no larger than PIPE_BUF.

    Writes of at most PIPE_BUF bytes to a pipe are atomic, so lines from
    several workers sharing one output never interleave mid-line. A request
    costs one list append; prefixes and newlines are joined per block.
    """

    def __init__(self, fd: int, prefix: str) -> None:
        self._fd = fd
        self._prefix = prefix
        self._separator = "\n" + prefix
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, line: str) -> None:
        self._lines.append(line)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        self._timer = None
        lines, self._lines = self._lines, []
        if not lines:
            return
        text = (self._prefix + self._separator.join(lines) + "\n").encode("utf-8", "replace")
        while text:
            if len(text) <= select.PIPE_BUF:
                block, text = text, b""
            else:
                cut = text.rfind(b"\n", 0, select.PIPE_BUF) + 1 or select.PIPE_BUF
                block, text = text[:cut], text[cut:]
            while block:
                block = block[os.write(self._fd, block) :]


class _NotingStatus:
    """Wraps `send` to note the response status; returns send's own awaitable (no extra frame)."""

    __slots__ = ("send", "status")

    def __init__(self, send: Callable[[Message], Awaitable[None]]) -> None:
        self.send = send
        self.status = 0

    def __call__(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        return self.send(message)


class AccessLog:
    """ASGI middleware: one line per HTTP request (client, method, path, status, duration)."""

    def __init__(self, app: ASGIApp, writer: BlockWriter) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        noting = _NotingStatus(send)
        try:
            await self.app(scope, receive, noting)
        finally:
            client = scope.get("client")
            who = f"{client[0]}:{client[1]}" if client else "-"
            query = scope["query_string"]
            path = f"{scope['path']}?{query.decode('latin-1')}" if query else scope["path"]
            took = (perf_counter() - started) * 1000
            self.writer.add(
                f'{who} - "{scope["method"]} {path} HTTP/{scope["http_version"]}" '
                f"{noting.status or '-'} {took:.1f}ms"
            )
