"""A web worker: uvicorn's protocol on the inherited sockets, and a channel to the manager.

A worker's life: (forked by the zygote) -> load the app unless preloaded ->
lifespan startup -> tell the manager "ready" -> serve, sending a heartbeat
from inside the event loop every HEARTBEAT_INTERVAL -> on SIGTERM (or the
manager gone) drain: stop accepting, finish in-flight requests, close
keep-alive connections -> lifespan shutdown -> exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import random
import resource
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
from uvicorn._compat import asyncio_run

from corral import posix
from corral.child import http_protocols
from corral.child.app_loader import AppLoadError
from corral.child.proxy_headers import ProxyHeaders
from corral.child.request_log import BlockWriter, RequestLog
from corral.child.request_stats import RequestStats
from corral.child.send_watch import SendWatch
from corral.child.shutdown_log import PlannedStop
from corral.child.web_app import WebApp, load_web_app
from corral.child.wsgi import BusyThreads, serve_wsgi
from corral.exit_codes import APP_FAILED, OK
from corral.ipc import channel
from corral.ipc.messages import (
    Draining,
    Heartbeat,
    Message,
    Ready,
    Recycle,
    TakeBacklogThenStop,
)
from corral.logformat import prefix_for
from corral.posix import waiting_connections
from corral.settings import WebConfig

HEARTBEAT_INTERVAL = 1.0
LIFESPAN_SHUTDOWN_RESERVE = 1.0
REQUEST_LIMIT_CHECK = 0.1
BACKLOG_LIMIT = 1.0  # a full stop accepts what waits in the queue for at most this long
BACKLOG_POLL = 0.01
RECYCLE_REMINDER = 5.0  # ask again if the manager could not replace us yet


@dataclass
class WorkerSpec:
    """What the zygote hands a freshly forked worker."""

    name: str
    config: WebConfig
    app: WebApp | None  # loaded by the zygote (--preload), or None: the worker loads it
    listen_fds: list[int]
    channel_fd: int
    access_fd: int
    zygote_pid: int
    log_format: str  # text or json, for the access lines
    color: bool  # colored prefixes on the access lines (corral's output is a terminal)


def run_worker(spec: WorkerSpec) -> int:
    """The worker's whole life; returns its exit code."""
    posix.set_title(f"corral: {spec.name}")
    os.environ["CORRAL_WORKER_ID"] = spec.name
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    faulthandler.enable(file=sys.stderr, all_threads=True)
    if not posix.die_with_parent(spec.zygote_pid):
        return OK
    configure_logging(spec.config.log_level)
    web_app = spec.app
    if web_app is None:
        try:
            web_app = load_web_app(spec.config)
        except AppLoadError as error:
            print(error, file=sys.stderr, flush=True)
            return APP_FAILED
    app, busy = web_app.app, None
    if web_app.interface == "wsgi":
        app, busy = serve_wsgi(app, spec.config.threads)

    writer = None
    if spec.config.access_log:
        json_for = (spec.name, os.getpid()) if spec.log_format == "json" else None
        prefix = prefix_for(spec.name, spec.color)
        writer = BlockWriter(spec.access_fd, prefix, json_for)
    requests = RequestLog(RequestStats(), writer)
    # What records requests: the access log, /metrics and --max-requests (which counts sessions).
    recorded = (
        writer is not None or spec.config.request_metrics or spec.config.max_requests is not None
    )
    requests.counting = recorded
    link = channel_socket(spec.channel_fd)
    request_limit = None
    if spec.config.max_requests is not None:
        request_limit = spec.config.max_requests + random.randint(
            0, spec.config.max_requests_jitter
        )
    send_watch = SendWatch(timeout=spec.config.send_timeout)
    server = WorkerServer(
        uvicorn_config(spec.config, app, requests if recorded else None),
        link,
        request_limit,
        requests,
        send_watch,
    )
    server.busy = busy
    server.app_description = web_app.describe(spec.config.threads)
    logging.getLogger("uvicorn.error").addFilter(PlannedStop(lambda: server.should_exit))
    sockets = [socket.socket(fileno=fd) for fd in spec.listen_fds]
    try:
        asyncio_run(server.serve(sockets), loop_factory=server.config.get_loop_factory())
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else APP_FAILED
    except asyncio.CancelledError:  # stopped while booting (WorkerServer._on_signal)
        return OK
    finally:
        server.send_heartbeat()  # the last counts, so the manager's totals miss no request
    return OK if server.started or server.boot_called_off else APP_FAILED


