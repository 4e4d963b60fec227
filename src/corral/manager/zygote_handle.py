"""The manager's side of one fork server (a zygote): one generation of loaded code.

A zygote is forked by the launcher, gets its spec (and the descriptors the
spec announces) from the manager, says `Loaded` (or `LoadFailed`), then
forks children on request and reports when they were forked (`Forked`) and
how they exited (`Exited`). `ZygoteSlot` keeps a group's generations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from corral.ipc import channel
from corral.ipc.messages import Exit, Loaded, LoadFailed, Message
from corral.manager.exits import describe_exit
from corral.manager.launcher_handle import Forked, LauncherHandle
from corral.manager.output import Output

EXIT_TIMEOUT = 5.0

Listener = Callable[["ZygoteHandle", Message], None]
ExitListener = Callable[["ZygoteHandle"], None]


class AppFailed(Exception):
    """The app cannot be loaded or started (import error, lifespan failure)."""


class ZygoteDied(Exception):
    """The zygote exited before it had loaded, without saying its code cannot load: killed,
    or gone with its launcher. Another may well load."""


class ZygoteHandle:
    def __init__(self, generation: int, on_message: Listener, on_exit: ExitListener) -> None:
        self.generation = generation
        self.on_message = on_message
        self.on_exit = on_exit
        self.exit_watch: asyncio.Future[int] | None = None  # referenced, so it is not collected
        self.process: Forked | None = None
        self.link: socket.socket | None = None
        self.decoder = channel.Decoder()
        self.loaded: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.load_failed = False  # it said its code cannot load (LoadFailed)
        self.broken: list[str] = []  # a jobs zygote's jobs whose target did not import
        self.started_at = time.monotonic()
        self.retiring = False  # forks nothing more; exits once its children are gone

    async def launch(
        self,
        launcher: LauncherHandle,
        module: str,
        spec: Message,
        spec_fds: list[int],
        env: dict[str, str],
        identity: dict[str, Any],
        output: Output,
    ) -> None:
        """Have the launcher fork a zygote running `module`, and wait until it has loaded.

        AppFailed if its code cannot load, ZygoteDied if it exited before it loaded for
        another reason. `spec` (a zygote spec message, with its
        `name` and `stop_timeout` in seconds) and `spec_fds` are the
        zygote's to read first.
        """
        name: str = spec.name  # type: ignore[attr-defined]
        ours, theirs = socket.socketpair()
        log_read, log_write = os.pipe()
        try:
            self.process = await launcher.fork(
                name,
                module,
                [theirs.fileno(), log_write],
                env,
                identity,
                stop_timeout=spec.stop_timeout,  # type: ignore[attr-defined]
            )
        except ConnectionError:
            ours.close()
            os.close(log_read)
            raise AppFailed(f"{name} could not start: the launcher has gone") from None
        finally:
            theirs.close()
            os.close(log_write)
        output.attach(log_read, name).pid = self.process.pid
        ours.setblocking(False)
        self.link = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_readable)
        channel.send(ours, spec, spec_fds)
        exited = asyncio.ensure_future(self.process.wait())
        try:
            await asyncio.wait([self.loaded, exited], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # a stop while it loads: it has no child to wait for
            self.process.kill()
            exited.cancel()
            self.close()
            raise
        if not (self.loaded.done() and self.loaded.result()):
            code = await exited
            self.close()
            if self.load_failed:
                raise AppFailed(f"{name} could not load its code")
            raise ZygoteDied(describe_exit(code))
        self.exit_watch = exited
        exited.add_done_callback(lambda _: self.on_exit(self))

    def exit_cause(self) -> str:
        """How it exited, in words: "killed by SIGKILL", "exit code 1"."""
        code = self.process.returncode if self.process is not None else None
        return describe_exit(code or 0)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def can_fork(self) -> bool:
        return self.link is not None and not self.retiring

    def fork(self, request: Message, fds: list[int]) -> None:
        """Ask for a child (`ForkWorker`, `ForkRun`), handing it `fds` (the caller closes them)."""
        assert self.link is not None
        channel.send(self.link, request, fds)

    def _on_readable(self) -> None:
        assert self.link is not None
        data = channel.receive(self.link)
        if data is None:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(self.link.fileno())
            if not self.loaded.done():
                self.loaded.set_result(False)
            return
        for message, _ in self.decoder.feed(data):
            if isinstance(message, (Loaded, LoadFailed)):
                self.load_failed = isinstance(message, LoadFailed)
                self.broken = message.broken if isinstance(message, Loaded) else []
                if not self.loaded.done():
                    self.loaded.set_result(isinstance(message, Loaded))
            else:
                self.on_message(self, message)

    async def exit(self) -> None:
        """Ask the zygote to exit (its children must be gone); kill it if it does not."""
        if self.process is None:
            return
        if self.process.returncode is None and self.link is not None:
            with contextlib.suppress(OSError):
                channel.send(self.link, Exit())
            try:
                await asyncio.wait_for(self.process.wait(), EXIT_TIMEOUT)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.close()

    def close(self) -> None:
        if self.link is not None:
            asyncio.get_running_loop().remove_reader(self.link.fileno())
            self.link.close()
            self.link = None
