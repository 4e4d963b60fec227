"""One part, once, in the foreground: for an engine that schedules it itself.

`corral prestart` runs the prestart steps (a Kubernetes Job, a oneshot unit,
a compose service the others wait for); `corral job NAME` runs one job once
(a CronJob, a systemd timer's service). Each exits with the result, its
output on stdout as `corral run` shows it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from corral import posix
from corral.child.launcher import fork_launcher
from corral.errors import UsageError
from corral.exit_codes import FAILURE, OK, PRESTART_FAILED, USAGE
from corral.manager.launcher_handle import LauncherHandle
from corral.manager.output import Output
from corral.manager.prestart import run_prestart
from corral.manager.spawn import argv_for, signal_group, spawn
from corral.posix import describe_exit
from corral.settings import System

DRAIN_TIMEOUT = 1.0  # seconds to read what a finished child left in its pipe


def prestart(system: System) -> int:
    """Run the prestart steps in order: 0, or 4 at the first that fails (as `corral run`)."""

    async def steps(launcher: LauncherHandle) -> int:
        output = _output(system)
        if not system.prestart.steps:
            output.say("prestart: no steps declared")
        identity = posix.identity(
            system.manager.user,
            system.manager.group,
            (system.given_as("corral.user"), system.given_as("corral.group")),
        )
        succeeded = await run_prestart(system.prestart, system.env, output, identity, launcher)
        await output.drain(DRAIN_TIMEOUT)
        return OK if succeeded else PRESTART_FAILED

    return _with_launcher(steps)


def job(system: System, name: str) -> int:
    """Run job `name` once: 0 when it succeeds, 1 when it fails or passes its `timeout`.

    SIGTERM and SIGINT are passed on to the run (an engine stopping it), which
    then finishes as it would under corral run's stop. A `call` job starts a
    fresh interpreter here: there is no jobs zygote for one run.
    """
    config = system.jobs[name]

    async def run(launcher: LauncherHandle) -> int:
        output = _output(system)
        started = time.monotonic()
        env = {**system.env, **config.env}
        identity = posix.identity(
            system.manager.user,
            system.manager.group,
            (system.given_as("corral.user"), system.given_as("corral.group")),
        )
        process = await spawn(
            launcher, name, argv_for(name, config), output, env, config.cwd, identity=identity
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signal_group, process, sig)
        try:
            code = await asyncio.wait_for(process.wait(), config.timeout)
        except asyncio.TimeoutError:
            signal_group(process, signal.SIGKILL)
            await process.wait()
            output.say(f"{name} run failed: killed at its timeout ({config.timeout:g}s)")
            code = FAILURE
        else:
            took = time.monotonic() - started
            verdict = "ok" if code == 0 else f"failed ({describe_exit(code)})"
            output.say(f"{name} run {verdict} in {took:.2f}s")
        await output.drain(DRAIN_TIMEOUT)
        return OK if code == 0 else FAILURE

    return _with_launcher(run)


def _with_launcher(main: Callable[[LauncherHandle], Awaitable[int]]) -> int:
    """Run `main` in an event loop, with a launcher to start its children (none outlives us).

    Should the launcher die, the child it started gets the parent-death
    signal and its end ends `main`.
    """
    forked = fork_launcher(zygotes=False)

    async def run() -> int:
        launcher = LauncherHandle(*forked, on_lost=lambda cause: None)
        try:
            return await main(launcher)
        except UsageError as error:  # a log file, a user: before anything started
            for message in error.messages:
                print(f"corral: error: {message}", file=sys.stderr)
            return USAGE
        finally:
            launcher.close()

    return asyncio.run(run())


def _output(system: System) -> Output:
    output = Output(json_format=system.manager.log_format == "json")
    output.open_files(system.manager.log_file, system.manager.access_logfile)
    output.start()
    return output
