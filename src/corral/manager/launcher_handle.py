"""The manager's side of the launcher (`corral.child.launcher`): ask for zygotes and programs,
learn exits.

The launcher is the zygotes' parent, so it reaps them and reports each exit
with its status. Should the launcher itself die, its zygotes get the
parent-death signal and stop their workers; the manager then watches each
one (`corral.manager.exit_watch`) to know when it is gone, and stops
everything (the launcher cannot be forked again from a process that runs an
event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from corral.ipc import channel
from corral.ipc.messages import Exited, LaunchZygote, Spawn, SpawnFailed
from corral.ipc.messages import Forked as ForkedMessage
from corral.manager.exit_watch import watch_exit
from corral.manager.exits import describe_exit


class Forked:
    """A child of the launcher (a zygote, a program): its pid, and its exit status once exited."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def returncode(self) -> int | None:
        return self.exited.result() if self.exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    def kill(self) -> None:
        if not self.exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def ended(self, code: int) -> None:
        if not self.exited.done():
            self.exited.set_result(code)


class LauncherHandle:
    def __init__(self, pid: int, link: socket.socket, on_lost: Callable[[str], None]) -> None:
        self.pid = pid
        self.link = link
        self.on_lost = on_lost  # called once, with the cause, if the launcher dies
        self.decoder = channel.Decoder()
        self.keys = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Forked]] = {}
        self.forked: dict[int, Forked] = {}
        self.lost = False
        link.setblocking(False)
        asyncio.get_running_loop().add_reader(link.fileno(), self._on_readable)

    async def fork(
        self,
        name: str,
        module: str,
        fds: list[int],
        env: dict[str, str],
        identity: dict[str, Any],
        stop_timeout: float,
    ) -> Forked:
        """A new zygote running `module.main(fds[0])` with its output to `fds[1]`."""
        message = LaunchZygote(next(self.keys), name, module, env, identity, stop_timeout)
        return await self._ask(message, fds)

    async def spawn(
        self,
        argv: list[str],
        log_fd: int,
        env: dict[str, str],
        cwd: str,
        identity: dict[str, Any],
        stop_signal: str,
        stop_timeout: float,
    ) -> Forked:
        """Have the launcher start `argv`, its output to `log_fd` (see `messages.Spawn`).

        OSError if it cannot start (no such program, not executable, the launcher has gone).
        """
        message = Spawn(next(self.keys), argv, env, cwd, identity, stop_signal, stop_timeout)
        return await self._ask(message, [log_fd])

    async def _ask(self, message: LaunchZygote | Spawn, fds: list[int]) -> Forked:
        """Send `message` (with `fds`) and wait for its answer; ConnectionError if gone."""
        if self.lost:
            raise ConnectionError("the launcher has gone")
        answer = self.pending[message.key] = asyncio.get_running_loop().create_future()
        try:
            channel.send(self.link, message, fds)
        except OSError:
            del self.pending[message.key]
            raise ConnectionError("the launcher has gone") from None
        return await answer

    def _on_readable(self) -> None:
        data = channel.receive(self.link)
        if data is None:
            return
        if not data:
            self._lost()
            return
        for message, _ in self.decoder.feed(data):
            if isinstance(message, ForkedMessage):
                child = self.forked[message.pid] = Forked(message.pid)
                answer = self.pending.pop(message.key)
                if answer.cancelled():  # asked for by a start that was called off (a stop)
                    child.kill()
                else:
                    answer.set_result(child)
            elif isinstance(message, SpawnFailed):
                answer = self.pending.pop(message.key)
                if not answer.cancelled():
                    answer.set_exception(OSError(message.errno, message.strerror))
            elif isinstance(message, Exited):
                child = self.forked.pop(message.pid, None)
                if child is not None:
                    child.ended(message.code)

    def _lost(self) -> None:
        """The launcher died: its zygotes are stopping; note each one's end when it comes."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.link.fileno())
        self.lost = True
        for answer in self.pending.values():
            if not answer.done():
                answer.set_exception(ConnectionError("the launcher has gone"))
        self.pending.clear()
        for child in self.forked.values():
            # Its exit status was the launcher's to collect: 0 stands for "gone".
            watch_exit(child.pid, functools.partial(child.ended, 0))
        self.forked.clear()
        self.on_lost(describe_exit(self._reap()))

    def _reap(self) -> int:
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(self.pid, 0)
            return os.waitstatus_to_exitcode(status)
        return 0

    def close(self) -> None:
        """Let the launcher go (it exits once the channel closes)."""
        if not self.lost:
            asyncio.get_running_loop().remove_reader(self.link.fileno())
            self.link.close()
            self.lost = True
            self._reap()
