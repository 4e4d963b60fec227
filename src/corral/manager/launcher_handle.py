"""The manager's side of the launcher (`corral.child.launcher`): ask for zygotes and programs,
learn exits.

The launcher is the parent of the zygotes and of every program corral
starts, so it reaps them and reports each exit with its status. Should the
launcher itself die, its children get the parent-death signal and stop; the
manager watches each one (`corral.manager.exit_watch`) to know when it is
gone (their groups start them again), and starts a new launcher, as a fresh
interpreter since the manager's loop runs
(`corral.child.launcher.spawn_launcher`), after a backoff when launchers keep
dying. Requests the dead launcher had not answered are sent again to the new
one; meanwhile, requests wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

from corral.child.launcher import spawn_launcher
from corral.ipc import channel
from corral.ipc.messages import Exited, LaunchZygote, Spawn, SpawnFailed
from corral.ipc.messages import Forked as ForkedMessage
from corral.manager.backoff import Backoff
from corral.manager.exit_watch import watch_exit
from corral.manager.exits import describe_exit

Request = LaunchZygote | Spawn


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
    """The launcher, replaced when it dies; `say` tells the log."""

    def __init__(self, pid: int, link: socket.socket, say: Callable[[str], None]) -> None:
        self.say = say
        self.keys = itertools.count(1)
        # Requests not answered yet, with what they carry: sent again to a new launcher (their
        # senders keep the descriptors open until the answer comes).
        self.pending: dict[int, tuple[asyncio.Future[Forked], Request, list[int]]] = {}
        self.forked: dict[int, Forked] = {}
        self.lost = False  # no launcher now (one is on its way, unless closed)
        self.closed = False
        self.backoff = Backoff()
        self.replacing: asyncio.TimerHandle | None = None
        self.process: subprocess.Popen[bytes] | None = None  # a replacement, ours to reap
        self._connect(pid, link)

    def _connect(self, pid: int, link: socket.socket) -> None:
        self.pid = pid
        self.link = link
        self.decoder = channel.Decoder()
        self.started_at = time.monotonic()
        self.lost = False
        link.setblocking(False)
        asyncio.get_running_loop().add_reader(link.fileno(), self._on_readable)
        for _, message, fds in self.pending.values():
            with contextlib.suppress(OSError):  # it died already: its end is on its way
                channel.send(self.link, message, fds)

    async def fork(
        self,
        name: str,
        module: str,
        fds: list[int],
        env: dict[str, str],
        identity: dict[str, Any],
        stop_timeout: float,
    ) -> Forked:
        """A new zygote running `module.main(fds[0])` with its output to `fds[1]`.

        Keep `fds` open until it returns. ConnectionError once the launcher is closed.
        """
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

        Keep `log_fd` open until it returns. OSError if it cannot start (no
        such program, not executable, the launcher closed).
        """
        message = Spawn(next(self.keys), argv, env, cwd, identity, stop_signal, stop_timeout)
        return await self._ask(message, [log_fd])

    async def _ask(self, message: Request, fds: list[int]) -> Forked:
        """Send `message` (with `fds`) and wait for its answer, across a launcher's
        replacement; ConnectionError once the launcher is closed."""
        if self.closed:
            raise ConnectionError("the launcher has gone")
        answer: asyncio.Future[Forked] = asyncio.get_running_loop().create_future()
        self.pending[message.key] = (answer, message, fds)
        if not self.lost:
            with contextlib.suppress(OSError):  # it has just died: sent again to the next one
                channel.send(self.link, message, fds)
        try:
            return await answer
        finally:
            self.pending.pop(message.key, None)

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
                asked = self.pending.pop(message.key, None)
                if asked is None or asked[0].done():  # asked for by a start called off (a stop)
                    child.kill()
                else:
                    asked[0].set_result(child)
            elif isinstance(message, SpawnFailed):
                asked = self.pending.pop(message.key, None)
                if asked is not None and not asked[0].done():
                    asked[0].set_exception(OSError(message.errno, message.strerror))
            elif isinstance(message, Exited):
                child = self.forked.pop(message.pid, None)
                if child is not None:
                    child.ended(message.code)

    def _lost(self) -> None:
        """The launcher died: its children are stopping; note each one's end, start a new one."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.link.fileno())
        self.link.close()
        self.lost = True
        for child in self.forked.values():
            # Its exit status was the launcher's to collect: 0 stands for "gone".
            watch_exit(child.pid, functools.partial(child.ended, 0))
        self.forked.clear()
        cause = describe_exit(self._reap())
        if self.closed:
            return
        delay = self.backoff.delay_after_death(time.monotonic() - self.started_at)
        later = f" in {delay:g}s (it keeps dying)" if delay else ""
        self.say(f"the launcher exited ({cause}): starting a new one{later}")
        self.replacing = loop.call_later(delay, self._replace)

    def _replace(self) -> None:
        self.replacing = None
        try:
            self.process, link = spawn_launcher()
        except OSError as error:
            delay = self.backoff.delay_after_death(None)
            self.say(f"the launcher cannot start: {error}; trying again in {delay:g}s")
            self.replacing = asyncio.get_running_loop().call_later(delay, self._replace)
            return
        self._connect(self.process.pid, link)

    def _reap(self) -> int:
        if self.process is not None:
            return self.process.wait()
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(self.pid, 0)
            return os.waitstatus_to_exitcode(status)
        return 0

    def close(self) -> None:
        """Let the launcher go (it exits once the channel closes); start no other."""
        self.closed = True
        if self.replacing is not None:
            self.replacing.cancel()
        for answer, _, _ in self.pending.values():
            if not answer.done():
                answer.set_exception(ConnectionError("the launcher has gone"))
        if not self.lost:
            asyncio.get_running_loop().remove_reader(self.link.fileno())
            self.link.close()
            self.lost = True
            self._reap()
