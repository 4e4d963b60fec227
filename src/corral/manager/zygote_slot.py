"""A group's zygotes: the current generation, the retiring ones, and a replacement if one dies.

Shared by the web group (a generation per reload, forking workers) and the
jobs group (a generation per reload, forking runs). A reload launches a new
generation and promotes it; the old one retires, forks nothing more, and
exits once it has no child left. A current zygote that dies on its own is
replaced after a backoff (`Backoff`), and the group is told so it can start
its children again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from corral.ipc.messages import Message
from corral.manager.background import Background
from corral.manager.backoff import Backoff
from corral.manager.child import status_row, unix_time
from corral.manager.launcher_handle import LauncherHandle
from corral.manager.output import Output
from corral.manager.zygote_handle import AppFailed, ZygoteDied, ZygoteHandle

LAUNCH_ATTEMPTS = 5  # zygotes that die before they load (killed), before a launch gives up


class ZygoteSlot:
    """The zygotes of one group.

    `spec()` gives, at each launch, the zygote's first message and its
    descriptors; `env()` and `identity` what it runs with. `on_message`
    gets every message a zygote sends (Forked, Exited); `on_lost(zygote)`
    is told when a zygote exits (its children are then gone or draining by
    themselves); `on_replaced()` once a dead current zygote has a
    successor, and `on_failed()` if that successor cannot load.
    """

    def __init__(
        self,
        group: str,
        module: str,
        launcher: LauncherHandle,
        output: Output,
        spec: Callable[[], tuple[Message, list[int]]],
        env: Callable[[], dict[str, str]],
        identity: dict[str, Any],
        on_message: Callable[[ZygoteHandle, Message], None],
        on_lost: Callable[[ZygoteHandle], None],
        on_replaced: Callable[[], None],
        on_failed: Callable[[], None],
    ) -> None:
        self.group = group
        self.module = module
        self.launcher = launcher
        self.output = output
        self.spec = spec
        self.env = env
        self.identity = identity
        self.on_message = on_message
        self.on_lost = on_lost
        self.on_replaced = on_replaced
        self.on_failed = on_failed
        self.current: ZygoteHandle | None = None  # the generation that forks
        self.live: dict[int, ZygoteHandle] = {}  # every generation still running
        self.generation = 0
        self.backoff = Backoff()
        self.background = Background()
        self.stopping = False

    async def launch(self) -> ZygoteHandle:
        """A new generation, loaded; not yet current.

        A zygote that dies before it has loaded (killed, or gone with its launcher) is
        started again, after 0, 0.5, 1, 2 s. AppFailed if the code cannot load, or if
        LAUNCH_ATTEMPTS zygotes in a row died before they loaded.
        """
        attempt = 0
        while True:
            attempt += 1
            self.generation += 1
            zygote = ZygoteHandle(self.generation, self.on_message, self._on_exit)
            spec, fds = self.spec()
            try:
                await zygote.launch(
                    self.launcher, self.module, spec, fds, self.env(), self.identity, self.output
                )
            except ZygoteDied as died:
                if attempt == LAUNCH_ATTEMPTS or self.stopping:
                    raise AppFailed(
                        f"{self.group}.zygote exited before it loaded ({died})"
                    ) from None
                delay = 0.0 if attempt == 1 else 0.5 * 2 ** (attempt - 2)
                again = f" in {delay:g}s" if delay else ""
                self.output.say(
                    f"{self.group}.zygote exited before it loaded ({died}): starting another{again}"
                )
                await asyncio.sleep(delay)
                continue
            self.live[zygote.generation] = zygote
            return zygote

    def promote(self, zygote: ZygoteHandle) -> ZygoteHandle | None:
        """Make `zygote` the one that forks; return the one it replaces, now retiring."""
        old, self.current = self.current, zygote
        zygote.retiring = False
        if old is not None and old is not zygote:
            old.retiring = True
            return old
        return None

    def discard(self, zygote: ZygoteHandle) -> None:
        """A launched `zygote` that is not to be used (it has no child): it exits."""
        zygote.retiring = True
        self.retire_if_idle(zygote, busy=False)

    def retire_if_idle(self, zygote: ZygoteHandle, busy: bool) -> None:
        """Let a retiring `zygote` exit once it has no child left (`busy` says if it has)."""
        if zygote.retiring and not busy and zygote.generation in self.live:
            self.background.start(zygote.exit())

    def _on_exit(self, zygote: ZygoteHandle) -> None:
        self.live.pop(zygote.generation, None)
        zygote.close()
        # Not when the launcher died: the manager stops, and no zygote can be launched.
        unexpected = not self.stopping and zygote is self.current and not self.launcher.lost
        if unexpected:
            self.output.say(
                f"{self.group}.zygote exited unexpectedly ({zygote.exit_cause()}): "
                "starting a new one"
            )
        self.on_lost(zygote)
        if not unexpected:
            return
        self.current = None
        delay = self.backoff.delay_after_death(time.monotonic() - zygote.started_at)
        asyncio.get_running_loop().call_later(delay, lambda: self.background.start(self._replace()))

    async def _replace(self) -> None:
        if self.stopping:
            return
        try:
            self.promote(await self.launch())
        except AppFailed:
            self.on_failed()
            return
        self.on_replaced()

    def status(self) -> list[dict[str, Any]]:
        """Each live generation as `corral status` shows it: GROUP.zygote, running or retiring."""
        return [
            status_row(
                f"{self.group}.zygote",
                self.group,
                "zygote",
                zygote.pid,
                "retiring" if zygote.retiring else "running",
                unix_time(zygote.started_at),
            )
            for zygote in self.live.values()
        ]

    async def stop(self) -> None:
        """Let every generation exit (their children must be gone by now)."""
        self.stopping = True
        await asyncio.gather(*(zygote.exit() for zygote in list(self.live.values())))
        await self.background.wait(timeout=5)
