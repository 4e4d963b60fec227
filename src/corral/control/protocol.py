"""The HTTP protocol of the control listeners: uvicorn's h11 protocol, bounded for clients that
do not play fair.

The control API's TCP listener and the probes listener face a network (a container exposes
the probes), and answer before any token is checked, so a client must not be able to grow
the manager's memory or hold its connections: the manager supervises everything else.

- A request head larger than `MAX_HEAD` bytes is refused (400) and the connection closed:
  h11 bounds the bytes it holds while a head is incomplete; httptools, uvicorn's faster
  parser, holds a header of any size.
- A request head must arrive whole within `HEAD_TIMEOUT` seconds of the accept or of the
  previous response; else the connection is closed.
- Bodies: the control API reads at most `corral.control.api.MAX_BODY` bytes, and uvicorn
  stops reading from the socket while the app has not taken what was read.

The control API's traffic is a few calls a second at most, so h11's speed is no concern.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD = 16 * 1024  # bytes: h11's own bound on what it holds of an incomplete head
HEAD_TIMEOUT = 10.0  # seconds


class ControlProtocol(H11Protocol):
    """uvicorn's h11 protocol, which closes a connection whose request head is late."""

    head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_a_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._expect_a_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        super().connection_lost(exc)

    def _expect_a_head(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        self.head_timer = self.loop.call_later(HEAD_TIMEOUT, self._late_head)

    def _late_head(self) -> None:
        """No request under way (none has a whole head yet): close."""
        self.head_timer = None
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()
