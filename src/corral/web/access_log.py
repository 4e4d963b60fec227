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
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

FLUSH_INTERVAL = 0.1
FLUSH_SIZE = 64 * 1024


class BlockWriter:
    """Buffers lines and writes them to `fd` in writes no larger than PIPE_BUF.

    Writes of at most PIPE_BUF bytes to a pipe are atomic, so lines from
    several workers sharing one output never interleave mid-line.
    """

    def __init__(self, fd: int, prefix: str) -> None:
        self._fd = fd
        self._prefix = prefix
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, line: str) -> None:
        self._lines.append(self._prefix + line + "\n")
        self._size += len(line)
        if self._size >= FLUSH_SIZE:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines, self._size = self._lines, [], 0
        block: list[str] = []
        length = 0
        for line in lines:
            if block and length + len(line) > select.PIPE_BUF:
                self._write("".join(block))
                block, length = [], 0
            block.append(line)
            length += len(line)
        if block:
            self._write("".join(block))

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]


class AccessLog:
    """ASGI middleware: one line per HTTP request (client, method, path, status, duration)."""

    def __init__(self, app: ASGIApp, writer: BlockWriter) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.writer.add(_line(scope, status, time.perf_counter() - started))


def _line(scope: Scope, status: int, seconds: float) -> str:
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if client else "-"
    path = scope["path"]  # uvicorn's path already starts with the root_path
    if scope.get("query_string"):
        path += "?" + scope["query_string"].decode("latin-1")
    return (
        f'{who} - "{scope["method"]} {path} HTTP/{scope["http_version"]}" '
        f"{status or '-'} {seconds * 1000:.1f}ms"
    )
