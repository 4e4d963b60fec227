"""The manager's side of the web group: zygotes, and the workers they fork, supervised.

What it keeps true: `wanted` workers named web.1..web.N serve. A worker that
dies is replaced under the same name, at once after a stable run and with a
doubling delay while deaths repeat. A worker whose event loop stops answering
gets SIGABRT (its stack lands in the log), then SIGKILL. An app that cannot
start stops corral once, not in a restart storm.

Replacing a live worker (reload, --max-requests, --max-memory) always starts
the replacement first and drains the old worker only once the replacement is
ready, so capacity never drops. A reload does this for every worker with a
new zygote, which has imported the current code; if the new code cannot load
or start, the old workers keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import psutil

from corral.exit_codes import APP_FAILED, FAILURE
from corral.ipc import channel
from corral.manager.background import Background
from corral.manager.backoff import Backoff
from corral.manager.children import Child, History, State, status_row, unix_time
from corral.manager.launcher_handle import LauncherHandle
from corral.manager.metrics import Metrics
from corral.manager.output import Output, Pump
from corral.manager.zygote_handle import AppFailed, ZygoteHandle
from corral.posix import describe_exit
from corral.settings import WebConfig
from corral.units import format_size

WATCH_INTERVAL = 0.1
MEMORY_CHECK_INTERVAL = 1.0
ABORT_GRACE = 2.0  # between SIGABRT (stack dump) and SIGKILL

__all__ = ["AppFailed", "WebGroup"]


class WebGroup:
    def __init__(
        self,
        config: WebConfig,
        sockets: list[socket.socket],
        launcher: LauncherHandle,
        identity: dict[str, Any],
        env: dict[str, str],
        output: Output,
        metrics: Metrics,
        on_fatal: Callable[[int], None],
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.history: dict[str, History] = {}
        self.sockets = sockets
        self.launcher = launcher
        self.identity = identity  # the user and group the app runs as (see posix.identity)
        self.env = env  # the system's environment ([env], env_file), over the manager's
        self.output = output
        self.on_fatal = on_fatal
        self.wanted = config.workers
        self.workers: dict[int, Child] = {}
        self.links: dict[int, socket.socket] = {}
        self.pumps: dict[int, Pump] = {}  # each worker's output, to tell its pid once known
        self.decoders: dict[int, channel.Decoder] = {}
        self.ready_waiters: dict[int, asyncio.Future[bool]] = {}
        self.accepting_waiters: dict[int, asyncio.Future[None]] = {}  # set once it stops accepting
        self.backoffs: dict[str, Backoff] = {}
        self.respawns: dict[str, asyncio.TimerHandle] = {}
        self.keys = itertools.count(1)
        self.zygote: ZygoteHandle | None = None  # the current generation, which forks
        self.zygotes: dict[int, ZygoteHandle] = {}  # every live one, retiring ones too
        self.zygote_backoff = Backoff()
        self.generation = 0
        self.serving = False
        self.stopping = False
        self.all_stopped = asyncio.Event()
        self.reloading: asyncio.Task[None] | None = None
        self.background = Background()
        self.access_fd = os.dup(output.fd)
        self.watcher: asyncio.Task[None] | None = None

    # -- start ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the zygote and the first worker; the others follow once it is ready.

        Booting one worker first means a broken app fails once, with one
        traceback, rather than N times at once.
        """
        self.zygote = await self._launch_zygote()
        self._spawn("web.1")
        self.watcher = asyncio.create_task(self._watch())

    async def _launch_zygote(self) -> ZygoteHandle:
        self.generation += 1
        zygote = ZygoteHandle(self.generation, self._on_zygote_message, self._on_zygote_exit)
        spec = {
            "config": self.config.model_dump(mode="json"),
            "stop_timeout": self.config.graceful_timeout + 1,
            "log_format": "json" if self.output.json else "text",
        }
        await zygote.launch(
            self.launcher,
            "web.zygote",
            "corral.child.web_zygote",
            spec,
            [self.access_fd, *(s.fileno() for s in self.sockets)],
            self.env,
            self.identity,
            self.output,
        )
        self.zygotes[zygote.generation] = zygote
        return zygote

    # -- messages --------------------------------------------------------------

    def _on_zygote_message(self, zygote: ZygoteHandle, message: channel.Message) -> None:
        if message["t"] == "forked":
            self._on_forked(message["key"], message["pid"])
        elif message["t"] == "exited":
            self._on_exited(zygote, message["pid"], message["code"])

    def _on_worker_readable(self, key: int) -> None:
        data = channel.receive(self.links[key])
        if data is None:
            return
        if not data:
            self._close_link(key)
            return
        self._on_worker_data(key, data)

    def _on_worker_data(self, key: int, data: bytes) -> None:
        for message, _ in self.decoders[key].feed(data):
            child = self.workers.get(key)
            if child is None:
                return
            if message["t"] == "ready":
                self._on_ready(child)
            elif message["t"] == "draining":
                self._stopped_accepting(key)
            elif message["t"] == "hb":
                child.heartbeat(message["requests"])
                if child.pid is not None and "stats" in message:
                    self.metrics.worker_stats(child.name, child.pid, message["stats"])
            elif message["t"] == "recycle":
                self._replace(child, message["reason"], f"served {message['requests']} requests")

    # -- transitions -------------------------------------------------------------

    def _spawn(self, name: str, replaces: Child | None = None) -> Child | None:
        zygote = self.zygote
        if zygote is None or zygote.link is None:
            return None  # the zygote is being replaced; its replacement starts every worker
        child = Child(next(self.keys), name, zygote.generation)
        self.history.setdefault(name, History()).starts += 1
        ours, theirs = socket.socketpair()
        log_read, log_write = os.pipe()
        try:
            zygote.fork(child.key, name, [theirs.fileno(), log_write])
        except OSError:  # it has just died; its exit, on its way, starts every worker again
            ours.close()
            os.close(log_read)
            return None
        finally:
            theirs.close()
            os.close(log_write)
        ours.setblocking(False)
        if replaces is not None:
            child.replaces = replaces.key
            replaces.replaced_by = child.key
        self.workers[child.key] = child
        self.links[child.key] = ours
        self.decoders[child.key] = channel.Decoder()
        loop = asyncio.get_running_loop()
        self.ready_waiters[child.key] = loop.create_future()
        self.accepting_waiters[child.key] = loop.create_future()
        self.pumps[child.key] = self.output.attach(log_read, name)
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_worker_readable, child.key)
        return child

    def _on_forked(self, key: int, pid: int) -> None:
        child = self.workers.get(key)
        if child is None:
            return
        child.pid = pid
        self.pumps[key].pid = pid
        self.output.say(f"{child.name} started (pid {pid})")
        if self.stopping:
            self._drain(child, "stop")

    def _on_ready(self, child: Child) -> None:
        child.ready()
        self._settle(child.key, True)
        old = self.workers.get(child.replaces) if child.replaces is not None else None
        if old is not None and old.serving():
            self._drain(old, old.replace_reason or "replaced")
        if not self.serving:
            self.serving = True
            self._announce()
            for index in range(2, self.wanted + 1):
                self._spawn(f"web.{index}")

    def _stopped_accepting(self, key: int) -> None:
        waiter = self.accepting_waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _settle(self, key: int, ready: bool) -> None:
        waiter = self.ready_waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(ready)

    def _announce(self) -> None:
        from corral.manager.listeners import Address, url

        tls = self.config.certfile is not None
        for sock in self.sockets:
            address = Address(fd=sock.fileno())
            self.output.say(f"listening on {url(address, sock, tls)} ({self.wanted} workers)")

    def _on_exited(self, zygote: ZygoteHandle, pid: int, code: int) -> None:
        child = next((c for c in self.workers.values() if c.pid == pid), None)
        if child is None:
            return
        served_for = child.uptime() if child.state is not State.STARTING else None
        was_draining = child.state is State.DRAINING
        cause = describe_exit(code)
        self.history[child.name].last_exit = cause
        self._read_last_messages(child.key)  # its last heartbeat carries its final counts
        self.metrics.worker_exited(pid)
        if child.stop_reason in ("timeout", "boot-timeout"):
            cause += f" ({child.stop_reason}: its stack is above)"
        self._forget(child)
        if zygote.retiring:
            self._retire_if_idle(zygote)
        if was_draining or self.stopping:
            why = f": {child.stop_reason}" if child.stop_reason not in (None, "stop") else ""
            self.output.say(f"{child.name} stopped (pid {pid}, {cause}){why}")
            if self.stopping and not self.workers:
                self.all_stopped.set()
            return
        self.output.say(f"{child.name} exited (pid {pid}, {cause})")
        if child.replaces is not None:
            self.output.say(f"{child.name} keeps its old worker: the replacement did not start")
            old = self.workers.get(child.replaces)
            if old is not None:
                old.replaced_by = None
            return
        if child.replaced_by is not None:
            replacement = self.workers.get(child.replaced_by)
            if replacement is not None:
                replacement.replaces = None  # it takes over as it is
                return
        if code == APP_FAILED and served_for is None and not self.serving:
            self.output.say(f"the app cannot start: see {child.name}'s output above")
            self.on_fatal(APP_FAILED)
            return
        stuck = child.stop_reason in ("timeout", "boot-timeout")
        self.metrics.restart("web", "timeout" if stuck else "crash")
        delay = self.backoffs.setdefault(child.name, Backoff()).delay_after_death(served_for)
        if delay:
            self.output.say(f"{child.name} restarts in {delay:g}s (it keeps dying)")
        self.respawns[child.name] = asyncio.get_running_loop().call_later(
            delay, self._respawn, child.name
        )

    def _read_last_messages(self, key: int) -> None:
        """Handle what an exited worker sent and the manager has not read yet."""
        link = self.links.get(key)
        while link is not None and self.links.get(key) is link:
            data = channel.receive(link)
            if not data:
                return
            self._on_worker_data(key, data)

    def _forget(self, child: Child) -> None:
        child.stopped()
        del self.workers[child.key]
        self.pumps.pop(child.key, None)
        self._close_link(child.key)
        self._settle(child.key, False)
        self._stopped_accepting(child.key)

    def _respawn(self, name: str) -> None:
        self.respawns.pop(name, None)
        running = any(c.name == name and c.serving() for c in self.workers.values())
        if not self.stopping and _index(name) <= self.wanted and not running:
            self._spawn(name)

    def _replace(self, old: Child, reason: str, detail: str) -> Child | None:
        """Start a replacement for `old`; `old` drains once the replacement is ready."""
        if old.state is not State.READY or old.replaced_by is not None or self.stopping:
            return None
        old.replace_reason = reason
        self.metrics.restart("web", reason)
        self.output.say(f"{old.name} (pid {old.pid}) {detail}: replacing it ({reason})")
        return self._spawn(old.name, replaces=old)

    def _drain(self, child: Child, reason: str) -> None:
        """Stop `child` gracefully: SIGTERM, so it leaves the accept queue to the others.

        On a full stop there are no others: it is asked instead, over its
        channel, to answer what waits in the queue before it drains.
        """
        serving = child.state is State.READY
        child.drain(reason, time.monotonic() + self.config.graceful_timeout)
        link = self.links.get(child.key)
        if reason == "stop" and serving and link is not None:
            with contextlib.suppress(OSError):
                link.send(channel.encode({"t": "stop"}))
                return
        self._signal(child, signal.SIGTERM)

    def _signal(self, child: Child, sig: int) -> None:
        if child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)

    def _close_link(self, key: int) -> None:
        link = self.links.pop(key, None)
        self.decoders.pop(key, None)
        if link is not None:
            asyncio.get_running_loop().remove_reader(link.fileno())
            link.close()

    # -- zygotes -----------------------------------------------------------------

    def _retire_if_idle(self, zygote: ZygoteHandle) -> None:
        if not any(c.generation == zygote.generation for c in self.workers.values()):
            self.background.start(zygote.exit())

    def _on_zygote_exit(self, zygote: ZygoteHandle) -> None:
        """Forget a zygote that exited, and its workers; replace it if it died on its own.

        Its workers, if any are left, get the parent-death signal and drain by
        themselves; nobody will report their exits now.
        """
        self.zygotes.pop(zygote.generation, None)
        zygote.close()
        for child in [c for c in self.workers.values() if c.generation == zygote.generation]:
            self._forget(child)
        if self.stopping:
            if not self.workers:
                self.all_stopped.set()
            return
        if zygote is not self.zygote:
            return
        self.output.say(
            f"web.zygote exited unexpectedly ({zygote.exit_cause()}): "
            "its workers drain, a new zygote and workers replace them"
        )
        self.zygote = None
        for handle in self.respawns.values():
            handle.cancel()
        self.respawns.clear()
        delay = self.zygote_backoff.delay_after_death(time.monotonic() - zygote.started_at)
        loop = asyncio.get_running_loop()
        loop.call_later(delay, lambda: self.background.start(self._replace_zygote()))

    async def _replace_zygote(self) -> None:
        if self.stopping:
            return
        try:
            self.zygote = await self._launch_zygote()
        except AppFailed:
            self.on_fatal(APP_FAILED if not self.serving else FAILURE)
            return
        for index in range(1, self.wanted + 1):
            self._spawn(f"web.{index}")

    # -- reload --------------------------------------------------------------------

    def reload(self) -> None:
        """Roll every worker over to a new zygote with the current code, one at a time."""
        if self.stopping:
            return
        if self.reloading is not None and not self.reloading.done():
            self.output.say("a reload is already under way; this one is ignored")
            return
        self.reloading = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        self.output.say("reloading: loading the current code in a new zygote")
        try:
            new = await self._launch_zygote()
        except AppFailed:
            self.output.say(
                "reload failed: the new code cannot be loaded (see web.zygote's output above); "
                "the running workers keep serving the old code"
            )
            self.metrics.reload("failed")
            return
        old = self.zygote
        self.zygote = new
        if old is not None:
            old.retiring = True
        rolled = 0
        for child in sorted(self._older_than(new), key=lambda c: _index(c.name)):
            if self.stopping:
                return
            if child.key not in self.workers or not child.serving():
                continue
            replacement = self._replace(child, "reload", "runs the old code")
            if replacement is None or not await self.ready_waiters[replacement.key]:
                self._abandon_reload(new, old, rolled)
                return
            rolled += 1
        if old is not None:
            self._retire_if_idle(old)
        await self._until_old_workers_stop_accepting(new)
        self.output.say(f"reload complete: {rolled} workers run the new code")
        self.metrics.reload("ok")

    async def _until_old_workers_stop_accepting(self, new: ZygoteHandle) -> None:
        """After this, every new connection is accepted by a worker running the new code."""
        waiters = [
            self.accepting_waiters[c.key]
            for c in self._older_than(new)
            if c.key in self.accepting_waiters
        ]
        if waiters:
            await asyncio.wait(waiters, timeout=self.config.graceful_timeout)

    def _older_than(self, zygote: ZygoteHandle) -> list[Child]:
        return [c for c in self.workers.values() if c.generation < zygote.generation]

    def _abandon_reload(self, new: ZygoteHandle, old: ZygoteHandle | None, rolled: int) -> None:
        self.metrics.reload("failed")
        if rolled == 0 and old is not None:
            self.zygote, old.retiring, new.retiring = old, False, True
            self._retire_if_idle(new)
            self.output.say(
                "reload failed: the new code did not start (see above); "
                "every worker keeps serving the old code"
            )
        else:
            self.output.say(
                f"reload failed part way: {rolled} workers run the new code, "
                f"{len(self._older_than(new))} the old"
            )

    # -- supervision -------------------------------------------------------------

    async def _watch(self) -> None:
        """Escalate kills that are due, abort stuck workers, recycle oversized ones."""
        next_memory_check = time.monotonic()
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
            if self.config.max_memory is not None and now >= next_memory_check:
                next_memory_check = now + MEMORY_CHECK_INTERVAL
                self._recycle_oversized(self.config.max_memory)

    def _abort(self, child: Child, reason: str, limit: float) -> None:
        what = "has not become ready" if reason == "boot-timeout" else "has not answered"
        self.output.say(
            f"{child.name} (pid {child.pid}) {what} for {limit:g}s: "
            "sending SIGABRT to log its stack, then SIGKILL"
        )
        child.abort(reason, time.monotonic() + ABORT_GRACE)
        self._signal(child, signal.SIGABRT)

    def _recycle_oversized(self, limit: int) -> None:
        for child in list(self.workers.values()):
            if child.state is not State.READY or child.replaced_by is not None:
                continue
            try:
                rss = psutil.Process(child.pid).memory_info().rss
            except psutil.Error:
                continue
            if rss > limit:
                detail = f"uses {format_size(rss)}, over --max-memory {format_size(limit)}"
                self._replace(child, "max-memory", detail)

    # -- scale and stop ----------------------------------------------------------

    def scale(self, wanted: int) -> None:
        """Run `wanted` workers: start the missing ones, drain the highest-numbered extras."""
        self.wanted = max(1, wanted)
        self.output.say(f"scaling web to {self.wanted} workers")
        names = {c.name for c in self.workers.values() if c.serving()}
        for index in range(1, self.wanted + 1):
            name = f"web.{index}"
            if name not in names and name not in self.respawns:
                self._spawn(name)
        for child in list(self.workers.values()):
            if _index(child.name) > self.wanted and child.serving():
                self.metrics.restart("web", "scale")
                self._drain(child, "scale")

    def restart(self, name: str) -> str:
        """Replace worker `name` (the replacement starts first, as on a reload)."""
        child = next((c for c in self.workers.values() if c.name == name), None)
        if child is None or child.state is not State.READY:
            return f"{name} is not running; nothing to restart"
        if self._replace(child, "restart", "was asked to restart") is None:
            return f"{name} is already being replaced"
        return f"restarting {name}"

    def readiness(self) -> tuple[bool, str]:
        """Ready when every wanted worker is ready (and corral is not stopping)."""
        if self.stopping:
            return False, "stopping"
        ready = {c.name for c in self.workers.values() if c.state is State.READY}
        wanted = {f"web.{index}" for index in range(1, self.wanted + 1)}
        if wanted <= ready:
            return True, ""
        return False, f"web: {len(wanted & ready)} of {self.wanted} workers ready"

    def status(self) -> list[dict[str, Any]]:
        """The zygotes and the workers as `corral status` shows them."""
        rows = [
            status_row(
                "web.zygote",
                "web",
                "zygote",
                zygote.pid,
                "retiring" if zygote.retiring else "running",
                unix_time(zygote.started_at),
            )
            for zygote in self.zygotes.values()
        ]
        for child in sorted(self.workers.values(), key=lambda c: (_index(c.name), c.key)):
            rows.append(
                status_row(
                    child.name,
                    "web",
                    "worker",
                    child.pid,
                    child.state.value,
                    unix_time(child.started_at),
                    self.history.get(child.name),
                    child.requests,
                )
            )
        return rows

    async def stop(self) -> None:
        """Drain every worker (killed at --graceful-timeout), then let the zygotes go."""
        self.stopping = True
        if self.reloading is not None:
            self.reloading.cancel()
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
        if self.watcher is not None:
            self.watcher.cancel()
        await asyncio.gather(*(zygote.exit() for zygote in list(self.zygotes.values())))
        for key in list(self.links):
            self._close_link(key)
        os.close(self.access_fd)

    def kill(self) -> None:
        """Stop at once: SIGKILL every worker (the zygotes follow in stop())."""
        self.stopping = True
        for child in self.workers.values():
            child.kill_at = time.monotonic()
            self._signal(child, signal.SIGKILL)


def _index(name: str) -> int:
    return int(name.rpartition(".")[2])
