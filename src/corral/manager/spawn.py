"""Starting a declared child (a process replica, a command job run, a prestart step)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from corral import posix
from corral.manager.output import Output, Tee
from corral.settings import Runnable


def argv_for(name: str, runnable: Runnable) -> list[str]:
    """A command is split like a shell would and executed directly (signals reach it)."""
    if runnable.call is not None:
        return [sys.executable, "-m", "corral.child.runner", name, runnable.call]
    assert runnable.command is not None
    return shlex.split(runnable.command)


async def spawn(
    name: str,
    argv: list[str],
    output: Output,
    env: dict[str, str],
    cwd: Path | None = None,
    *,
    identity: dict[str, Any],
    tee: Tee | None = None,
) -> asyncio.subprocess.Process:
    """Start `argv` in its own session, its output prefixed with `name`; it dies with us.

    It runs as `identity` (`corral.posix.identity`: the user of --user), which
    Popen takes on before `preexec_fn` runs, as the parent-death signal must
    be asked for after the change of user. Its lines go to `tee` too, when
    given. OSError if it cannot start.
    """
    log_read, log_write = os.pipe()
    manager = os.getpid()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_write,
            stderr=log_write,
            cwd=cwd,
            env={
                **os.environ,
                **identity.get("environment", {}),
                **env,
                "CORRAL_MANAGER_PID": str(manager),
            },
            start_new_session=True,
            user=identity.get("user"),
            group=identity.get("group"),
            extra_groups=identity.get("extra_groups"),
            preexec_fn=lambda: posix.die_with_parent(manager, signal.SIGTERM),
        )
    except OSError:
        os.close(log_read)
        raise
    finally:
        os.close(log_write)
    output.attach(log_read, name, tee).pid = process.pid
    return process


def signal_group(process: asyncio.subprocess.Process, sig: int) -> None:
    """Signal the process and everything it started (it leads its own process group).

    A `sh -c '...'` command's children get the signal too, rather than
    outliving their shell.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
