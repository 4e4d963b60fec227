"""A declared process group ([processes.NAME]): N replicas of a callable or a command.

Each replica is NAME.1..NAME.N, sees CORRAL_REPLICA=i, and is restarted by
its `restart` policy (always, on-failure, never) with the same backoff as web
workers. Stopping sends `stop_signal`, then SIGKILL after `stop_timeout`.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from corral.manager.background import Background
from corral.manager.backoff import Backoff
from corral.manager.children import Child, History, State, status_row, unix_time
from corral.manager.metrics import Metrics
from corral.manager.output import Output
from corral.manager.spawn import argv_for, signal_group, spawn
from corral.posix import describe_exit
from corral.settings import ProcessConfig


class ProcessGroup:
    def __init__(
        self,
        name: str,
        config: ProcessConfig,
        env: dict[str, str],
        output: Output,
        metrics: Metrics,
        identity: dict[str, Any],  # corral.posix.identity: who the replicas run as
    ) -> None:
        self.name = name
        self.identity = identity
        self.config = config
        self.wanted = config.replicas
        self.metrics = metrics
        self.history: dict[int, History] = {}
        self.env = env
        self.output = output
        self.replicas: dict[int, Child] = {}
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.backoffs: dict[int, Backoff] = {}
        self.respawns: dict[int, asyncio.TimerHandle] = {}
        self.background = Background()
        self.stopping = False

    async def start(self) -> None:
        for index in range(1, self.wanted + 1):
            await self._start(index)

    async def _start(self, index: int) -> None:
        self.respawns.pop(index, None)
        if self.stopping or index > self.wanted:
            return
        self.history.setdefault(index, History()).starts += 1
        name = f"{self.name}.{index}"
        env = {**self.env, **self.config.env, "CORRAL_REPLICA": str(index)}
        try:
            process = await spawn(
                name,
                argv_for(name, self.config),
                self.output,
                env,
                self.config.cwd,
                identity=self.identity,
            )
        except OSError as error:
            self.output.say(f"{name} cannot start: {error}")
            self._schedule_restart(index, None, 127)
            return
        child = Child(key=process.pid, name=name, pid=process.pid)
        child.ready()
        self.replicas[index] = child
        self.processes[index] = process
        self.output.say(f"{name} started (pid {process.pid})")
        self.background.start(self._watch(index, child, process))

    async def _watch(self, index: int, child: Child, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        served_for = child.uptime()
        child.stopped()
        self.history[index].last_exit = describe_exit(code)
        if self.replicas.get(index) is child:  # a reload may have started its successor
            del self.replicas[index]
            del self.processes[index]
        if self.stopping or child.stop_reason is not None:
            why = f": {child.stop_reason}" if child.stop_reason is not None else ""
            self.output.say(f"{child.name} stopped (pid {child.pid}, {describe_exit(code)}){why}")
            return
        self.output.say(f"{child.name} exited (pid {child.pid}, {describe_exit(code)})")
        self.metrics.restart(self.name, "crash")
        self._schedule_restart(index, served_for, code)

    def _schedule_restart(self, index: int, served_for: float | None, code: int) -> None:
        policy = self.config.restart
        if policy == "never" or (policy == "on-failure" and code == 0):
            self.output.say(f"{self.name}.{index} is not restarted (restart = {policy!r})")
            return
        delay = self.backoffs.setdefault(index, Backoff()).delay_after_death(served_for)
        if delay:
            self.output.say(f"{self.name}.{index} restarts in {delay:g}s (it keeps exiting)")
        loop = asyncio.get_running_loop()
        self.respawns[index] = loop.call_later(
            delay, lambda: self.background.start(self._start(index))
        )

    def running(self) -> list[Child]:
        return [c for c in self.replicas.values() if c.state is not State.STOPPED]

    async def reload(self, reason: str = "reload") -> None:
        """Restart the replicas one at a time, so that they run the current code."""
        for index in sorted(self.processes):
            await self.restart(index, reason)

    async def restart(self, index: int, reason: str = "restart") -> None:
        """Stop replica `index` (gracefully, as on stop) and start it again."""
        process, child = self.processes.get(index), self.replicas.get(index)
        if self.stopping or process is None or child is None:
            return
        child.stop_reason = reason
        self.metrics.restart(self.name, reason)
        await self._stop_processes([process])
        await self._start(index)

    async def scale(self, wanted: int) -> None:
        """Run `wanted` replicas: start the missing ones, stop the highest-numbered extras."""
        self.wanted = wanted
        self.output.say(f"scaling {self.name} to {wanted} replicas")
        extra = [index for index in self.processes if index > wanted]
        for index in extra:
            child = self.replicas.get(index)
            if child is not None:
                child.stop_reason = "scale"
            self.metrics.restart(self.name, "scale")
        for index in range(1, wanted + 1):
            if index not in self.processes and index not in self.respawns:
                await self._start(index)
        await self._stop_processes([self.processes[index] for index in extra])

    def status(self) -> list[dict[str, Any]]:
        """Each replica as `corral status` shows it (pid, state, uptime, restarts, last exit)."""
        rows = []
        for index in sorted(set(self.history) | set(self.replicas)):
            if index > self.wanted and index not in self.replicas:
                continue
            child = self.replicas.get(index)
            history = self.history.get(index)
            name = f"{self.name}.{index}"
            if child is None:
                rows.append(status_row(name, self.name, "replica", None, "stopped", None, history))
            else:
                started = unix_time(child.started_at)
                rows.append(
                    status_row(name, self.name, "replica", child.pid, "running", started, history)
                )
        return rows

    async def stop(self) -> None:
        """Send stop_signal to every replica; SIGKILL those still there after stop_timeout."""
        self.stopping = True
        for handle in self.respawns.values():
            handle.cancel()
        self.respawns.clear()
        await self._stop_processes(list(self.processes.values()))
        await self.background.wait()

    async def _stop_processes(self, processes: list[asyncio.subprocess.Process]) -> None:
        stop_signal = signal.Signals[self.config.stop_signal]
        for process in processes:
            signal_group(process, stop_signal)
        waiting = [asyncio.ensure_future(p.wait()) for p in processes]
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=self.config.stop_timeout)
            for process in processes:
                if process.returncode is None:
                    signal_group(process, signal.SIGKILL)
            if late:
                await asyncio.wait(late)
