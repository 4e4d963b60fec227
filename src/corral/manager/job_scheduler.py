"""Scheduled jobs ([jobs.NAME]): exactly one run per tick on this machine.

The manager alone keeps the schedule, so a job runs once per tick however
many web workers there are. A `call` job's run is forked from the jobs
zygote (which imported the job once); a `command` job's run is a fresh
process. `overlap = "skip"` skips a tick while the previous run is still
going; `timeout` kills a run that takes too long and counts it failed. A run
that fails is logged with its output (the traceback) and the schedule goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from corral.exit_codes import FAILURE
from corral.ipc import channel
from corral.manager.background import Background
from corral.manager.backoff import Backoff
from corral.manager.launcher_handle import LauncherHandle
from corral.manager.metrics import Metrics
from corral.manager.output import Output
from corral.manager.schedule import Schedule
from corral.manager.spawn import argv_for, signal_group, spawn
from corral.manager.zygote_handle import ZygoteHandle
from corral.posix import describe_exit
from corral.settings import JobConfig

DEFAULT_STOP_TIMEOUT = 10.0


@dataclass
class Run:
    key: int
    job: str
    started: float = field(default_factory=time.monotonic)
    pid: int | None = None
    timed_out: bool = False
    process: asyncio.subprocess.Process | None = None  # for a command job
    zygote: ZygoteHandle | None = None  # for a call job: the zygote that forked it
    started_at: float = field(default_factory=time.time)


@dataclass
class JobRecord:
    """What `corral status` shows of a job: its last run, its next, and its counts."""

    last_started: float | None = None
    last_duration: float | None = None
    last_result: str | None = None  # ok | failed: exit code 1 | timeout | skipped: overlap
    next_run: float | None = None
    runs: int = 0
    failures: int = 0


class JobScheduler:
    def __init__(
        self,
        jobs: dict[str, JobConfig],
        launcher: LauncherHandle | None,  # None when no job is a `call`
        env: dict[str, str],
        output: Output,
        metrics: Metrics,
        identity: dict[str, Any],  # corral.posix.identity: who the runs (and the zygote) run as
    ) -> None:
        self.jobs = jobs
        self.identity = identity
        self.launcher = launcher
        self.metrics = metrics
        self.records = {name: JobRecord() for name in jobs}
        self.env = env
        self.output = output
        self.schedules = {name: Schedule(config) for name, config in jobs.items()}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.runs: dict[int, Run] = {}
        self.keys = itertools.count(1)
        self.zygote: ZygoteHandle | None = None
        self.zygote_backoff = Backoff()
        self.background = Background()
        self.stopping = False

    async def start(self) -> None:
        if any(c.call is not None for c in self.jobs.values()):
            await self._launch_zygote()
        for name in self.jobs:
            self._arm(name)

    async def _launch_zygote(self) -> None:
        targets = {name: c.call for name, c in self.jobs.items() if c.call is not None}
        zygote = ZygoteHandle(1, self._on_zygote_message, self._on_zygote_exit)
        spec = {"targets": targets, "stop_timeout": self._stop_timeout()}
        assert self.launcher is not None
        await zygote.launch(
            self.launcher,
            "jobs.zygote",
            "corral.child.jobs_zygote",
            spec,
            [],
            self.env,
            self.identity,
            self.output,
        )
        self.zygote = zygote

    def _on_zygote_exit(self, zygote: ZygoteHandle) -> None:
        """Replace a jobs zygote that died; its runs in flight died with it (counted failed)."""
        zygote.close()
        if self.stopping or zygote is not self.zygote:
            return
        self.output.say(
            f"jobs.zygote exited unexpectedly ({zygote.exit_cause()}): starting a new one"
        )
        self.zygote = None
        for run in [r for r in self.runs.values() if r.process is None]:
            self._finish(run, FAILURE)
        delay = self.zygote_backoff.delay_after_death(time.monotonic() - zygote.started_at)
        loop = asyncio.get_running_loop()
        loop.call_later(delay, lambda: self.background.start(self._launch_zygote()))

    def _arm(self, name: str) -> None:
        schedule = self.schedules[name]
        now = time.time()
        delay = schedule.next_tick(now) - now + schedule.jitter()
        self.records[name].next_run = now + delay
        self.timers[name] = asyncio.get_running_loop().call_later(delay, self._tick, name)

    def _tick(self, name: str) -> None:
        if self.stopping:
            return
        self._arm(name)
        self._start_run(name, "tick")

    def run_now(self, name: str) -> str:
        """Run `name` now, outside its schedule (still respecting its overlap policy)."""
        if self.stopping:
            return f"{name}: not started, corral is stopping"
        if self._start_run(name, "run now"):
            return f"{name}: run started"
        return f"{name}: run skipped, the previous run is still going (overlap = 'skip')"

    def _start_run(self, name: str, what: str) -> bool:
        config = self.jobs[name]
        if config.overlap == "skip" and any(run.job == name for run in self.runs.values()):
            self.output.say(f"{name}: {what} skipped, the previous run is still going")
            record = self.records[name]
            record.last_started, record.last_duration = time.time(), 0.0
            record.last_result = "skipped: overlap"
            self.metrics.job_run(name, "skipped", 0.0, time.time())
            return False
        run = Run(next(self.keys), name)
        self.runs[run.key] = run
        if config.call is not None:
            self._fork_run(run, config)
        else:
            self.background.start(self._spawn_run(run, config))
        if config.timeout is not None:
            asyncio.get_running_loop().call_later(config.timeout, self._time_out, run)
        return True

    def _fork_run(self, run: Run, config: JobConfig) -> None:
        if self.zygote is None or self.zygote.link is None:
            self._missed(run)
            return
        log_read, log_write = os.pipe()
        try:
            details = {"job": run.job, "env": config.env, "cwd": str(config.cwd or "")}
            self.zygote.fork(run.key, run.job, [log_write], **details)
        except OSError:  # it has just died; its exit, on its way, starts a new one
            os.close(log_read)
            self._missed(run)
            return
        finally:
            os.close(log_write)
        self.output.attach(log_read, run.job)
        run.zygote = self.zygote

    def _missed(self, run: Run) -> None:
        self.runs.pop(run.key, None)
        self.output.say(f"{run.job}: tick missed, the jobs zygote is being replaced")

    async def _spawn_run(self, run: Run, config: JobConfig) -> None:
        env = {**self.env, **config.env}
        try:
            run.process = await spawn(
                run.job,
                argv_for(run.job, config),
                self.output,
                env,
                config.cwd,
                identity=self.identity,
            )
        except OSError as error:
            self.output.say(f"{run.job}: cannot start: {error}")
            self.runs.pop(run.key, None)
            return
        run.pid = run.process.pid
        self._finish(run, await run.process.wait())

    def _on_zygote_message(self, zygote: ZygoteHandle, message: channel.Message) -> None:
        if message["t"] == "forked" and message["key"] in self.runs:
            self.runs[message["key"]].pid = message["pid"]
        elif message["t"] == "exited":
            run = next((r for r in self.runs.values() if r.pid == message["pid"]), None)
            if run is not None:
                self._finish(run, message["code"])

    def _finish(self, run: Run, code: int) -> None:
        self.runs.pop(run.key, None)
        if run.zygote is not None and run.zygote.retiring:
            self._retire_if_idle(run.zygote)
        took = time.monotonic() - run.started
        if run.timed_out:
            self.output.say(f"{run.job} run failed: killed at its timeout ({took:.2f}s)")
            result = "timeout"
        elif code != 0:
            self.output.say(f"{run.job} run failed ({describe_exit(code)}, {took:.2f}s)")
            result = f"failed: {describe_exit(code)}"
        else:
            result = "ok"
        record = self.records[run.job]
        record.last_started, record.last_duration, record.last_result = run.started_at, took, result
        record.runs += 1
        record.failures += result != "ok"
        self.metrics.job_run(run.job, result.partition(":")[0], took, time.time())

    def status(self) -> list[dict[str, Any]]:
        """Each job as `corral status` shows it."""
        rows = []
        for name, config in self.jobs.items():
            record = self.records[name]
            last = None
            if record.last_result is not None:
                last = {
                    "started": record.last_started,
                    "duration": record.last_duration,
                    "result": record.last_result,
                }
            every = f"every {config.every:g}s" if config.every is not None else None
            rows.append(
                {
                    "name": name,
                    "schedule": config.schedule or every,
                    "running": any(run.job == name for run in self.runs.values()),
                    "last_run": last,
                    "next_run": None if self.stopping else record.next_run,
                    "runs": record.runs,
                    "failures": record.failures,
                }
            )
        return rows

    async def reload(self) -> None:
        """Load the current code of the call jobs in a new zygote; the old one retires."""
        old = self.zygote
        if old is None or self.stopping:
            return
        await self._launch_zygote()
        old.retiring = True
        self._retire_if_idle(old)
        self.output.say("jobs reloaded: the next runs use the current code")

    def _retire_if_idle(self, zygote: ZygoteHandle) -> None:
        if not any(run.zygote is zygote for run in self.runs.values()):
            self.background.start(zygote.exit())

    def _time_out(self, run: Run) -> None:
        if run.key in self.runs and run.pid is not None:
            run.timed_out = True
            self._kill(run)

    def _kill(self, run: Run) -> None:
        """A command run leads its own process group; a forked run is one process."""
        if run.process is not None:
            signal_group(run.process, signal.SIGKILL)
        elif run.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGKILL)

    def _stop_timeout(self) -> float:
        timeouts = [c.timeout for c in self.jobs.values() if c.timeout is not None]
        return max(timeouts, default=DEFAULT_STOP_TIMEOUT)

    def stop_ticking(self) -> None:
        """No new run from now on (the first thing a stop does; running ones go on)."""
        self.stopping = True
        for timer in self.timers.values():
            timer.cancel()

    async def stop(self) -> None:
        """No new runs; running ones finish (up to their timeout, or 10 s), then are killed."""
        self.stop_ticking()
        deadline = time.monotonic() + self._stop_timeout()
        while self.runs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for run in list(self.runs.values()):
            self._kill(run)
        await self.background.wait(timeout=5)
        if self.zygote is not None:
            await self.zygote.exit()
