"""A declared process group ([processes.NAME]): N replicas of a callable or a command.

Each replica is NAME.1..NAME.N, sees CORRAL_REPLICA=i, and is restarted by
its `restart` policy (always, on-failure, never) with the same backoff as web
workers. Stopping sends `stop_signal`, then SIGKILL after `stop_timeout`.
"""

from __future__ import annotations

import asyncio
import signal

from corral.manager.background import Background
from corral.manager.backoff import Backoff
from corral.manager.children import Child, State
from corral.manager.spawn import argv_for, signal_group, spawn
from corral.output import Output
from corral.system import describe_exit
from corral.system_config import ProcessConfig


class ProcessGroup:
    def __init__(self, name: str, config: ProcessConfig, env: dict[str, str], output: Output):
        self.name = name
        self.config = config
        self.env = env
        self.output = output
        self.replicas: dict[int, Child] = {}
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.backoffs: dict[int, Backoff] = {}
        self.respawns: dict[int, asyncio.TimerHandle] = {}
        self.background = Background()
        self.stopping = False

    async def start(self) -> None:
        for index in range(1, self.config.replicas + 1):
            await self._start(index)

    async def _start(self, index: int) -> None:
        self.respawns.pop(index, None)
        if self.stopping:
            return
        name = f"{self.name}.{index}"
        env = {**self.env, **self.config.env, "CORRAL_REPLICA": str(index)}
        try:
            process = await spawn(
                name, argv_for(name, self.config), self.output, env, self.config.cwd
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
        if self.replicas.get(index) is child:  # a reload may have started its successor
            del self.replicas[index]
            del self.processes[index]
        if self.stopping or child.stop_reason == "reload":
            why = ": reload" if child.stop_reason == "reload" else ""
            self.output.say(f"{child.name} stopped (pid {child.pid}, {describe_exit(code)}){why}")
            return
        self.output.say(f"{child.name} exited (pid {child.pid}, {describe_exit(code)})")
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

    async def reload(self) -> None:
        """Restart the replicas one at a time, so that they run the current code."""
        for index in sorted(self.processes):
            process, child = self.processes.get(index), self.replicas.get(index)
            if self.stopping or process is None or child is None:
                continue
            child.stop_reason = "reload"
            await self._stop_processes([process])
            await self._start(index)

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
