"""uvicorn's protocols as a corral worker serves them: drained without loss, each request recorded.

For every `--http` choice (httptools, h11, zttp, and zttp's HTTP/2 with
`--http2`) a subclass of uvicorn's own protocol adds two things and parses
nothing:

- **Recording.** The protocol already holds each request (its cycle, with
  the scope) and sees its response complete; it notes the status as the
  response starts and appends one tuple per request to the worker's
  `RequestLog`, which counts them for /metrics and writes the access log in
  blocks. No ASGI middleware wraps the app: a wrapper's coroutine frame and
  per-request objects cost a hello-world worker several times more.
  A request whose connection is lost before its response completes is
  recorded then, with the status its app started (0 if none).
- **Draining.** uvicorn closes an idle keep-alive connection the moment it
  drains; a request the client had just sent on it then fails. Here an idle
  HTTP/1.1 connection stays open for a short grace: a request that arrives
  in it is answered with `Connection: close`, and the connection closes
  after. HTTP/2 connections drain as uvicorn does: GOAWAY, new streams 503.

WebSocket protocols (`--ws`) get a grace before uvicorn's own drain, which
closes each session with code 1012 ("service restart": reconnect).

Each request's cycle is a subclass of uvicorn's own, which only notes the
status in `send` (returning uvicorn's coroutine, without a frame of its
own). uvicorn's protocols create their cycle by the name
`RequestResponseCycle` in their module, so the worker points that name at
the subclass (`use_cycles`): a worker serves one configuration. Assigning
`__class__` to each cycle instead cost a hello-world worker 2-3 us of CPU
per request, measured (CPython copies the object's attributes into a dict
of their own on such an assignment, and every later access is slower).
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from time import perf_counter_ns
from typing import Any, ClassVar

from uvicorn.config import WS_PROTOCOLS, Config
from uvicorn.importer import import_from_string
from uvicorn.protocols.http import httptools_impl
from uvicorn.server import ServerState

from corral.child.client_limits import ClientLimits, LimitedHttpToolsProtocol
from corral.child.request_log import RecordSessions, RequestLog
from corral.settings import WebConfig

IDLE_DRAIN_GRACE = 1.0  # seconds a draining worker keeps an idle keep-alive connection

Message = MutableMapping[str, Any]
CLOSE = (b"connection", b"close")


def recording_cycle(cycle: type, announce_close: bool = False) -> type:
    """A subclass of uvicorn's `cycle` class that notes its response's status.

    With `announce_close`, a response whose cycle no longer keeps the
    connection alive says `Connection: close` (uvicorn's httptools cycle
    says it itself; its h11 and zttp cycles close without saying it).
    """
    send = cycle.send

    def noting_send(self: Any, message: Message) -> Any:
        if not self.response_started:
            self.status = message.get("status", 0)
            if announce_close and not self.keep_alive:
                message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
        return send(self, message)

    return type(
        cycle.__name__,
        (cycle,),
        {
            "send": noting_send,
            "status": 0,
            "started": 0,
            "uvicorn_cycle": cycle,
            "__module__": __name__,
        },
    )


def use_cycles(module: Any, cycle: type) -> type:
    """Make uvicorn's protocol `module` create `cycle` (a `recording_cycle`); the previous.

    A worker process calls this once, for the protocol it serves with;
    benchmarks/protocol_cost.py puts the previous back after each variant.
    """
    previous: type = module.RequestResponseCycle
    if cycle.uvicorn_cycle is not getattr(previous, "uvicorn_cycle", previous):  # type: ignore[attr-defined]
        raise RuntimeError(f"{module.__name__}.RequestResponseCycle is not the one corral extends")
    module.RequestResponseCycle = cycle
    return previous


def record(requests: RequestLog, cycle: Any) -> None:
    """Append the finished request of `cycle` to the worker's block of entries."""
    requests.record(cycle.scope, cycle.scope["method"], cycle.status, cycle.started)


