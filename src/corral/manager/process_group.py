"""A declared process group ([processes.NAME]): N replicas of a callable or a command.

Each replica is NAME.1..NAME.N, sees CORRAL_REPLICA=i, and is restarted by
its `restart` policy (always, on-failure, never) with the same backoff as web
workers (`Respawner`). Stopping sends `stop_signal` to the replica's whole
process group, then SIGKILL after `stop_timeout`. A reload (or a restart of
the group) restarts the replicas one at a time, so they run the current
code and declaration.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from typing import Any

from corral.child.runner import IMPORT_ONLY
from corral.manager.background import Background
from corral.manager.child import Child, History, State, child_row
from corral.manager.exits import describe_exit
from corral.manager.group import Group, Refused
from corral.manager.launcher_handle import LauncherHandle
from corral.manager.metrics import Metrics
from corral.manager.output import Output
from corral.manager.respawn import Respawner
from corral.manager.spawn import Spawned, argv_for, signal_group, spawn
from corral.settings import ProcessConfig
from corral.settings.base import MAX_MEMBERS
from corral.words import counted


class ProcessGroup(Group):
    stop_phase = 1

    def __init__(
        self,
        name: str,
        config: ProcessConfig,
        env: dict[str, str],
        output: Output,
        metrics: Metrics,
        identity: dict[str, Any],  # corral.posix.identity: who the replicas run as
        launcher: LauncherHandle,  # starts each replica
        first: int = 1,
    ) -> None:
        self.name = name
        self.launcher = launcher
        self.identity = identity
        self.first = first  # the first replica's number: `--only consumer.2` runs consumer.2
        self.config = config
        self.env = env  # the system's environment ([env], env_file)
        self.output = output
        self.metrics = metrics
        self.wanted = config.replicas
        self.children: dict[int, Child] = {}  # each replica's latest child, by replica number
        self.history: dict[int, History] = {}
        self.respawner = Respawner()
        self.keys = itertools.count(1)
        self.background = Background()  # each replica's watch, for as long as it runs
        self.work = Background()  # a reload, a restart, a scale: what `settle` waits for
        self.stopping = False

    @property
    def size(self) -> int:
        return self.wanted

    async def start(self) -> None:
        for index in self._numbers(self.wanted):
            await self._start(index)

    def _member(self, index: int) -> str:
        return f"{self.name}.{index}"

    def _numbers(self, count: int) -> range:
        """The replica numbers of `count` replicas: `--only consumer.2` runs consumer.2 alone."""
        return range(self.first, self.first + count)

    async def _start(self, index: int, cause: str | None = None) -> None:
        if self.stopping or index not in self._numbers(self.wanted):
            return
        name = self._member(index)
        history = self.history.setdefault(index, History())
        history.starts += 1
        if cause is not None:
            history.last_cause = cause
        child = self.children[index] = Child(next(self.keys), name)
        env = {**self.env, **self.config.env, "CORRAL_REPLICA": str(index)}
        try:
            process = await spawn(
                self.launcher,
                name,
                argv_for(name, self.config),
                self.output,
                env,
                self.config.cwd,
                identity=self.identity,
                stop=(self.config.stop_signal, self.config.stop_timeout),
            )
        except OSError as error:
            self.output.say(f"{name} cannot start: {error}")
            child.to(State.STOPPED)
            self._after_exit(index, child, 127)
            return
        except asyncio.CancelledError:  # corral stops before this replica has started
            child.to(State.STOPPED)
            raise
        child.process, child.pid = process, process.pid
        stopped_meanwhile = child.state is State.DRAINING or self.stopping
        if not stopped_meanwhile:
            child.to(State.RUNNING)
        self.output.say(f"{name} started (pid {process.pid})")
        self.background.start(self._watch(index, child, process))
        if stopped_meanwhile:  # asked to stop (a stop, a scale down) while it started
            await self._stop_children([child], child.stop_reason or "stop")

    async def _watch(self, index: int, child: Child, process: Spawned) -> None:
        code = await process.wait()
        self.metrics.worker_exited(process.pid)
        planned = self.stopping or child.stop_reason is not None
        child.to(State.STOPPED)
        self.history[index].last_exit = describe_exit(code)
        if planned:
            why = f": {child.stop_reason}" if child.stop_reason not in (None, "stop") else ""
            self.output.say(f"{child.name} stopped (pid {child.pid}, {describe_exit(code)}){why}")
            return
        self.output.say(f"{child.name} exited (pid {child.pid}, {describe_exit(code)})")
        self._after_exit(index, child, code)

    def _after_exit(self, index: int, child: Child, code: int) -> None:
        """Restart replica `index` as its policy says, after its backoff; or give it up."""
        policy = self.config.restart
        if policy == "never" or (policy == "on-failure" and code == 0):
            self.output.say(f"{child.name} is not restarted (restart = {policy!r})")
            if code != 0:
                child.to(State.FAILED)
            return
        self.metrics.restart(self.name, "crash")
        cause = describe_exit(code)
        delay = self.respawner.schedule(
            child.name,
            child.served_for(),
            lambda: self.background.start(self._start(index, cause)),
        )
        if delay:
            child.to(State.BACKOFF)
            self.output.say(f"{child.name} restarts in {delay:g}s (it keeps exiting)")

    def _running(self, index: int) -> Child | None:
        """Replica `index`'s child if it runs (a starting one runs the current code already)."""
        child = self.children.get(index)
        return child if child is not None and child.state is State.RUNNING else None

    # -- reload, restart, scale --------------------------------------------------------

    def reload(self) -> str:
        """Restart the replicas one at a time, so that they run the current code.

        A `call` target that no longer imports stops the reload before any
        replica does: they go on with the code they run, as web's workers do
        when a new zygote cannot load the app.
        """
        self.work.start(self._reload())
        return f"reloading {self.name}"

    async def _reload(self) -> None:
        if self.config.call is not None and not await self._current_code_imports():
            self.output.say(
                f"reload of {self.name} failed: {self.config.call!r} cannot be imported "
                f"(see above); its replicas keep running the code they run"
            )
            return
        await self._roll("reload")

    async def _current_code_imports(self) -> bool:
        """Whether the call target imports, in a fresh interpreter as a replica would."""
        argv = [*argv_for(self.name, self.config), IMPORT_ONLY]
        env = {**self.env, **self.config.env}
        try:
            check = await spawn(
                self.launcher, self.name, argv, self.output, env, self.config.cwd,
                identity=self.identity,
            )  # fmt: skip
        except OSError as error:
            self.output.say(f"{self.name}: cannot check the current code: {error}")
            return False
        return await check.wait() == 0

    async def _roll(self, reason: str) -> None:
        for index in sorted(self.children):
            await self._restart(index, reason)
        await self._scale_to(self.wanted)

    def restart(self, member: str | None) -> str:
        """Restart one replica (NAME.N), or every replica one at a time."""
        if member is None:
            self.work.start(self._roll("restart"))
            return f"restarting {self.name} (one replica at a time)"
        group, _, index = member.rpartition(".")
        if group != self.name or not index.isdigit() or self._running(int(index)) is None:
            raise Refused(f"no running process named {member!r}", unknown=True)
        self.work.start(self._restart(int(index), "restart"))
        return f"restarting {member}"

    async def _restart(self, index: int, reason: str) -> None:
        """Stop replica `index` (gracefully, as on stop) and start it again."""
        child = self._running(index)
        if self.stopping or child is None:
            return
        self.metrics.restart(self.name, reason)
        await self._stop_children([child], reason)
        await self._start(index, reason)

    def scale(self, count: int) -> str:
        """Run `count` replicas: start the missing ones, stop the highest-numbered extras."""
        if count < 0:
            raise Refused(f"{self.name}: the number of replicas cannot be negative")
        if count > MAX_MEMBERS:
            raise Refused(f"{self.name}: {count} replicas is more than corral runs ({MAX_MEMBERS})")
        self.output.say(f"scaling {self.name} to {counted(count, 'replica')}")
        self.work.start(self._scale_to(count))
        return f"{self.name} to {count}"

    async def _scale_to(self, count: int) -> None:
        self.wanted = count
        extra = [c for index, c in self.children.items() if index not in self._numbers(count)]
        for child in extra:
            self.respawner.cancel(child.name)
            if child.state is State.BACKOFF:
                child.to(State.STOPPED)
            elif child.serving():
                self.metrics.restart(self.name, "scale")
                self.history[int(child.name.rpartition(".")[2])].last_cause = "scale"
        for index in self._numbers(count):
            if self._running(index) is None and not self.respawner.pending(self._member(index)):
                await self._start(index)
        await self._stop_children([c for c in extra if c.serving()], "scale")

    async def settle(self) -> None:
        await self.work.wait()

    async def apply(self, declaration: ProcessConfig, env: dict[str, str]) -> None:
        """Take a changed declaration and environment; each replica gets it as it restarts.

        A changed number of replicas replaces a count set by `scale`.
        """
        if declaration.replicas != self.config.replicas:
            self.wanted = declaration.replicas
        self.config, self.env = declaration, env

    # -- status and stop -----------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Each replica as `corral status` shows it (pid, state, uptime, restarts, last exit)."""
        return [
            child_row(child, self.name, "replica", self.history.get(index))
            for index, child in sorted(self.children.items())
            if index in self._numbers(self.wanted) or child.is_live()
        ]

    async def stop(self) -> None:
        """Send stop_signal to every replica; SIGKILL those still there after stop_timeout."""
        self.stopping = True
        self.respawner.cancel_all()
        for child in self.children.values():
            if child.state is State.BACKOFF:
                child.to(State.STOPPED)
        await self._stop_children([c for c in self.children.values() if c.serving()], "stop")
        await self.background.wait()

    def kill(self) -> None:
        self.stopping = True
        for child in self.children.values():
            if child.is_live() and child.process is not None:
                signal_group(child.process, signal.SIGKILL)

    async def _stop_children(self, children: list[Child], reason: str) -> None:
        stop_signal = signal.Signals[self.config.stop_signal]
        processes = []
        for child in children:
            if child.state is not State.DRAINING:
                child.drain(reason, time.monotonic() + self.config.stop_timeout)
            if child.process is None:
                continue  # still starting: `_start` stops it once it has a process
            signal_group(child.process, stop_signal)
            processes.append(child.process)
        waiting = [asyncio.ensure_future(p.wait()) for p in processes]
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=self.config.stop_timeout)
            for process in processes:
                if process.returncode is None:
                    signal_group(process, signal.SIGKILL)
            if late:
                await asyncio.wait(late)