def channel_socket(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def configure_logging(level: str) -> None:
    """Plain `LEVEL: message` lines on stderr, which the manager prefixes with our name.

    uvicorn's own per-process chatter ("Started server process") stays below
    WARNING unless asked for: the manager already says when a worker starts.
    """
    numeric = logging.getLevelName(level.upper()) if level != "trace" else 5
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(levelname)s: %(message)s")
    quiet = max(numeric, logging.WARNING) if numeric > logging.DEBUG else numeric
    logging.getLogger("uvicorn.error").setLevel(quiet)


def import_server_modules() -> None:
    """Import what uvicorn imports when a server starts (event loop, websockets, lifespan).

    Done once before the zygotes are forked, so that workers share these
    modules' pages instead of each importing its own copy.
    """

    async def placeholder(scope: Any, receive: Any, send: Any) -> None:
        """An app for uvicorn to check; it never serves."""

    config = uvicorn.Config(placeholder, http=http_protocols.HttpToolsProtocol, log_config=None)
    config.load()
    config.get_loop_factory()


def uvicorn_config(config: WebConfig, app: Any, requests: RequestLog | None) -> uvicorn.Config:
    """uvicorn's settings from corral's; `requests` records each request (None: nothing does)."""
    drain = max(config.graceful_timeout - LIFESPAN_SHUTDOWN_RESERVE, config.graceful_timeout / 2)
    if config.proxy_headers:
        app = ProxyHeaders(app, config.forwarded_allow_ips)
    return uvicorn.Config(
        app,
        http=http_protocols.http_protocol(config, requests),  # type: ignore[arg-type]
        ws=http_protocols.ws_protocol(config, requests),  # type: ignore[arg-type]
        h11_max_incomplete_event_size=config.limit_request_head,
        loop=config.loop,
        ws_max_size=config.ws_max_size,
        ws_ping_interval=config.ws_ping_interval,
        ws_ping_timeout=config.ws_ping_timeout,
        log_config=None,
        log_level=None,
        access_log=False,
        proxy_headers=False,  # ProxyHeaders above, which also trusts a Unix socket's peer
        root_path=config.root_path,
        # uvicorn counts the request's own connection: its N admits N - 1.
        limit_concurrency=None
        if config.limit_concurrency is None
        else config.limit_concurrency + 1,
        backlog=config.backlog,
        timeout_keep_alive=config.keep_alive,  # type: ignore[arg-type]  # any number works
        timeout_graceful_shutdown=drain,  # type: ignore[arg-type]  # uvicorn takes any number
        ssl_certfile=config.certfile,
        ssl_keyfile=config.keyfile,
        ssl_ca_certs=config.ca_certs,
        server_header=False,
    )


class WorkerServer(uvicorn.Server):
    """uvicorn's server, which reports to the manager and takes its signals from corral."""

    def __init__(
        self,
        config: uvicorn.Config,
        link: socket.socket,
        request_limit: int | None,
        requests: RequestLog,
        send_watch: SendWatch,
    ) -> None:
        super().__init__(config)
        self.link = link
        self.requests = requests
        self.send_watch = send_watch
        self.loop: asyncio.AbstractEventLoop | None = None
        self.listeners: list[socket.socket] = []
        self.decoder = channel.Decoder()
        self.request_limit = request_limit
        self.recycle_asked_at: float | None = None
        self.busy: BusyThreads | None = None  # a WSGI app's threads
        self.app_description = ""  # which app, found how (the manager says it once)
        self.booting: asyncio.Task[Any] | None = None  # the startup under way
        self.boot_called_off = False  # a stop signal came before we served

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """TERM and INT drain, QUIT stops at once; unlike uvicorn, nothing is re-raised.

        A worker still booting exits at once: its lifespan startup may take
        long, and it has no request to finish.
        """
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.should_exit = True
        if not self.started:  # still booting (lifespan startup): nothing to finish, so go now
            self.boot_called_off = True
            if self.booting is not None:
                self.booting.get_loop().call_soon_threadsafe(self.booting.cancel)
            return
        if sig == signal.SIGQUIT:
            self.force_exit = True
        if self.started and self.loop is not None:
            self.loop.call_soon_threadsafe(self._stop_accepting)

    def _take_the_backlog_then_stop(self) -> None:
        """A full stop: nobody else will accept what already waits in the queue, so we do.

        Accepting goes on until the queue is empty (or BACKLOG_LIMIT has
        passed: clients may keep connecting), then the usual drain.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BACKLOG_LIMIT

        def check() -> None:
            waiting = any(waiting_connections(sock) for sock in self.listeners)
            if waiting and loop.time() < deadline:
                loop.call_later(BACKLOG_POLL, check)
            else:
                self.should_exit = True
                self._stop_accepting()

        check()

    def _stop_accepting(self) -> None:
        """Leave the shared queue to the other workers now, not at uvicorn's next tick.

        The manager waits for "draining" before it says a reload is complete,
        so no connection accepted after that meets the old code.
        """
        for server in self.servers:
            server.close()
        self._send(Draining())

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.listeners = sockets or []
        self.booting = asyncio.current_task()  # what a stop signal cancels until we serve
        if not self.should_exit:
            await super().startup(sockets)
        self.booting = None
        if self.started and not self.should_exit:
            loop = self.loop = asyncio.get_running_loop()
            loop.add_reader(self.link.fileno(), self._on_manager_message)
            self._send(Ready(pid=os.getpid(), app=self.app_description))
            self.send_watch.start(self.server_state.connections)
            self._heartbeat()
            if self.request_limit is not None:
                self._check_request_limit()

    def _heartbeat(self) -> None:
        """Sent from inside the event loop, so a blocked loop sends none."""
        self.send_heartbeat()
        asyncio.get_running_loop().call_later(HEARTBEAT_INTERVAL, self._heartbeat)

    def send_heartbeat(self) -> None:
        """Alive, with the requests served and their counters (for /metrics), since the start."""
        self.requests.flush()
        stats = self.requests.stats
        stats.in_flight = len(self.server_state.tasks)
        longest = self.busy.longest() if self.busy is not None else None
        self._send(Heartbeat(requests=self.served(), stats=stats.snapshot(), longest=longest))

    def served(self) -> int:
        """Requests served since the start, as the access log and /metrics count them: HTTP
        requests and WebSocket sessions alike. uvicorn's count (HTTP only) if nothing counts."""
        if self.requests.counting:
            return self.requests.stats.total
        return self.server_state.total_requests

    def _check_request_limit(self) -> None:
        """Past --max-requests, ask the manager for a replacement (it drains us when ready)."""
        loop = asyncio.get_running_loop()
        served = self.served()
        assert self.request_limit is not None
        if served >= self.request_limit and (
            self.recycle_asked_at is None or loop.time() - self.recycle_asked_at > RECYCLE_REMINDER
        ):
            self.recycle_asked_at = loop.time()
            self._send(Recycle(reason="max-requests", requests=served))
        loop.call_later(REQUEST_LIMIT_CHECK, self._check_request_limit)

    def _send(self, message: Message) -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
            self.link.send(channel.encode(message))

    def _on_manager_message(self) -> None:
        data = channel.receive(self.link)
        if data:
            for message, _ in self.decoder.feed(data):
                if isinstance(message, TakeBacklogThenStop):
                    self._take_the_backlog_then_stop()
        if data == b"":
            # The manager is gone: drain, so no process outlives it.
            asyncio.get_running_loop().remove_reader(self.link.fileno())
            self.should_exit = True
