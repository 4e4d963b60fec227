"""The web group: zygotes, and the workers they fork, supervised.

What it keeps true: `wanted` workers named web.1..web.N serve. A worker that
dies is replaced under the same name, at once after a stable run and with a
doubling delay while deaths repeat (`Respawner`). A worker whose event loop
stops answering gets SIGABRT (its stack lands in the log), then SIGKILL. An
app that cannot start stops corral once, not in a restart storm.

Replacing a live worker (reload, restart, --max-requests, --max-memory)
always starts the replacement first and drains the old worker only once the
replacement is ready, so capacity never drops. A reload does this for every
worker with a new zygote generation, which has imported the current code
and settings; if the new code cannot load or start, the old workers keep
serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import psutil

from corral.exit_codes import APP_FAILED, FAILURE
from corral.ipc.messages import (
    Draining,
    Exited,
    Forked,
    ForkWorker,
    Heartbeat,
    Message,
    Ready,
    Recycle,
    TakeBacklogThenStop,
    WebZygoteSpec,
)
from corral.manager import listeners
from corral.manager.background import Background
from corral.manager.child import (
    Child,
    History,
    State,
    child_row,
    signal_child,
)
from corral.manager.exit_watch import watch_exit
from corral.manager.exits import describe_exit
from corral.manager.group import Group, Refused
from corral.manager.launcher_handle import LauncherHandle
from corral.manager.metrics import Metrics
from corral.manager.output import Output
from corral.manager.respawn import Respawner
from corral.manager.zygote_handle import AppFailed, ZygoteHandle
from corral.manager.zygote_slot import ZygoteSlot
from corral.settings import WebConfig
from corral.settings.base import MAX_MEMBERS
from corral.units import format_size
from corral.words import counted

WATCH_INTERVAL = 0.1
MEMORY_CHECK_INTERVAL = 1.0
ABORT_GRACE = 2.0  # between SIGABRT (stack dump) and SIGKILL
STUCK = ("timeout", "boot-timeout")

__all__ = ["AppFailed", "WebGroup"]


class WebGroup(Group):
    name = "web"
    stop_phase = 0

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
        on_serving: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.env = env  # the system's environment ([env], env_file) and [web] env
        self.output = output
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.on_serving = on_serving  # called once, when the first worker is ready
        self.wanted = config.workers
        self.children: dict[int, Child] = {}  # the live workers, by key
        self.resting: dict[str, Child] = {}  # names waiting out a backoff, or failed
        self.history: dict[str, History] = {}
        self.respawner = Respawner()
        self.keys = itertools.count(1)
        self.access_fd = output.access_pipe()  # the workers write their access lines into it
        self.zygotes = ZygoteSlot(
            "web",
            "corral.child.web_zygote",
            launcher,
            output,
            spec=self._zygote_spec,
            env=lambda: self.env,
            identity=identity,  # the user and group the app runs as (see posix.identity)
            on_message=self._on_zygote_message,
            on_lost=self._on_zygote_lost,
            on_replaced=self._on_zygote_replaced,
            on_failed=self._on_zygote_failed,
        )
        self.serving = False
        self.stopping = False
        self.all_stopped = asyncio.Event()
        self.reloading: asyncio.Task[None] | None = None  # a reload's or a restart's roll
        self.background = Background()
        self.watcher: asyncio.Task[None] | None = None
        self.app_line = ""  # which app the workers serve, said when it changes
        # A WSGI worker's longest-running request, by key: ([seconds, thread, request], when).
        self.longest: dict[int, tuple[list[Any], float]] = {}

    @property
    def size(self) -> int:
        return self.wanted

    # -- start ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the zygote and the first worker; the others follow once it is ready.

        Booting one worker first means a broken app fails once, with one
        traceback, rather than N times at once. AppFailed if the app cannot load.
        """
        self.zygotes.promote(await self.zygotes.launch())
        self._spawn("web.1")
        self.watcher = asyncio.create_task(self._watch())

    def _zygote_spec(self) -> tuple[Message, list[int]]:
        spec = WebZygoteSpec(
            name="web.zygote",
            config=self.config.model_dump(mode="json"),
            stop_timeout=self.config.graceful_timeout + 1,
            log_format="json" if self.output.json else "text",
            color=self.output.access_color,
        )
        return spec, [self.access_fd, *(s.fileno() for s in self.sockets)]

    # -- messages --------------------------------------------------------------

    def _on_zygote_message(self, zygote: ZygoteHandle, message: Message) -> None:
        if isinstance(message, Forked):
            self._on_forked(message.key, message.pid)
        elif isinstance(message, Exited):
            self._on_exited(zygote, message.pid, message.code)

    def _on_worker_message(self, child: Child, message: Message) -> None:
        if isinstance(message, Heartbeat):
            child.heartbeat(message.requests)
            if message.longest:
                self.longest[child.key] = (message.longest, time.monotonic())
            else:
                self.longest.pop(child.key, None)
            if child.pid is not None:
                self.metrics.worker_stats(child.name, child.pid, message.stats)
        elif child.key not in self.children:
            return
        elif isinstance(message, Ready):
            if message.app and message.app != self.app_line:
                self.app_line = message.app
                self.output.say(f"web: {message.app}")
            self._on_ready(child)
        elif isinstance(message, Draining):
            if not child.stopped_accepting.done():
                child.stopped_accepting.set_result(None)
        elif isinstance(message, Recycle):
            self._replace(child, message.reason, f"served {counted(message.requests, 'request')}")

    # -- transitions -------------------------------------------------------------

    def _spawn(self, name: str, replaces: Child | None = None, cause: str | None = None) -> None:
        """Ask the current zygote for worker `name`; `replaces` drains once it is ready."""
        zygote = self.zygotes.current
        if zygote is None or zygote.link is None:
            return  # the zygote is being replaced; its successor starts every worker
        child = Child(next(self.keys), name, zygote.generation)
        ours, theirs = socket.socketpair()
        log_read, log_write = os.pipe()
        try:
            zygote.fork(ForkWorker(key=child.key, name=name), [theirs.fileno(), log_write])
        except OSError:  # it has just died; its exit, on its way, starts every worker again
            ours.close()
            os.close(log_read)
            return
        finally:
            theirs.close()
            os.close(log_write)
        history = self.history.setdefault(name, History())
        history.starts += 1
        if cause is not None:
            history.last_cause = cause
        self.resting.pop(name, None)
        if replaces is not None:
            child.replaces, replaces.replaced_by = replaces, child
        self.children[child.key] = child
        child.listen(ours, self._on_worker_message)
        child.pump = self.output.attach(log_read, name)

    def _on_forked(self, key: int, pid: int) -> None:
        child = self.children.get(key)
        if child is None:
            return
        child.pid = pid
        if child.pump is not None:
            child.pump.pid = pid
        self.output.say(f"{child.name} started (pid {pid})")
        if child.kill_at is not None and child.kill_at <= time.monotonic():
            signal_child(child, signal.SIGKILL)  # stopped at once before its pid was known
        elif child.state is State.DRAINING:  # asked to stop before its pid was known
            signal_child(child, signal.SIGTERM)

    def _on_ready(self, child: Child) -> None:
        if child.state is not State.STARTING:  # asked to stop while it booted: it drains
            return
        child.to(State.READY)
        old, child.replaces = child.replaces, None
        if old is not None and old.serving():
            self._drain(old, old.replace_reason or "replaced")
        if not self.serving:
            self.serving = True
            self._announce()
            self.on_serving()
            for index in range(2, self.wanted + 1):
                self._spawn(f"web.{index}")

    def _announce(self) -> None:
        tls = self.config.certfile is not None
        for sock in self.sockets:
            address = listeners.Address(fd=sock.fileno())
            url = listeners.url(address, sock, tls)
            self.output.say(f"listening on {url} ({counted(self.wanted, 'worker')})")
        for note in self.config.unenforced_limits():
            self.output.say(note)

    def _on_exited(self, zygote: ZygoteHandle, pid: int, code: int | None) -> None:
        """Worker `pid` of `zygote` exited with `code` (None: unknown, its zygote had exited)."""
        child = next((c for c in self.children.values() if c.pid == pid), None)
        if child is None:
            return
        child.read_last_messages()  # its last heartbeat carries its final counts
        if child.pump is not None:
            child.pump.read_available()  # its last lines, before the line saying it exited
        self.metrics.worker_exited(pid)
        exit_cause = describe_exit(code) if code is not None else "exit status unknown"
        cause = exit_cause
        history = self.history[child.name]
        history.last_exit = cause
        stuck = child.stop_reason in STUCK
        if stuck:
            cause += f" ({child.stop_reason}: its stack is above)"
        was_draining = child.state is State.DRAINING
        booted = child.ready_at is not None
        child.to(State.STOPPED)
        del self.children[child.key]
        self.zygotes.retire_if_idle(zygote, self._has_children(zygote))
        if was_draining or self.stopping:
            why = f": {child.stop_reason}" if child.stop_reason not in (None, "stop") else ""
            self.output.say(f"{child.name} stopped (pid {pid}, {cause}){why}")
            if self.stopping and not self.children:
                self.all_stopped.set()
            return
        self.output.say(f"{child.name} exited (pid {pid}, {cause})")
        if child.replaces is not None:
            self.output.say(f"{child.name} keeps its old worker: the replacement did not start")
            child.replaces.replaced_by = None
            return
        if child.replaced_by is not None:
            child.replaced_by.replaces = None  # it takes over as it is
            return
        if not booted and not self.serving:  # the first worker died before it ever served
            self.output.say(f"the app cannot start: see {child.name}'s output above")
            child.to(State.FAILED)
            self.resting[child.name] = child
            self.on_fatal(APP_FAILED)
            return
        self.metrics.restart("web", "timeout" if stuck else "crash")
        restart_cause = "heartbeat timeout" if child.stop_reason == "timeout" else exit_cause
        delay = self.respawner.schedule(
            child.name, child.served_for(), lambda: self._respawn(child.name, restart_cause)
        )
        if delay:
            child.to(State.BACKOFF)
            self.resting[child.name] = child
            self.output.say(f"{child.name} restarts in {delay:g}s (it keeps dying)")

    def _respawn(self, name: str, cause: str) -> None:
        running = any(c.name == name and c.serving() for c in self.children.values())
        if not self.stopping and _index(name) <= self.wanted and not running:
            self._spawn(name, cause=cause)

    def _has_children(self, zygote: ZygoteHandle) -> bool:
        return any(c.generation == zygote.generation for c in self.children.values())

    def _replace(self, old: Child, reason: str, detail: str) -> Child | None:
        """Start a replacement for `old`; `old` drains once the replacement is ready."""
        if old.state is not State.READY or old.replaced_by is not None or self.stopping:
            return None
        old.replace_reason = reason
        self.metrics.restart("web", reason)
        self.output.say(f"{old.name} (pid {old.pid}) {detail}: replacing it ({reason})")
        self._spawn(old.name, replaces=old, cause=reason)
        return old.replaced_by

    def _drain(self, child: Child, reason: str) -> None:
        """Stop `child` gracefully: SIGTERM, so it leaves the accept queue to the others.

        On a full stop there are no others: a serving worker is asked instead,
        over its channel, to answer what waits in the queue before it drains.
        """
        serving = child.state is State.READY
        child.drain(reason, time.monotonic() + self.config.graceful_timeout)
        if reason == "stop" and serving and child.send(TakeBacklogThenStop()):
            return
        signal_child(child, signal.SIGTERM)

    # -- zygotes -----------------------------------------------------------------

    def _on_zygote_lost(self, zygote: ZygoteHandle) -> None:
        """A zygote exited: its workers get the parent-death signal and drain by themselves.

        Nobody will report their exits now, so each is watched by its pid, and stays
        listed as draining until it exits: its last counts are read then.
        """
        if zygote.pid is not None:
            self.metrics.worker_exited(zygote.pid)
        for child in [c for c in self.children.values() if c.generation == zygote.generation]:
            if child.pid is None:  # never forked: there is nothing to wait for
                child.to(State.STOPPED)
                del self.children[child.key]
                continue
            if child.state is not State.DRAINING:
                child.drain("its zygote exited", time.monotonic() + self.config.graceful_timeout)
            watch_exit(child.pid, functools.partial(self._on_exited, zygote, child.pid, None))
        if self.stopping:
            if not self.children:
                self.all_stopped.set()
        elif zygote is self.zygotes.current:
            self._call_off_restarts()  # the new zygote starts every worker

    def _on_zygote_failed(self) -> None:
        """The zygote that replaces a dead one cannot load the app: nothing can serve now."""
        self.output.say(
            "error: web.zygote's replacement cannot load the app (see its output above); stopping"
        )
        self.on_fatal(APP_FAILED if not self.serving else FAILURE)

    def _on_zygote_replaced(self) -> None:
        for index in range(1, self.wanted + 1):
            self._spawn(f"web.{index}")

    def _call_off_restarts(self) -> None:
        self.respawner.cancel_all()
        for name, child in list(self.resting.items()):
            if child.state is State.BACKOFF:
                child.to(State.STOPPED)
                del self.resting[name]

    # -- reload --------------------------------------------------------------------

    def reload(self) -> str:
        """Roll every worker over to a new zygote with the current code, one at a time."""
        if self.stopping:
            return "web: not reloaded, corral is stopping"
        if self.reloading is not None and not self.reloading.done():
            self.output.say("a reload is already under way; this one is ignored")
            return "web: a reload is already under way"
        self.reloading = asyncio.get_running_loop().create_task(self._reload())
        return "reloading web"

    async def _reload(self) -> None:
        self.output.say("reloading: loading the current code in a new zygote")
        try:
            new = await self.zygotes.launch()
        except AppFailed:
            self.output.say(
                "reload failed: the new code cannot be loaded (see web.zygote's output above); "
                "the running workers keep serving the old code"
            )
            self.metrics.reload("failed")
            return
        old = self.zygotes.promote(new)
        self._scale_to(self.wanted)
        rolled = 0
        for child in sorted(self._older_than(new), key=lambda c: _index(c.name)):
            if self.stopping:
                return
            if child.key not in self.children or not child.serving():
                continue
            replacement = self._replace(child, "reload", "runs the old code")
            if replacement is None or not await replacement.became_ready:
                self._abandon_reload(new, old, rolled)
                return
            rolled += 1
        if old is not None:
            self.zygotes.retire_if_idle(old, self._has_children(old))
        await self._until_old_workers_stop_accepting(new)
        current = [c for c in self.children.values() if c.generation == new.generation]
        running = sum(1 for c in current if c.serving())  # the rolled and the newly scaled
        self.output.say(f"reload complete: {counted(running, 'worker')} on the new code")
        self.metrics.reload("ok")

    async def _until_old_workers_stop_accepting(self, new: ZygoteHandle) -> None:
        """After this, every new connection is accepted by a worker running the new code."""
        waiters = [c.stopped_accepting for c in self._older_than(new)]
        if waiters:
            await asyncio.wait(waiters, timeout=self.config.graceful_timeout)

    def _older_than(self, zygote: ZygoteHandle) -> list[Child]:
        return [c for c in self.children.values() if c.generation < zygote.generation]

    def _abandon_reload(self, new: ZygoteHandle, old: ZygoteHandle | None, rolled: int) -> None:
        self.metrics.reload("failed")
        if rolled == 0 and old is not None:
            self.zygotes.promote(old)
            self.zygotes.retire_if_idle(new, self._has_children(new))
            self.output.say(
                "reload failed: the new code did not start (see above); "
                "every worker keeps serving the old code"
            )
        else:
            self.output.say(
                f"reload failed part way: {counted(rolled, 'worker')} on the new code, "
                f"{len(self._older_than(new))} the old"
            )

    async def settle(self) -> None:
        if self.reloading is not None:
            await asyncio.wait([self.reloading])

    async def apply(self, declaration: WebConfig, env: dict[str, str]) -> None:
        """Take changed [web] settings and environment; the next reload's zygote uses them.

        A changed worker count replaces a count set by `scale` (or TTIN/TTOU).
        """
        if declaration.workers != self.config.workers:
            self.wanted = declaration.workers
        self.config, self.env = declaration, env

    # -- supervision -------------------------------------------------------------

    async def _watch(self) -> None:
        """Escalate kills that are due, abort stuck workers, recycle oversized ones."""
        next_memory_check = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            for child in list(self.children.values()):
                if child.kill_at is not None and now >= child.kill_at:
                    child.kill_at = None
                    signal_child(child, signal.SIGKILL)
                elif child.stop_reason is not None or child.pid is None:
                    continue
                elif (
                    child.state is State.STARTING
                    and now - child.started_at > self.config.boot_timeout
                ):
                    self._abort(child, "boot-timeout", self.config.boot_timeout)
                elif child.state is State.READY and now - child.last_seen > self.config.timeout:
                    self._abort(child, "timeout", self.config.timeout)
                elif child.state is State.READY and (stuck := self._stuck_request(child, now)):
                    self._abort(child, "timeout", self.config.timeout, stuck)
            for key in self.longest.keys() - self.children.keys():
                del self.longest[key]
            if self.config.max_memory is not None and now >= next_memory_check:
                next_memory_check = now + MEMORY_CHECK_INTERVAL
                self._recycle_oversized(self.config.max_memory)

    def _stuck_request(self, child: Child, now: float) -> str | None:
        """A WSGI request that has run in a thread for more than --timeout, described; or None.

        Its thread does not block the event loop, so the heartbeat goes on:
        the heartbeat's age of the longest request is what counts, as
        gunicorn's arbiter counts a sync worker's request.
        """
        longest = self.longest.get(child.key)
        if longest is None:
            return None
        (seconds, thread, request), received = longest
        if seconds + (now - received) <= self.config.timeout:
            return None
        return f"has run {request} for {self.config.timeout:g}s in thread {thread}"

    def _abort(self, child: Child, reason: str, limit: float, stuck: str | None = None) -> None:
        what = "has not become ready" if reason == "boot-timeout" else "has not answered"
        whose = "its stack" if stuck is None else "every thread's stack"
        self.output.say(
            f"{child.name} (pid {child.pid}) {stuck or f'{what} for {limit:g}s'}: "
            f"sending SIGABRT to log {whose}, then SIGKILL"
        )
        child.abort(reason, time.monotonic() + ABORT_GRACE)
        signal_child(child, signal.SIGABRT)

    def _recycle_oversized(self, limit: int) -> None:
        for child in list(self.children.values()):
            if child.state is not State.READY or child.replaced_by is not None:
                continue
            try:
                rss = psutil.Process(child.pid).memory_info().rss
            except psutil.Error:
                continue
            if rss > limit:
                detail = f"uses {format_size(rss)}, over --max-memory {format_size(limit)}"
                self._replace(child, "max-memory", detail)

    # -- scale, restart, status --------------------------------------------------

    def scale(self, count: int) -> str:
        """Run `count` workers: start the missing ones, drain the highest-numbered extras."""
        if count < 1:
            raise Refused("web needs at least 1 worker")
        if count > MAX_MEMBERS:
            raise Refused(f"web: {count} workers is more than corral runs ({MAX_MEMBERS})")
        self.output.say(f"scaling web to {counted(count, 'worker')}")
        self._scale_to(count)
        return f"web to {count}"

    def _scale_to(self, count: int) -> None:
        self.wanted = count
        names = {c.name for c in self.children.values() if c.serving()}
        for index in range(1, count + 1):
            name = f"web.{index}"
            if name not in names and not self.respawner.pending(name):
                self._spawn(name)
        for child in list(self.children.values()):
            if _index(child.name) > count and child.serving():
                self.metrics.restart("web", "scale")
                self.history[child.name].last_cause = "scale"
                self._drain(child, "scale")
        for name in [name for name in self.resting if _index(name) > count]:
            self.respawner.cancel(name)
            if self.resting[name].state is State.BACKOFF:
                self.resting[name].to(State.STOPPED)
            del self.resting[name]

    def restart(self, member: str | None) -> str:
        """Replace worker `member` (the replacement starts first); every worker, one at a time,
        if None. The replacements come from the current zygote: the same code (a reload is
        what loads new code)."""
        if member is None:
            if self.stopping:
                return "web: not restarted, corral is stopping"
            if self.reloading is not None and not self.reloading.done():
                return "web: a reload or a restart is already under way"
            self.reloading = asyncio.get_running_loop().create_task(self._restart_all())
            return "restarting web (one worker at a time, each replacement first)"
        if not member.startswith("web.") or not member[4:].isdigit():
            raise Refused(f"no process named {member!r}", unknown=True)
        child = next((c for c in self.children.values() if c.name == member), None)
        if child is None or child.state is not State.READY:
            return f"{member} is not running; nothing to restart"
        if self._replace(child, "restart", "was asked to restart") is None:
            return f"{member} is already being replaced"
        return f"restarting {member}"

    async def _restart_all(self) -> None:
        serving = [c for c in self.children.values() if c.serving()]
        replaced = 0
        for child in sorted(serving, key=lambda c: _index(c.name)):
            if self.stopping:
                return
            if child.key not in self.children or not child.serving():
                continue
            replacement = self._replace(child, "restart", "was asked to restart")
            if replacement is None:
                continue  # already being replaced
            if not await replacement.became_ready:
                self.output.say(
                    f"restart of web stopped after {counted(replaced, 'worker')}: "
                    f"{replacement.name}'s replacement did not become ready"
                )
                return
            replaced += 1
        self.output.say(f"restart of web complete: {counted(replaced, 'worker')} replaced")

    def readiness(self) -> tuple[bool, str]:
        """Ready when every wanted worker is ready (and corral is not stopping)."""
        if self.stopping:
            return False, "stopping"
        ready = {c.name for c in self.children.values() if c.state is State.READY}
        wanted = {f"web.{index}" for index in range(1, self.wanted + 1)}
        if wanted <= ready:
            return True, ""
        return False, f"web: {len(wanted & ready)} of {counted(self.wanted, 'worker')} ready"

    def status(self) -> list[dict[str, Any]]:
        """The zygotes, the workers, and the names waiting out a backoff or failed."""
        rows = self.zygotes.status()
        children = [*self.children.values(), *self.resting.values()]
        for child in sorted(children, key=lambda c: (_index(c.name), c.key)):
            rows.append(child_row(child, "web", "worker", self.history.get(child.name)))
        return rows

    # -- stop ----------------------------------------------------------------------

    async def stop(self) -> None:
        """Drain every worker (killed at --graceful-timeout), then let the zygotes go."""
        self.stopping = True
        if self.reloading is not None:
            self.reloading.cancel()
        self._call_off_restarts()
        for child in list(self.children.values()):
            if child.state is not State.DRAINING:
                self._drain(child, "stop")
        if self.children:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self.all_stopped.wait(), self.config.graceful_timeout + ABORT_GRACE + 1
                )
        if self.watcher is not None:
            self.watcher.cancel()
        await self.zygotes.stop()
        for child in self.children.values():
            child.close_link()
        os.close(self.access_fd)

    def kill(self) -> None:
        """Stop at once: SIGKILL every worker (the zygotes follow in stop())."""
        self.stopping = True
        for child in self.children.values():
            child.kill_at = time.monotonic()
            signal_child(child, signal.SIGKILL)


def _index(name: str) -> int:
    return int(name.rpartition(".")[2])
