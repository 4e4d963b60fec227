"""The HTTP protocol of the control listeners: uvicorn's h11 protocol, bounded for clients that
do not play fair.

The control API's TCP listener and the probes listener face a network (a container exposes
the probes), and answer before any token is checked, so a client must not be able to grow
the manager's memory or hold its connections: the manager supervises everything else.

- A request head larger than `MAX_HEAD` bytes is refused (400) and the connection closed:
  h11 bounds the bytes it holds while a head is incomplete; httptools, uvicorn's faster
  parser, holds a header of any size.
- A request, head and body, must arrive whole within `REQUEST_TIMEOUT` seconds of the accept
  or of the previous response; else the connection is closed (a response under way, such
  as `corral logs -f`, goes on as long as it needs).
- Bodies: the control API reads at most `corral.control.api.MAX_BODY` bytes, and uvicorn
  stops reading from the socket while the app has not taken what was read.

The control API's traffic is a few calls a second at most, so h11's speed is no concern.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD = 16 * 1024  # bytes: h11's own bound on what it holds of an incomplete head
REQUEST_TIMEOUT = 5.0  # seconds for a whole request, head and body (uvicorn keeps idle ones 5 s)


class ControlProtocol(H11Protocol):
    """uvicorn's h11 protocol, which closes a connection whose request is late."""

    request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_a_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._expect_a_request()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.request_timer is not None:
            self.request_timer.cancel()
            self.request_timer = None
        super().connection_lost(exc)

    def _expect_a_request(self) -> None:
        if self.request_timer is not None:
            self.request_timer.cancel()
        self.request_timer = self.loop.call_later(REQUEST_TIMEOUT, self._late_request)

    def _late_request(self) -> None:
        """The client has not sent a whole request (its head, or its body) in time: close."""
        self.request_timer = None
        incomplete = self.conn.their_state in (h11.IDLE, h11.SEND_BODY)
        if incomplete and not self.transport.is_closing():
            self.transport.close()