class DrainingH1:
    """The grace of an idle HTTP/1.1 connection when its worker drains (a mixin).

    A response whose headers are already out when the worker drains (a WSGI
    app's, sent from its thread; any streamed one) went without `Connection:
    close`: closing the connection once it ends would fail the client's next
    request on it. That connection gets the same grace once its response is
    complete (`drained_after_response`, called by each protocol's
    `on_response_complete`).
    """

    draining = False
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    timeout_keep_alive: float

    def shutdown(self) -> None:
        self.draining = True
        if self.cycle is None or self.cycle.response_complete:
            self._close_after_grace()
        elif not self.cycle.response_started:
            self.cycle.keep_alive = False

    def drained_after_response(self) -> None:
        if not self.transport.is_closing():
            self._close_after_grace()

    def _close_after_grace(self) -> None:
        self.loop.call_later(min(IDLE_DRAIN_GRACE, self.timeout_keep_alive), self._close_if_idle)

    def _close_if_idle(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if idle and not self.transport.is_closing():
            self.transport.close()


# httptools (the default): client limits, drain, recording


HttpToolsCycle = recording_cycle(httptools_impl.RequestResponseCycle)


class HttpToolsProtocol(DrainingH1, LimitedHttpToolsProtocol):
    """uvicorn's httptools protocol, bounded (`LimitedHttpToolsProtocol`), drained, recorded.

    httptools parses pipelined requests ahead of the one being served, so
    the cycle being served is the one whose task started last
    (`_start_asgi_task`, called before its app runs), not `self.cycle`.
    The callbacks run for every
    request: they call uvicorn's own directly, as super() costs a
    measurable share of a small request.
    """

    limits: ClassVar[ClientLimits]
    requests: ClassVar[RequestLog | None]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop, limits=self.limits)
        self._serving: Any = None  # the cycle whose app runs, when recorded

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if self.draining:
            cycle.keep_alive = False  # a request that came in the grace: answered, then closed
        if self.requests is not None:
            cycle.started = perf_counter_ns()
            self._serving = cycle
        httptools_impl.HttpToolsProtocol._start_asgi_task(self, cycle, app)

    def on_response_complete(self) -> None:
        serving = self._serving
        if serving is not None:  # recorded here rather than by record(): a call less
            self._serving = None
            requests = self.requests
            entries = requests.entries  # type: ignore[union-attr]
            if not entries:
                requests.schedule()  # type: ignore[union-attr]
            entries.append(
                (serving.scope["method"], serving.status, serving.started, perf_counter_ns())
            )
        httptools_impl.HttpToolsProtocol.on_response_complete(self)
        if self.draining:
            self.drained_after_response()

    def connection_lost(self, exc: Exception | None) -> None:
        serving = self._serving
        if serving is not None:
            self._serving = None
            record(self.requests, serving)  # type: ignore[arg-type]
        super().connection_lost(exc)


class LoggedHttpTools(HttpToolsProtocol):
    """The same, recording what the access log's line needs too."""

    def on_response_complete(self) -> None:
        serving = self._serving
        if serving is not None:
            self._serving = None
            record(self.requests, serving)  # type: ignore[arg-type]
        httptools_impl.HttpToolsProtocol.on_response_complete(self)
        if self.draining:
            self.drained_after_response()


# h11 and zttp's HTTP/1.1: one request at a time, so the cycle served is `self.cycle`


def sequential_h1(protocol: type) -> type:
    """uvicorn's h11 or zttp `protocol`, drained and recorded.

    Both serve one request at a time, so the cycle served is `self.cycle`;
    they create the next request's cycle (and its task) while handling input,
    or right after a response completes (a pipelined request): the cycle is
    adopted after either, before its task first runs. uvicorn's methods are
    called directly, as super() costs a measurable share of a small request.
    """
    data_received = protocol.data_received
    on_response_complete = protocol.on_response_complete
    connection_lost = protocol.connection_lost

    class Sequential(DrainingH1, protocol):  # type: ignore[misc, valid-type]
        requests: ClassVar[RequestLog | None]
        _adopted: Any = None

        def data_received(self, data: bytes) -> None:
            data_received(self, data)
            if self.cycle is not self._adopted:
                self._adopt()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            if cycle is self._adopted and self.requests is not None:
                record(self.requests, cycle)
            on_response_complete(self)
            if self.draining:
                self.drained_after_response()
            if self.cycle is not self._adopted:
                self._adopt()

        def connection_lost(self, exc: Exception | None) -> None:
            cycle = self.cycle
            adopted = cycle is not None and cycle is self._adopted
            if self.requests is not None and adopted and not cycle.response_complete:
                record(self.requests, cycle)
            connection_lost(self, exc)

        def _adopt(self) -> None:
            cycle = self._adopted = self.cycle
            if cycle is None:
                return
            if self.requests is not None:
                cycle.started = perf_counter_ns()
            if self.draining:
                cycle.keep_alive = False

    Sequential.__name__ = Sequential.__qualname__ = protocol.__name__
    return Sequential


