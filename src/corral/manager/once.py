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
from corral.manager.schedule import latest_tick, tick_environment
from corral.manager.spawn import argv_for, signal_group, spawn
from corral.posix import describe_exit
from corral.settings import System

DRAIN_TIMEOUT = 1.0  # seconds to read what a finished child left in its pipe


def prestart(system: System) -> int:
    """Run the prestart steps in order: 0, or 4 at the first that fails (as `corral run`)."""

    async def steps(launcher: LauncherHandle, output: Output) -> int:
        if not system.prestart.steps:
            output.say("prestart: no steps declared")
        identity = posix.identity(system.manager.user, system.manager.group)
        succeeded = await run_prestart(system.prestart, system.env, output, identity, launcher)
        return OK if succeeded else PRESTART_FAILED

    return _with_launcher(system, steps)


def job(system: System, name: str) -> int:
    """Run job `name` once: 0 when it succeeds, 1 when it fails or passes its `timeout`.

    SIGTERM and SIGINT are passed on to the run (an engine stopping it), which
    then finishes as it would under corral run's stop. A `call` job starts a
    fresh interpreter here: there is no jobs zygote for one run.
    """
    config = system.jobs[name]

    async def run(launcher: LauncherHandle, output: Output) -> int:
        started = time.monotonic()
        env = {**system.env, **config.env, **tick_environment(latest_tick(config, time.time()))}
        identity = posix.identity(system.manager.user, system.manager.group)
        try:
            process = await spawn(
                launcher, name, argv_for(name, config), output, env, config.cwd, identity=identity
            )
        except OSError as error:  # no such program, not executable: the run failed
            output.say(f"{name} run failed: cannot start: {error}")
            return FAILURE
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
        return OK if code == 0 else FAILURE

    return _with_launcher(system, run)


def _with_launcher(system: System, main: Callable[[LauncherHandle, Output], Awaitable[int]]) -> int:
    """Run `main` in an event loop, with a launcher to start its children (none outlives us)
    and the output their lines go to, drained at the end.

    Should the launcher die, the child it started gets the parent-death
    signal and its end ends `main`.
    """
    forked = fork_launcher(zygotes=False)

    async def run() -> int:
        try:
            output = _output(system)
        except UsageError as error:  # a log file: before anything started
            return _refused(error)
        launcher = LauncherHandle(*forked, output.say)
        try:
            return await main(launcher, output)
        except UsageError as error:  # a user: before anything started
            return _refused(error)
        finally:
            launcher.close()
            await output.drain(DRAIN_TIMEOUT)

    return asyncio.run(run())


def _refused(error: UsageError) -> int:
    for message in error.messages:
        print(f"corral: error: {message}", file=sys.stderr)
    return USAGE


def _output(system: System) -> Output:
    output = Output(json_format=system.manager.log_format == "json")
    output.open_files(system.manager.log_file, system.manager.access_logfile)
    output.start()
    return output
