"""Dropping a client that takes none of the output waiting for it (--send-timeout).

uvicorn's senders wait while a connection's output is above the transport's
high-water mark, and a closing transport waits until its output has left:
a client that never reads would hold its connection, and its place in
--limit-concurrency, for good; a WebSocket's close waits the same way.

`SendWatch` sweeps the worker's open connections (HTTP and WebSocket alike)
a few times per --send-timeout and notes the output each one has waiting,
in the worker's buffer and in the kernel's (a client reading slowly shows
its progress there first). A connection whose output has not shrunk for
--send-timeout is aborted. Requests pay nothing for it: one sweep costs a
call per open connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

from corral import posix
from corral.child.request_log import format_client
from corral.words import counted

SWEEPS_PER_TIMEOUT = 4
LONGEST_SWEEP_INTERVAL = 1.0  # seconds

logger = logging.getLogger("uvicorn.error")


class SendWatch:
    """Aborts the connections whose waiting output has not shrunk in `timeout` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.interval = min(LONGEST_SWEEP_INTERVAL, timeout / SWEEPS_PER_TIMEOUT)
        self.connections: Collection[Any] = ()
        self._since: dict[Any, tuple[int, float]] = {}  # protocol -> (output waiting, since when)

    def start(self, connections: Collection[Any]) -> None:
        """Sweep `connections` (uvicorn's protocols, each with its .transport) from now on."""
        self.connections = connections
        asyncio.get_running_loop().call_later(self.interval, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        since: dict[Any, tuple[int, float]] = {}
        for protocol in list(self.connections):
            transport = getattr(protocol, "transport", None)
            if transport is None or not transport.get_write_buffer_size():
                continue
            waiting = transport.get_write_buffer_size() + _in_kernel(transport)
            before = self._since.get(protocol)
            if before is None or waiting < before[0]:
                since[protocol] = (waiting, now)  # new, or the client took some: a fresh start
            elif now - before[1] < self.timeout:
                since[protocol] = before
            else:
                client = format_client(transport.get_extra_info("peername") or None)
                logger.warning(
                    "%s took none of %s of output in %gs (--send-timeout): dropped",
                    client,
                    counted(waiting, "byte"),
                    self.timeout,
                )
                transport.abort()
        self._since = since
        loop.call_later(self.interval, self._sweep)


def _in_kernel(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    return posix.unsent_bytes(sock.fileno()) if sock is not None else 0
