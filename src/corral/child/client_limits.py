"""What one client may take of a worker: request heads, reads and writes, each bounded.

uvicorn's httptools protocol, as it comes, hands the app a request head of
any size (a 64 MiB header field grows the worker by as much), waits forever
for a request head or body that does not come and for a client that reads
none of its response, and queues pipelined requests without bound. A few
such clients take a worker's memory, or every place of --limit-concurrency.

`LimitedHttpToolsProtocol` counts in httptools' own callbacks (`on_url`,
`on_header`, `on_headers_complete`) and in the sizes `data_received` is
given, so that no HTTP is parsed here; past a limit it answers in the form
of uvicorn's own 400 (plain text, `Connection: close`) and closes.
`SendTimeout` drops a client that reads nothing of what waits for it, for
HTTP and WebSocket connections alike. The rule throughout: a client that
stops sending or reading is dropped within a bounded time; one that keeps
the exchange going (a long upload, a live WebSocket) is the app's to bound.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from corral import posix
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
    send_timeout: float

    @classmethod
    def of(cls, config: WebConfig) -> ClientLimits:
        return cls(
            request_line=config.limit_request_line,
            request_fields=config.limit_request_fields,
            request_field_size=config.limit_request_field_size,
            request_head=config.limit_request_head,
            header_read_timeout=config.header_read_timeout,
            body_read_timeout=config.body_read_timeout,
            send_timeout=config.send_timeout,
        )


class SendTimeout(asyncio.Protocol):
    """Aborts a connection whose client reads nothing of its waiting output for `send_timeout`.

    The transport's high-water mark is set to (next to) 0, so `pause_writing` comes as
    soon as output waits in the worker (the kernel's buffer for the socket is
    full) and `resume_writing` once it has all left. While paused, nothing is
    written (uvicorn's senders wait for the resume), so output, counted in
    the worker and in the kernel, that has not shrunk in `send_timeout`
    means the client took nothing in that time. A closing transport waits
    for its output to leave: without this, a client that never reads would
    hold its connection for good.
    """

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    send_timeout: float
    _send_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # 1, not 0: uvloop's TLS transport pauses at size >= high: at 0, for good.
        transport.set_write_buffer_limits(high=1, low=0)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._watch_output(self._waiting_output())

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _watch_output(self, waiting: int) -> None:
        self._send_timer = self.loop.call_later(self.send_timeout, self._check_output, waiting)

    def _waiting_output(self) -> int:
        """Bytes of output the client has not taken: in the transport, and in the kernel."""
        sock = self.transport.get_extra_info("socket")
        in_kernel = posix.unsent_bytes(sock.fileno()) if sock is not None else 0
        return self.transport.get_write_buffer_size() + in_kernel

    def _check_output(self, waiting_before: int) -> None:
        self._send_timer = None
        if not self.transport.get_write_buffer_size():
            return  # all left the worker (resume_writing may be on its way)
        waiting = self._waiting_output()
        if waiting < waiting_before:
            self._watch_output(waiting)  # the client reads, however slowly
        else:
            client = format_client(self.transport.get_extra_info("peername") or None)
            logger.warning(
                "%s read none of %d bytes of response in %gs (--send-timeout): connection dropped",
                client,
                waiting,
                self.send_timeout,
            )
            self.transport.abort()


class LimitedWebSocketProtocol(SendTimeout, WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (its choice with websockets installed), with a send timeout.

    Its pings (--ws-ping-interval, --ws-ping-timeout) close a session whose
    client has gone quiet; the send timeout ends the close itself when that
    client reads nothing.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        send_timeout: float,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.send_timeout = send_timeout


class LimitedHttpToolsProtocol(SendTimeout, HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded request heads, reads, writes and pipelines.

    - The request line, each header field, their number and the whole head
      are bounded (--limit-request-*): past a limit, 414 or 431 and close.
    - A request head must be whole within --header-read-timeout of the
      accept (for the first request) or of its first read: else 408 and
      close; a connection that sends nothing is closed then, silently.
      --keep-alive runs from the accept too, as from each response.
    - A body the app waits for must keep coming (--body-read-timeout).
    - At most PIPELINE_LIMIT requests wait behind the one being served.

    A refused head that arrives behind a response still under way (pipelined)
    is not answered: the connection closes after that response.
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
        self.send_timeout = limits.send_timeout
        self._ignore_input = False  # refused or upgraded: nothing more is read here
        self._messages = 0  # requests begun on this connection
        self._in_head = False
        self._in_body = False
        self._head_seen = 0  # bytes of the head's fields the parser has passed on
        self._head_received = 0  # bytes read while the head was incomplete, after its first read
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0

    # The connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
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
        super().data_received(data)
        if self._ignore_input:
            return
        if self._in_head:
            if in_head and messages == self._messages:
                # httptools keeps an unfinished header field to itself: count what it was fed.
                self._head_received += len(data)
                if self._head_received > self.limits.request_head:
                    self._refuse(431, "the request head is larger than --limit-request-head")
                    return
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(
                    self.limits.header_read_timeout, self._head_timed_out
                )
        elif self._in_body:
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

    # Parser callbacks

    def on_message_begin(self) -> None:
        if self._ignore_input:
            return
        super().on_message_begin()
        self._messages += 1
        self._in_head = True
        self._head_seen = self._head_received = 0

    def on_url(self, url: bytes) -> None:
        if self._ignore_input:
            return
        super().on_url(url)
        limit = self.limits.request_line
        if limit and len(self.url) + _SHORTEST_METHOD + _LINE_AROUND_TARGET > limit:
            line = len(self.parser.get_method()) + len(self.url) + _LINE_AROUND_TARGET
            if line > limit:
                self._refuse(414, "the request line is longer than --limit-request-line")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._ignore_input:
            return
        super().on_header(name, value)
        size = len(name) + len(value) + _FIELD_SEPARATORS
        self._head_seen += size
        limits = self.limits
        if limits.request_fields and len(self.headers) > limits.request_fields:
            self._refuse(431, "the request has more header fields than --limit-request-fields")
        elif limits.request_field_size and size > limits.request_field_size:
            self._refuse(431, "a header field is larger than --limit-request-field_size")
        elif self._head_seen + len(self.url) > limits.request_head:
            self._refuse(431, "the request head is larger than --limit-request-head")

    def on_headers_complete(self) -> None:
        if self._ignore_input:
            return
        self._in_head = False
        self._in_body = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if len(self.pipeline) >= PIPELINE_LIMIT:
            self._stop_input()
            self.cycle.keep_alive = False  # those queued are answered, then the connection closes
            logger.warning(
                "%s: more than %d pipelined requests: closing after those",
                format_client(self.client),
                PIPELINE_LIMIT,
            )
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._ignore_input:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._ignore_input:
            return
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

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
