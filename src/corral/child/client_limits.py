"""What one client may take of a worker: its request heads and the time they and bodies take.

uvicorn's httptools protocol, as it comes, hands the app a request head of
any size (a 64 MiB header field grows the worker by as much), waits forever
for a request head or body that does not come, and queues pipelined
requests without bound. A few such clients take a worker's memory, or every
place of --limit-concurrency.

`LimitedHttpToolsProtocol` measures what httptools parsed (the target and
the fields uvicorn keeps, at `on_headers_complete`) and the sizes
`data_received` is given, so that no HTTP is parsed here; past a limit it
answers in the form of uvicorn's own 400 (plain text, `Connection: close`)
and closes. The rule
throughout (and `SendWatch`'s, for responses): a client that stops sending
or reading is dropped within a bounded time; one that keeps the exchange
going (a long upload, a live WebSocket) is the app's to bound.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from corral.child.request_log import format_client
from corral.settings import WebConfig

PIPELINE_LIMIT = 32
"""Requests a connection may queue behind the one being served; past it, those are
answered and the connection is closed (httptools parses all it is fed, so what a
client pipelines cannot be left unread)."""

_LINE_AROUND_TARGET = len("  HTTP/1.1")  # the two spaces and the version of a request line
_SHORTEST_METHOD = len("GET")
_FIELD_SEPARATORS = len(": \r\n")

logger = logging.getLogger("uvicorn.error")


@dataclass(frozen=True)
class ClientLimits:
    """The bounds of `LimitedHttpToolsProtocol`; sizes in bytes (0: none), times in seconds."""

    request_line: int
    request_fields: int
    request_field_size: int
    request_head: int
    header_read_timeout: float
    body_read_timeout: float

    @functools.cached_property
    def smallest_size(self) -> int:
        """The smallest size limit set: a head no larger needs no measuring."""
        return min(
            size for size in (self.request_line, self.request_field_size, self.request_head) if size
        )

    @classmethod
    def of(cls, config: WebConfig) -> ClientLimits:
        return cls(
            request_line=config.limit_request_line,
            request_fields=config.limit_request_fields,
            request_field_size=config.limit_request_field_size,
            request_head=config.limit_request_head,
            header_read_timeout=config.header_read_timeout,
            body_read_timeout=config.body_read_timeout,
        )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded request heads, reads and pipelines.

    - The request line, each header field, their number and the whole head
      are bounded (--limit-request-*): past a limit, 414 or 431 and close.
      A complete head is measured from the fields httptools parsed, and only
      when the reads it came in were large enough for a limit to matter; an
      incomplete one (httptools keeps an unfinished field to itself) by the
      bytes read since it began, so that it never grows past its limit by
      more than a read. Trailer fields count against the head's limit.
    - A request head must be whole within --header-read-timeout of the
      accept (for the first request) or of its first read: else 408 and
      close; a connection that sends nothing is closed then, silently.
      --keep-alive runs from the accept too, as from each response.
    - A body the app waits for must keep coming (--body-read-timeout).
    - At most PIPELINE_LIMIT requests wait behind the one being served.

    A refused head that arrives behind a response still under way (pipelined)
    is not answered: the connection closes after that response.

    The callbacks run for every request: they call HttpToolsProtocol's own
    directly, as super() would cost a measurable share of a small request.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ClientLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._ignore_input = False  # refused or upgraded: nothing more is read here
        self._messages = 0  # requests begun on this connection
        self._in_head = False
        self._in_body = False
        self._fed = 0  # bytes of the read being parsed
        self._first_read = 0  # bytes of the read the current request began in
        self._head_received = 0  # bytes of the later reads that continued its head
        self._body_fed = False  # whether the read being parsed held body bytes
        self._bodiless = 0  # bytes of the reads since the last body byte: trailer fields
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0

    # The connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(
            self.limits.header_read_timeout, self._head_timed_out
        )
        if self.timeout_keep_alive > 0:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._ignore_input:
            self.flow.pause_reading()  # uvicorn resumes it after each response: the client waits
            return
        in_head, messages = self._in_head, self._messages
        if in_head:
            self._head_received += len(data)  # at most: the head may end in it
        self._fed = len(data)
        self._body_fed = False
        HttpToolsProtocol.data_received(self, data)
        if self._ignore_input:
            return
        if self._in_head:
            all_head = in_head and messages == self._messages
            if all_head and self._head_received > self.limits.request_head:
                self._refuse_unfinished_head()
                return
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(
                    self.limits.header_read_timeout, self._head_timed_out
                )
        elif self._in_body:
            if self._body_fed:
                self._bodiless = 0
            else:
                self._bodiless += len(data)
                if self._bodiless > self.limits.request_head:
                    self._refuse(431, "trailer fields larger than --limit-request-head")
                    return
            self._last_read = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(
                    self.limits.body_read_timeout, self._body_timed_out
                )

    def handle_websocket_upgrade(self) -> None:
        self._ignore_input = True  # the WebSocket protocol reads from here on
        self._cancel_read_timers()
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        self._stop_input()
        self.send_simple_response(400, msg)

    def send_simple_response(self, status: int, message: str) -> None:
        """Answer `status` with `message` as plain text, then close: uvicorn's form for its 400."""
        body = message.encode("ascii")
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()

    # Parser callbacks (a refused request's are ignored where uvicorn would act on them)

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._messages += 1
        self._in_head = True
        self._first_read = self._fed
        self._head_received = 0

    def on_headers_complete(self) -> None:
        if self._ignore_input:
            return
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        limits = self.limits
        if limits.request_fields and len(self.headers) > limits.request_fields:
            self._refuse(431, "more header fields than --limit-request-fields")
            return
        if self._first_read + self._head_received > limits.smallest_size:
            problem = self._head_problem()
            if problem is not None:
                self._refuse(*problem)
                return
        if len(self.pipeline) >= PIPELINE_LIMIT:
            self._stop_input()
            self.cycle.keep_alive = False  # those queued are answered, then the connection closes
            logger.warning(
                "%s: more than %d pipelined requests: closing after those",
                format_client(self.client),
                PIPELINE_LIMIT,
            )
            return
        self._in_body = True
        self._bodiless = 0
        HttpToolsProtocol.on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        if not self._ignore_input:
            self._body_fed = True
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._ignore_input:
            return
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        HttpToolsProtocol.on_message_complete(self)

    def _head_problem(self) -> tuple[int, str] | None:
        """The status and reason to refuse the head just parsed with, measured from its fields."""
        limits = self.limits
        line = len(self.parser.get_method()) + len(self.url) + _LINE_AROUND_TARGET
        if limits.request_line and line > limits.request_line:
            return 414, "a request line longer than --limit-request-line"
        sizes = [len(name) + len(value) + _FIELD_SEPARATORS for name, value in self.headers]
        if limits.request_field_size and max(sizes, default=0) > limits.request_field_size:
            return 431, "a header field larger than --limit-request-field_size"
        if line + sum(sizes) > limits.request_head:
            return 431, "a request head larger than --limit-request-head"
        return None

    def _refuse_unfinished_head(self) -> None:
        limit = self.limits.request_line
        if limit and len(self.url) + _SHORTEST_METHOD + _LINE_AROUND_TARGET > limit:
            self._refuse(414, "a request line longer than --limit-request-line")
        else:
            self._refuse(431, "a request head larger than --limit-request-head")

    # Refusals and timeouts

    def _stop_input(self) -> None:
        """Read nothing more from this client (what it has sent is not parsed)."""
        self._ignore_input = True
        self._cancel_read_timers()
        self.flow.pause_reading()

    def _cancel_read_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _refuse(self, status: int, reason: str) -> None:
        """Read nothing more; answer `status` and close, unless another answer must come first.

        A request refused in its body (its trailer fields, its body's pace)
        has a cycle of its own: once its app has begun a response, the
        connection just closes. A head refused behind pipelined requests
        whose responses are still under way is not answered: the connection
        closes after them.
        """
        self._stop_input()
        logger.warning("%s: %d, %s", format_client(self.client), status, reason)
        cycle = self.cycle
        if self._in_body and cycle.response_started:
            self.transport.close()
        elif not self._in_body and cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
        else:
            self.send_simple_response(status, f"{reason}\n")

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head:
            seconds = self.limits.header_read_timeout
            self._refuse(408, f"no whole request head in {seconds:g}s (--header-read-timeout)")
        elif self._messages == 0 and not self.transport.is_closing():
            self.transport.close()  # nothing came since the accept

    def _body_timed_out(self) -> None:
        self._body_timer = None
        timeout = self.limits.body_read_timeout
        now = self.loop.time()
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:
            self._last_read = now  # the app has not asked for the body yet: nothing is late
        if now - self._last_read < timeout:
            wait = timeout - (now - self._last_read)
            self._body_timer = self.loop.call_later(wait, self._body_timed_out)
        else:
            self._refuse(408, f"no request body for {timeout:g}s (--body-read-timeout)")
