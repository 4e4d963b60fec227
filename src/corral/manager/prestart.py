"""Prestart: steps that run once, in order, before anything else starts (migrations).

A command step runs through `sh -c` (shell syntax welcome); a call step runs
the callable in a fresh interpreter. The first failure stops corral, with
the step's output shown and exit code 4; no web worker ever starts. A stop
asked for meanwhile stops the step under way (SIGTERM to its process group,
SIGKILL 10 s later) and runs no other.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from corral.manager.launcher_handle import LauncherHandle
from corral.manager.output import Output
from corral.manager.spawn import DEFAULT_STOP, spawn, stop
from corral.posix import describe_exit
from corral.settings import PrestartCall, PrestartConfig
from corral.settings.declared import SHELL


async def run_prestart(
    config: PrestartConfig,
    env: dict[str, str],
    output: Output,
    identity: dict[str, Any],
    launcher: LauncherHandle,
) -> bool:
    """Run every step in order, as `identity`; False (and a message) at the first that fails."""
    for number, step in enumerate(config.steps, start=1):
        if isinstance(step, PrestartCall):
            what = f"{{ call = {step.call!r} }}"
            argv = [sys.executable, "-m", "corral.child.runner", "prestart", step.call]
        else:
            what = repr(step)
            argv = [SHELL, "-c", step]
        output.say(f"prestart step {number}: {what}")
        process = await spawn(launcher, "prestart", argv, output, env, identity=identity)
        try:
            code = await process.wait()
        except asyncio.CancelledError:  # corral is stopping
            output.say(f"prestart step {number} is stopped: corral is stopping")
            await stop(process, signal.SIGTERM, DEFAULT_STOP[1])
            raise
        if code != 0:
            output.say(f"prestart step {number} failed ({describe_exit(code)}): nothing starts")
            return False
    return True