def h11_protocol() -> type:
    from uvicorn.protocols.http import h11_impl

    use_cycles(h11_impl, recording_cycle(h11_impl.RequestResponseCycle, announce_close=True))
    return sequential_h1(h11_impl.H11Protocol)


def zttp_protocol() -> type:
    from uvicorn.protocols.http import zttp_impl

    use_cycles(zttp_impl, recording_cycle(zttp_impl.RequestResponseCycle, announce_close=True))
    return sequential_h1(zttp_impl.ZttpProtocol)


def zttp_h2_protocol() -> type:
    """zttp's HTTP/2 protocol, recorded; one cycle per stream, drained by uvicorn (GOAWAY)."""
    from uvicorn.protocols.http import zttp_h2_impl

    use_cycles(zttp_h2_impl, recording_cycle(zttp_h2_impl.RequestResponseCycle))

    class ZttpH2Protocol(zttp_h2_impl.ZttpH2Protocol):
        requests: ClassVar[RequestLog | None]

        def handle_request(self, event: Any) -> None:
            super().handle_request(event)
            if self.requests is not None:
                self.cycles[event.stream_id].started = perf_counter_ns()  # type: ignore[attr-defined]

        def on_response_complete(self, stream_id: int) -> None:
            cycle = self.cycles.get(stream_id)
            if cycle is not None and self.requests is not None:
                record(self.requests, cycle)
            super().on_response_complete(stream_id)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.requests is not None:
                for cycle in self.cycles.values():
                    if not cycle.response_complete:
                        record(self.requests, cycle)
            super().connection_lost(exc)

    return ZttpH2Protocol


def zttp_auto_protocol(h1_class: type, h2_class: type) -> type:
    """uvicorn's HTTP/1.1-or-HTTP/2 dispatcher (ALPN over TLS, the preface in cleartext),
    switching to corral's subclasses."""
    from uvicorn.protocols.http.auto_zttp_impl import AutoZttpProtocol

    class AutoProtocol(AutoZttpProtocol):
        def _switch(self, http2: bool, initial_data: bytes = b"") -> None:
            # uvicorn's _switch, with corral's classes for its module's ZttpProtocol and
            # ZttpH2Protocol.
            protocol = (h2_class if http2 else h1_class)(
                config=self.config,
                server_state=self.server_state,
                app_state=self.app_state,
                _loop=self.loop,
            )
            self.transport.set_protocol(protocol)
            protocol.connection_made(self.transport)
            if initial_data:
                protocol.data_received(initial_data)

    return AutoProtocol


def http_protocol(config: WebConfig, requests: RequestLog | None) -> type:
    """The protocol class for `config.http` (and `config.http2`), bound to this worker.

    `requests` receives every request (None: nothing records them).
    """
    bound: dict[str, Any] = {"requests": requests, "__module__": __name__}
    if config.http in ("auto", "httptools"):
        if requests is not None:
            use_cycles(httptools_impl, HttpToolsCycle)
        bound["limits"] = ClientLimits.of(config)
        logged = requests is not None and requests.writer is not None
        return type("HttpToolsProtocol", (LoggedHttpTools if logged else HttpToolsProtocol,), bound)
    if config.http == "h11":
        return type("H11Protocol", (h11_protocol(),), bound)
    http1 = type("ZttpProtocol", (zttp_protocol(),), bound)
    if not config.http2:
        return http1
    http2 = type("ZttpH2Protocol", (zttp_h2_protocol(),), bound)
    return zttp_auto_protocol(http1, http2)


def ws_protocol(config: WebConfig, requests: RequestLog | None) -> type | None:
    """The WebSocket protocol class for `config.ws`, with corral's grace before it drains,
    its sessions recorded in `requests` (None: nothing records them).

    uvicorn closes every WebSocket session with code 1012 (reconnect) as its
    worker drains; `--ws-drain-grace` lets sessions go on that long first.
    None for `--ws none`.
    """
    path = WS_PROTOCOLS[config.ws]
    if path is None:
        return None
    base: type = import_from_string(path)
    grace = config.ws_drain_grace

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        if requests is not None:
            self.app = RecordSessions(self.app, requests)

    def shutdown(self: Any) -> None:
        if grace > 0:
            self.loop.call_later(grace, base.shutdown, self)
        else:
            base.shutdown(self)

    members = {"__init__": __init__, "shutdown": shutdown, "__module__": __name__}
    return type(base.__name__, (base,), members)
