"""The manager's side of the web group: one zygote, N workers forked by it, supervised.

What it keeps true: `wanted` workers named web.1..web.N serve; a worker that
dies is replaced under the same name, at once after a stable run and with a
doubling delay while deaths repeat; a worker whose event loop stops answering
gets SIGABRT (its stack lands in the log), then SIGKILL; an app that cannot
start stops corral once, not in a restart storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from corral import channel
from corral.config import WebConfig
from corral.exit_codes import APP_FAILED
from corral.manager.backoff import Backoff
from corral.manager.children import Child, State
from corral.output import Output
from corral.system import describe_exit

WATCH_INTERVAL = 0.1
ABORT_GRACE = 2.0  # between SIGABRT (stack dump) and SIGKILL
ZYGOTE_EXIT_TIMEOUT = 5.0


class AppFailed(Exception):
    """The app cannot start (import error, lifespan failure): corral exits 3."""


class WebGroup:
    def __init__(
        self,
        config: WebConfig,
        sockets: list[socket.socket],
        identity: dict[str, Any],
        output: Output,
        on_fatal: Callable[[int], None],
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.identity = identity  # the user and group the app runs as (Popen arguments)
        self.output = output
        self.on_fatal = on_fatal
        self.wanted = config.workers
        self.workers: dict[str, Child] = {}
        self.links: dict[str, socket.socket] = {}
        self.decoders: dict[str, channel.Decoder] = {}
        self.backoffs: dict[str, Backoff] = {}
        self.respawns: dict[str, asyncio.TimerHandle] = {}
        self.serving = False
        self.stopping = False
        self.all_stopped = asyncio.Event()
        self.zygote: asyncio.subprocess.Process | None = None
        self.zygote_link: socket.socket | None = None
        self.zygote_decoder = channel.Decoder()
        self.zygote_loaded: asyncio.Future[bool] | None = None
        self.zygote_backoff = Backoff()
        self.zygote_started = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self.access_fd = os.dup(output.fd)
        self.watcher: asyncio.Task[None] | None = None

    # -- start ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the zygote and the first worker; the others follow once it is ready.

        Booting one worker first means a broken app fails once, with one
        traceback, rather than N times at once.
        """
        await self._start_zygote()
        self._spawn("web.1")
        self.watcher = asyncio.create_task(self._watch())

    async def _start_zygote(self) -> None:
        loop = asyncio.get_running_loop()
        self._close_zygote_link()
        self.zygote_decoder = channel.Decoder()
        self.zygote_started = time.monotonic()
        ours, theirs = socket.socketpair()
        log_read, log_write = os.pipe()
        listen_fds = [s.fileno() for s in self.sockets]
        try:
            self.zygote = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "corral.web.zygote",
                str(theirs.fileno()),
                pass_fds=[theirs.fileno(), self.access_fd, *listen_fds],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_write,
                stderr=log_write,
                start_new_session=True,
                **self.identity,
            )
        except PermissionError as error:
            ours.close()
            theirs.close()
            os.close(log_read)
            os.close(log_write)
            who = " as --user/--group" if self.identity else ""
            raise PermissionError(f"cannot run {sys.executable}{who}: {error.strerror}") from None
        theirs.close()
        os.close(log_write)
        self.output.attach(log_read, "web.zygote")
        ours.setblocking(False)
        self.zygote_link = ours
        self.zygote_loaded = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_zygote_readable)
        spec = {
            "name": "web.zygote",
            "manager_pid": os.getpid(),
            "config": self.config.model_dump(mode="json"),
            "listen_fds": listen_fds,
            "access_fd": self.access_fd,
        }
        channel.send(ours, spec)
        waiter = asyncio.ensure_future(self.zygote.wait())
        await asyncio.wait([self.zygote_loaded, waiter], return_when=asyncio.FIRST_COMPLETED)
        if not self.zygote_loaded.done() or not self.zygote_loaded.result():
            await waiter
            raise AppFailed("the app could not be loaded")
        waiter.add_done_callback(self._on_zygote_exit)

    # -- messages --------------------------------------------------------------

    def _on_zygote_readable(self) -> None:
        assert self.zygote_link is not None
        data = channel.receive(self.zygote_link)
        if data is None:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(self.zygote_link.fileno())
            if self.zygote_loaded and not self.zygote_loaded.done():
                self.zygote_loaded.set_result(False)
            return
        for message, _ in self.zygote_decoder.feed(data):
            kind = message["t"]
            if kind in ("loaded", "failed") and self.zygote_loaded:
                self.zygote_loaded.set_result(kind == "loaded")
            elif kind == "forked":
                self._on_forked(message["name"], message["pid"])
            elif kind == "exited":
                self._on_exited(message["pid"], message["code"])

    def _on_worker_readable(self, name: str) -> None:
        data = channel.receive(self.links[name])
        if data is None:
            return
        if not data:
            self._close_link(name)
            return
        child = self.workers.get(name)
        for message, _ in self.decoders[name].feed(data):
            if child is None:
                break
            if message["t"] == "ready":
                self._on_ready(child)
            elif message["t"] == "hb":
                child.heartbeat(message["requests"])

    # -- transitions -------------------------------------------------------------

    def _spawn(self, name: str) -> None:
        if self.zygote_link is None:
            return  # the zygote is being replaced; its replacement starts every worker
        ours, theirs = socket.socketpair()
        log_read, log_write = os.pipe()
        try:
            channel.send(
                self.zygote_link,
                {"t": "fork", "name": name, "fds": 2},
                [theirs.fileno(), log_write],
            )
        finally:
            theirs.close()
            os.close(log_write)
        ours.setblocking(False)
        self.workers[name] = Child(name)
        self.links[name] = ours
        self.decoders[name] = channel.Decoder()
        self.output.attach(log_read, name)
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_worker_readable, name)

    def _on_forked(self, name: str, pid: int) -> None:
        child = self.workers.get(name)
        if child is None:
            return
        child.pid = pid
        self.output.say(f"{name} started (pid {pid})")
        if self.stopping:
            self._drain(child, "stop")

    def _on_ready(self, child: Child) -> None:
        child.ready()
        if not self.serving:
            self.serving = True
            self._announce()
            for index in range(2, self.wanted + 1):
                self._spawn(f"web.{index}")

    def _announce(self) -> None:
        from corral.web.sockets import Address, url

        tls = self.config.certfile is not None
        for sock in self.sockets:
            address = Address(fd=sock.fileno())
            self.output.say(f"listening on {url(address, sock, tls)} ({self.wanted} workers)")

    def _on_exited(self, pid: int, code: int) -> None:
        child = next((c for c in self.workers.values() if c.pid == pid), None)
        if child is None:
            return
        served_for = child.uptime() if child.state is not State.STARTING else None
        was_draining = child.state is State.DRAINING
        cause = describe_exit(code)
        if child.stop_reason in ("timeout", "boot-timeout"):
            cause += f" ({child.stop_reason}: its stack is above)"
        child.stopped()
        del self.workers[child.name]
        self._close_link(child.name)
        if was_draining or self.stopping:
            self.output.say(f"{child.name} stopped (pid {pid}, {cause})")
            if self.stopping and not self.workers:
                self.all_stopped.set()
            return
        self.output.say(f"{child.name} exited (pid {pid}, {cause})")
        if code == APP_FAILED and served_for is None and not self.serving:
            self.output.say(f"the app cannot start: see {child.name}'s output above")
            self.on_fatal(APP_FAILED)
            return
        delay = self.backoffs.setdefault(child.name, Backoff()).delay_after_death(served_for)
        if delay:
            self.output.say(f"{child.name} restarts in {delay:g}s (it keeps dying)")
        self.respawns[child.name] = asyncio.get_running_loop().call_later(
            delay, self._respawn, child.name
        )

    def _respawn(self, name: str) -> None:
        self.respawns.pop(name, None)
        if not self.stopping and _index(name) <= self.wanted and name not in self.workers:
            self._spawn(name)

    def _drain(self, child: Child, reason: str) -> None:
        child.drain(reason, time.monotonic() + self.config.graceful_timeout)
        self._signal(child, signal.SIGTERM)

    def _signal(self, child: Child, sig: int) -> None:
        if child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)

    def _close_zygote_link(self) -> None:
        if self.zygote_link is not None:
            asyncio.get_running_loop().remove_reader(self.zygote_link.fileno())
            self.zygote_link.close()
            self.zygote_link = None

    def _close_link(self, name: str) -> None:
        link = self.links.pop(name, None)
        self.decoders.pop(name, None)
        if link is not None:
            asyncio.get_running_loop().remove_reader(link.fileno())
            link.close()

    def _on_zygote_exit(self, waiter: asyncio.Future[int]) -> None:
        """Replace a zygote that died; its workers drain by themselves (parent-death signal)."""
        if self.stopping:
            return
        self.output.say(
            f"web.zygote exited unexpectedly ({describe_exit(waiter.result())}): "
            "its workers drain, a new zygote and workers replace them"
        )
        for name in list(self.workers):
            self._close_link(name)
        self.workers.clear()
        for handle in self.respawns.values():
            handle.cancel()
        self.respawns.clear()
        delay = self.zygote_backoff.delay_after_death(time.monotonic() - self.zygote_started)
        loop = asyncio.get_running_loop()
        loop.call_later(delay, lambda: self._tasks.add(loop.create_task(self._replace_zygote())))

    async def _replace_zygote(self) -> None:
        if self.stopping:
            return
        try:
            await self._start_zygote()
        except AppFailed:
            self.on_fatal(APP_FAILED)
            return
        for index in range(1, self.wanted + 1):
            self._spawn(f"web.{index}")

    # -- supervision -------------------------------------------------------------

    async def _watch(self) -> None:
        """Escalate kills that are due and abort workers whose event loop stopped answering."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            for child in list(self.workers.values()):
                if child.kill_at is not None and now >= child.kill_at:
                    child.kill_at = None
                    self._signal(child, signal.SIGKILL)
                elif child.stop_reason is not None or child.pid is None:
                    continue
                elif (
                    child.state is State.STARTING
                    and now - child.started_at > self.config.boot_timeout
                ):
                    self._abort(child, "boot-timeout", self.config.boot_timeout)
                elif child.state is State.READY and now - child.last_seen > self.config.timeout:
                    self._abort(child, "timeout", self.config.timeout)

    def _abort(self, child: Child, reason: str, limit: float) -> None:
        what = "has not become ready" if reason == "boot-timeout" else "has not answered"
        self.output.say(
            f"{child.name} (pid {child.pid}) {what} for {limit:g}s: "
            "sending SIGABRT to log its stack, then SIGKILL"
        )
        child.stop_reason = reason
        child.kill_at = time.monotonic() + ABORT_GRACE
        self._signal(child, signal.SIGABRT)

    # -- scale and stop ----------------------------------------------------------

    def scale(self, wanted: int) -> None:
        """Run `wanted` workers: start the missing ones, drain the highest-numbered extras."""
        self.wanted = max(1, wanted)
        self.output.say(f"scaling web to {self.wanted} workers")
        for index in range(1, self.wanted + 1):
            name = f"web.{index}"
            if name not in self.workers and name not in self.respawns:
                self._spawn(name)
        for child in list(self.workers.values()):
            if _index(child.name) > self.wanted and child.state is not State.DRAINING:
                self._drain(child, "scale")

    async def stop(self) -> None:
        """Drain every worker (killed at --graceful-timeout), then let the zygote go."""
        self.stopping = True
        for handle in self.respawns.values():
            handle.cancel()
        self.respawns.clear()
        for child in self.workers.values():
            if child.state is not State.DRAINING:
                self._drain(child, "stop")
        if self.workers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self.all_stopped.wait(), self.config.graceful_timeout + ABORT_GRACE + 1
                )
        await self._stop_zygote()

    def kill(self) -> None:
        """Stop at once: SIGKILL every worker (the zygote follows in stop())."""
        self.stopping = True
        for child in self.workers.values():
            child.kill_at = time.monotonic()
            self._signal(child, signal.SIGKILL)

    async def _stop_zygote(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        if self.zygote is None:
            return
        if self.zygote.returncode is None and self.zygote_link is not None:
            with contextlib.suppress(OSError):
                channel.send(self.zygote_link, {"t": "exit"})
            try:
                await asyncio.wait_for(self.zygote.wait(), ZYGOTE_EXIT_TIMEOUT)
            except asyncio.TimeoutError:
                self.zygote.kill()
                await self.zygote.wait()
        self._close_zygote_link()
        for name in list(self.links):
            self._close_link(name)
        os.close(self.access_fd)


def _index(name: str) -> int:
    return int(name.rpartition(".")[2])
