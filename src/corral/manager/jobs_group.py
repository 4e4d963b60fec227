"""The jobs ([jobs.NAME]): exactly one run per tick on this machine.

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
import functools
import itertools
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from corral.exit_codes import FAILURE
from corral.ipc.messages import Exited, Forked, ForkRun, JobsZygoteSpec, Message
from corral.manager.background import Background
from corral.manager.exit_watch import watch_exit
from corral.manager.exits import describe_exit
from corral.manager.group import Group, Refused
from corral.manager.job_runs import JobRuns, RunRecord
from corral.manager.launcher_handle import LauncherHandle
from corral.manager.metrics import Metrics
from corral.manager.output import Output, Pump
from corral.manager.schedule import Schedule, tick_environment
from corral.manager.spawn import Spawned, argv_for, signal_group, spawn
from corral.manager.zygote_handle import AppFailed, ZygoteHandle
from corral.manager.zygote_slot import ZygoteSlot
from corral.settings import JobConfig
from corral.settings.declared import jobs_stop_timeout


@dataclass
class Run:
    key: int
    job: str
    record: RunRecord  # what the dashboard shows of it, its output included
    started: float = field(default_factory=time.monotonic)
    tick: float = field(default_factory=time.time)  # the Unix time it runs for: its tick, or now
    pid: int | None = None
    timed_out: bool = False
    stopped: bool = False  # killed because corral stops: neither a success nor a failure
    process: Spawned | None = None  # for a command job
    zygote: ZygoteHandle | None = None  # for a call job: the zygote that forked it
    pump: Pump | None = None  # for a call job: its output (a command's is its process's)
    started_at: float = field(default_factory=time.time)


@dataclass
class JobRecord:
    """What `corral status` shows of a job: its last run, its next, and its counts."""

    last_started: float | None = None
    last_duration: float | None = None
    last_result: str | None = None  # ok | failed: exit code 1 | timeout | skipped | stopped
    next_run: float | None = None
    runs: int = 0
    failures: int = 0


class JobsGroup(Group):
    name = "jobs"
    stop_phase = 2

    def __init__(
        self,
        jobs: dict[str, JobConfig],
        launcher: LauncherHandle,  # forks the jobs zygote, starts the command runs
        env: dict[str, str],
        output: Output,
        metrics: Metrics,
        identity: dict[str, Any],  # corral.posix.identity: who the runs (and the zygote) run as
    ) -> None:
        self.jobs = jobs
        self.identity = identity
        self.env = env
        self.output = output
        self.metrics = metrics
        self.records = {name: JobRecord() for name in jobs}
        self.history = JobRuns()  # each job's last runs, with their output
        self.schedules = {name: Schedule(config) for name, config in jobs.items()}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.runs: dict[int, Run] = {}
        self.waiting: list[Run] = []  # call runs due while the jobs zygote is being replaced
        self.unloadable = False  # its replacement could not load the code: nothing to wait for
        self.keys = itertools.count(1)
        self.launcher = launcher
        self.zygotes = ZygoteSlot(
            "jobs",
            "corral.child.jobs_zygote",
            launcher,
            output,
            spec=self._zygote_spec,
            env=lambda: self.env,
            identity=identity,
            on_message=self._on_zygote_message,
            on_lost=self._on_zygote_lost,
            on_replaced=self._fork_waiting,
            on_failed=self._miss_waiting,
        )
        self.background = Background()
        self.reloading: asyncio.Task[None] | None = None
        self.stopping = False

    @property
    def size(self) -> int:
        return len(self.jobs)

    async def start(self) -> None:
        if self._call_targets():
            await self._launch_zygote()
        for name in self.jobs:
            self._arm(name)

    def _call_targets(self) -> dict[str, str]:
        return {name: c.call for name, c in self.jobs.items() if c.call is not None}

    def _zygote_spec(self) -> tuple[Message, list[int]]:
        spec = JobsZygoteSpec(
            name="jobs.zygote", targets=self._call_targets(), stop_timeout=self._stop_timeout()
        )
        return spec, []

    async def _launch_zygote(self) -> None:
        """A zygote with the current code and jobs; the previous one retires."""
        self._take(await self.zygotes.launch())

    def _take(self, zygote: ZygoteHandle) -> None:
        """`zygote` forks the runs from now on; the previous one retires."""
        old = self.zygotes.promote(zygote)
        if old is not None:
            self.zygotes.retire_if_idle(old, self._has_runs(old))
        self.unloadable = False
        self._fork_waiting()

    def _on_zygote_lost(self, zygote: ZygoteHandle) -> None:
        """Its runs in flight are counted failed: nobody will report their ends (whether it
        was the current zygote or a retiring one)."""
        if zygote.pid is not None:
            self.metrics.worker_exited(zygote.pid)
        for run in [r for r in self.runs.values() if r.zygote is zygote]:
            if run.pid is not None:  # it may outlive its zygote a while
                watch_exit(run.pid, functools.partial(self.metrics.worker_exited, run.pid))
            self._finish(run, FAILURE)

    def _has_runs(self, zygote: ZygoteHandle) -> bool:
        return any(run.zygote is zygote for run in self.runs.values())

    # -- the schedule ------------------------------------------------------------------

    def _arm(self, name: str) -> None:
        schedule = self.schedules[name]
        tick = schedule.next_run()  # each intended time once, even for a timer that fires early
        now = time.time()
        delay = tick - now + schedule.jitter()
        self.records[name].next_run = now + delay
        self.timers[name] = asyncio.get_running_loop().call_later(delay, self._tick, name, tick)

    def _disarm(self, name: str) -> None:
        timer = self.timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _tick(self, name: str, tick: float) -> None:
        if self.stopping:
            return
        self._arm(name)
        self._start_run(name, "tick", tick)

    def run_now(self, name: str) -> str:
        """Run `name` now, outside its schedule (still respecting its overlap policy)."""
        if name not in self.jobs:
            known = ", ".join(self.jobs) or "none declared"
            raise Refused(f"no job named {name!r} (jobs: {known})", unknown=True)
        if self.stopping:
            return f"{name}: not started, corral is stopping"
        if self._start_run(name, "run now"):
            return f"{name}: run started"
        return f"{name}: run skipped, the previous run is still going (overlap = 'skip')"

    def _start_run(self, name: str, what: str, tick: float | None = None) -> bool:
        """Start a run of `name` for `tick` (a Unix time; None: now), as its overlap allows."""
        config = self.jobs[name]
        if config.overlap == "skip" and any(run.job == name for run in self.runs.values()):
            self.output.say(f"{name}: {what} skipped, the previous run is still going")
            record = self.records[name]
            record.last_started, record.last_duration = time.time(), 0.0
            record.last_result = "skipped: overlap"
            self.metrics.job_run(name, "skipped", 0.0, time.time())
            self.history.finish(self.history.begin(name, what), "skipped: overlap", 0.0)
            return False
        run = Run(next(self.keys), name, self.history.begin(name, what))
        if tick is not None:
            run.tick = tick
        self.runs[run.key] = run
        if config.call is not None:
            self._fork_run(run, config)
        else:
            self.background.start(self._spawn_run(run, config))
        if config.timeout is not None:
            asyncio.get_running_loop().call_later(config.timeout, self._time_out, run)
        return True

    def _fork_run(self, run: Run, config: JobConfig) -> None:
        zygote = self.zygotes.current
        if zygote is None or not zygote.can_fork():
            self._wait_for_zygote(run)
            return
        log_read, log_write = os.pipe()
        try:
            env = {**config.env, **tick_environment(run.tick)}
            request = ForkRun(run.key, run.job, run.job, env, str(config.cwd or ""))
            zygote.fork(request, [log_write])
        except OSError:  # it has just died; its exit, on its way, starts a new one
            os.close(log_read)
            self._wait_for_zygote(run)
            return
        finally:
            os.close(log_write)
        run.pump = self.output.attach(log_read, run.job, run.record.take)
        run.zygote = zygote

    def _wait_for_zygote(self, run: Run) -> None:
        """A run due while the jobs zygote is being replaced starts late, from the new one."""
        if self.unloadable:
            self._missed(run, "the jobs zygote cannot load the code")
            return
        self.output.say(f"{run.job}: the run waits for the jobs zygote, which is being replaced")
        self.waiting.append(run)

    def _missed(self, run: Run, why: str) -> None:
        self.runs.pop(run.key, None)
        self.output.say(f"{run.job}: run missed, {why}")
        self.history.finish(run.record, f"missed: {why}", 0.0)

    def _fork_waiting(self) -> None:
        waiting, self.waiting = self.waiting, []
        for run in waiting:
            if run.key in self.runs and run.job in self.jobs:
                self._fork_run(run, self.jobs[run.job])
            else:
                self._missed(run, "the job is no longer declared")

    def _miss_waiting(self) -> None:
        """The new jobs zygote cannot load: the runs that waited for it, and those due until
        a reload loads the code, do not run."""
        self.unloadable = True
        waiting, self.waiting = self.waiting, []
        for run in waiting:
            self._wait_for_zygote(run)

    async def _spawn_run(self, run: Run, config: JobConfig) -> None:
        env = {**self.env, **config.env, **tick_environment(run.tick)}
        try:
            run.process = await spawn(
                self.launcher,
                run.job,
                argv_for(run.job, config),
                self.output,
                env,
                config.cwd,
                identity=self.identity,
                tee=run.record.take,
            )
        except OSError as error:
            self.output.say(f"{run.job}: cannot start: {error}")
            self.runs.pop(run.key, None)
            self.history.finish(run.record, f"failed: cannot start: {error}", 0.0)
            return
        run.pid = run.process.pid
        code = await run.process.wait()
        self.metrics.worker_exited(run.pid)
        self._finish(run, code)

    def _on_zygote_message(self, zygote: ZygoteHandle, message: Message) -> None:
        if isinstance(message, Forked) and message.key in self.runs:
            self.runs[message.key].pid = message.pid
        elif isinstance(message, Exited):
            self.metrics.worker_exited(message.pid)
            run = next((r for r in self.runs.values() if r.pid == message.pid), None)
            if run is not None:
                self._finish(run, message.code)

    def _finish(self, run: Run, code: int) -> None:
        if run.pump is not None:
            run.pump.read_available()  # its last lines (a traceback) before its result
        self.runs.pop(run.key, None)
        if run.zygote is not None:
            self.zygotes.retire_if_idle(run.zygote, self._has_runs(run.zygote))
        took = time.monotonic() - run.started
        if run.stopped:
            self.output.say(f"{run.job} run stopped: corral is stopping ({took:.2f}s)")
            result = "stopped"
        elif run.timed_out:
            self.output.say(f"{run.job} run failed: killed at its timeout ({took:.2f}s)")
            result = "timeout"
        elif code != 0:
            self.output.say(f"{run.job} run failed ({describe_exit(code)}, {took:.2f}s)")
            result = f"failed: {describe_exit(code)}"
        else:
            result = "ok"
        self.history.finish(run.record, result, took)
        record = self.records.get(run.job)
        if record is None:  # the job was removed from corral.toml while this run went on
            return
        record.last_started, record.last_duration, record.last_result = run.started_at, took, result
        record.runs += 1
        record.failures += result != "ok"
        self.metrics.job_run(run.job, result.partition(":")[0], took, time.time())

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
        return jobs_stop_timeout(self.jobs.values())

    # -- the group's verbs ---------------------------------------------------------------

    def reload(self) -> str:
        """Load the current code of the call jobs in a new zygote; the old one retires."""
        if self.stopping:
            return "jobs: not reloaded, corral is stopping"
        self.reloading = self.background.start(self._reload())
        return "reloading jobs"

    async def _reload(self) -> None:
        if not self._call_targets():
            return
        try:
            new = await self.zygotes.launch()
        except (AppFailed, Refused) as error:
            self.output.say(f"jobs not reloaded: {error}")
            return
        if new.broken and self.zygotes.current is not None:
            self.zygotes.discard(new)
            self.output.say(
                f"jobs not reloaded: the current code of {', '.join(new.broken)} cannot be "
                "imported (see above); the next runs use the code the jobs ran"
            )
            return
        self._take(new)
        self.output.say("jobs reloaded: the next runs use the current code")

    def restart(self, member: str | None) -> str:
        if member is not None:
            raise Refused(
                f"{member!r}: a job has no process to restart; `corral jobs run NAME` runs it now"
            )
        return self.reload()

    def scale(self, count: int) -> str:
        raise Refused("jobs cannot be scaled: each runs once per tick")

    async def settle(self) -> None:
        if self.reloading is not None:  # not the runs: one may go on for hours
            await asyncio.wait([self.reloading])

    async def apply(self, declaration: dict[str, JobConfig], env: dict[str, str]) -> None:
        """Take the jobs of a changed corral.toml: added ones are armed, removed ones disarmed.

        A job whose declaration changed is rescheduled; runs under way finish.
        """
        old, self.jobs, self.env = self.jobs, declaration, env
        for name in old:
            if name not in declaration:
                self._disarm(name)
                self.records.pop(name, None)
                self.history.forget(name)
            elif declaration[name] != old[name]:
                self._disarm(name)
        for name, config in declaration.items():
            if name not in old or config != old[name]:
                self.records.setdefault(name, JobRecord())
                self.schedules[name] = Schedule(config)
                if not self.stopping:
                    self._arm(name)

    def status(self) -> list[dict[str, Any]]:
        """The jobs zygotes as processes (each run is short-lived and not listed)."""
        return self.zygotes.status()

    def schedule_status(self) -> list[dict[str, Any]]:
        """Each job as `corral status` shows it in its jobs table."""
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

    def stop_ticking(self) -> None:
        """No new run from now on (the first thing a stop does; running ones go on).

        A reload under way is called off: its zygote, still loading, is killed.
        """
        self.stopping = True
        for run in self.waiting:
            self.runs.pop(run.key, None)
        self.waiting.clear()
        for name in list(self.timers):
            self._disarm(name)
        if self.reloading is not None:
            self.reloading.cancel()

    async def stop(self) -> None:
        """No new runs; running ones finish (up to their timeout, or 10 s), then are killed."""
        self.stop_ticking()
        deadline = time.monotonic() + self._stop_timeout()
        while self.runs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for run in list(self.runs.values()):
            run.stopped = not run.timed_out
            self._kill(run)
        await self.background.wait(timeout=5)
        await self.zygotes.stop()

    def kill(self) -> None:
        self.stop_ticking()
        for run in list(self.runs.values()):
            run.stopped = not run.timed_out
            self._kill(run)
