"""Starting a declared child (a process replica, a command job run, a prestart step).

The launcher starts it (`corral.child.launcher`), never the manager's own
loop: so it is below the launcher, which ends it, and whatever it starts,
should the manager die.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from corral.manager.launcher_handle import Forked, LauncherHandle
from corral.manager.output import Output, Pump, Tee
from corral.settings import Runnable

DEFAULT_STOP = ("SIGTERM", 10.0)
"""The stop signal and timeout (seconds) of a child that declares none: a job run, a step."""


def argv_for(name: str, runnable: Runnable) -> list[str]:
    """A command is split like a shell would and executed directly (signals reach it)."""
    if runnable.call is not None:
        return [sys.executable, "-m", "corral.child.runner", name, runnable.call]
    assert runnable.command is not None
    return shlex.split(runnable.command)


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The environment a declared child gets: ours, then `env`, then what corral adds.

    CORRAL_MANAGER_PID names the manager. PYTHONUNBUFFERED=1 unless set by
    then: a Python child writes each line to its pipe as it prints it,
    rather than in blocks of 8 KiB that come late and die with it.
    """
    merged = {**os.environ, **env, "CORRAL_MANAGER_PID": str(os.getpid())}
    merged.setdefault("PYTHONUNBUFFERED", "1")
    return merged


class Spawned:
    """A program the launcher started for the manager: its pid, its exit, its output."""

    def __init__(self, process: Forked, pump: Pump) -> None:
        self.process = process
        self.pid = process.pid
        self.pump = pump

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        """Its exit code, once it has exited and its last lines have been shown."""
        code = await self.process.wait()
        self.pump.read_available()
        return code


async def spawn(
    launcher: LauncherHandle,
    name: str,
    argv: list[str],
    output: Output,
    env: dict[str, str],
    cwd: Path | None = None,
    *,
    identity: dict[str, Any],
    stop: tuple[str, float] = DEFAULT_STOP,
    tee: Tee | None = None,
) -> Spawned:
    """Start `argv` in its own session, its output prefixed with `name`; it dies with us.

    It runs as `identity` (`corral.posix.identity`: the user of --user, whose
    HOME, USER and LOGNAME it sees), with `child_env(env)`. `stop` is the
    signal its process group gets, and the seconds before SIGKILL, should the
    manager die. Its lines go to `tee` too, when given. OSError if it cannot
    start.
    """
    log_read, log_write = os.pipe()
    try:
        environment = child_env({**identity.get("environment", {}), **env})
        process = await launcher.spawn(
            argv, log_write, environment, str(cwd or ""), identity, *stop
        )
    except OSError:
        os.close(log_read)
        raise
    finally:
        os.close(log_write)
    pump = output.attach(log_read, name, tee)
    pump.pid = process.pid
    return Spawned(process, pump)


def signal_group(process: Spawned, sig: int) -> None:
    """Signal the process and everything it started (it leads its own process group).

    A `sh -c '...'` command's children get the signal too, rather than
    outliving their shell.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


async def stop(process: Spawned, sig: int, timeout: float) -> int:
    """Send `sig` to the process's group, and SIGKILL after `timeout` seconds; its exit code."""
    signal_group(process, sig)
    try:
        return await asyncio.wait_for(process.wait(), timeout)
    except asyncio.TimeoutError:
        signal_group(process, signal.SIGKILL)
        return await process.wait()
