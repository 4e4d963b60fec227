"""Upgrading corral itself with no refused connection: SIGUSR2, as gunicorn does.

The old manager starts a new one with its own command line (so a new corral,
or a new Python in the same place, takes effect) and hands it the listening
sockets. The new manager serves from the same sockets beside the old one;
once every web worker of its own is ready, it says so over a pipe, and the
old manager stops gracefully: its workers drain, the new ones take the
queue. If the new manager exits first (it cannot start, its app does not
import), the old one says so and keeps serving.

Jobs run exactly once per tick across the handover: the new manager starts
its schedule only once the old one has exited (ticks due while the old one
drains are not run). Declared processes run in both for that moment.

    CORRAL_UPGRADE_FDS       the listening sockets' descriptors, comma-separated
    CORRAL_UPGRADE_READY_FD  the pipe the new manager writes "ready" to
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Callable, MutableMapping

from corral.manager.background import Background
from corral.manager.listeners import UPGRADE_FDS_VARIABLE
from corral.manager.output import Output

READY_VARIABLE = "CORRAL_UPGRADE_READY_FD"
READY = b"ready\n"


class NewManagerSide:
    """What the new manager keeps of an upgrade: the pipe to say ready on, the old pid."""

    def __init__(self, environ: MutableMapping[str, str]) -> None:
        ready_fd = environ.pop(READY_VARIABLE, None)
        self.ready_fd = int(ready_fd) if ready_fd is not None and ready_fd.isdigit() else None
        self.old_manager = os.getppid() if self.ready_fd is not None else None
        self.took_over = False

    @property
    def upgrading(self) -> bool:
        return self.ready_fd is not None

    def say_ready(self) -> None:
        """Tell the old manager that this one serves: it stops now."""
        if self.ready_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, READY)
        os.close(self.ready_fd)
        self.ready_fd = None
        self.took_over = True

    def still_serving(self) -> int | None:
        """The old manager's pid if it goes on serving (this one never took over), else None."""
        return self.old_manager if not self.took_over else None


class Upgrade:
    """The old manager's side: start the new one and learn when it is ready, or gone."""

    def __init__(self, output: Output, on_ready: Callable[[int], None]) -> None:
        self.output = output
        self.on_ready = on_ready  # called with the new manager's pid once it serves
        self.process: asyncio.subprocess.Process | None = None
        self.background = Background()

    @property
    def under_way(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, sockets: list[socket.socket], env: dict[str, str]) -> None:
        """Start the new manager with `sockets` and `env` (the manager's, without its own state)."""
        ready_read, ready_write = os.pipe()
        fds = [s.fileno() for s in sockets]
        env = {
            **env,
            UPGRADE_FDS_VARIABLE: ",".join(map(str, fds)),
            READY_VARIABLE: str(ready_write),
        }
        try:
            self.process = await asyncio.create_subprocess_exec(
                *_command_line(),
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                pass_fds=[*fds, ready_write],
                start_new_session=True,  # it outlives this manager, and its process group
            )
        except OSError as error:
            os.close(ready_read)
            self.output.say(f"upgrade failed: cannot start a new manager: {error}")
            return
        finally:
            os.close(ready_write)
        pid = self.process.pid
        self.output.say(f"upgrading: a new manager (pid {pid}) starts from the same sockets")
        loop = asyncio.get_running_loop()
        os.set_blocking(ready_read, False)

        def readable() -> None:
            with contextlib.suppress(BlockingIOError):
                said = os.read(ready_read, len(READY))
                loop.remove_reader(ready_read)
                os.close(ready_read)
                if said == READY:
                    self.output.say(f"upgrade: the new manager (pid {pid}) serves; stopping")
                    self.on_ready(pid)

        loop.add_reader(ready_read, readable)
        self.background.start(self._watch(self.process))

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        self.output.say(
            f"upgrade: the new manager (pid {process.pid}) exited with code {code}; "
            "this one keeps serving"
        )


def _command_line() -> list[str]:
    """This process's own command line, run by this interpreter's path (a new Python there too)."""
    return [sys.executable, *sys.orig_argv[1:]]
