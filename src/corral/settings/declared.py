"""What corral.toml declares beside the web app: processes, jobs, prestart steps, environment.

[processes.NAME]   a long-running callable or command, N replicas
[jobs.NAME]        a scheduled callable or command
[prestart]         steps that run once, in order, before anything starts
[env], env_file    environment for every process
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from corral.units import Duration

CONFIG_FILE = "corral.toml"
NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
RESERVED_NAMES = {"web", "corral", "jobs", "prestart"}  # parts of --only and of exports


def _target(value: str | None) -> str | None:
    if value is not None:
        module, _, attribute = value.partition(":")
        if not module or not attribute:
            raise ValueError(f"expected MODULE:ATTRIBUTE such as tasks:main, got {value!r}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Runnable(_Strict):
    """What a process or a job runs: a Python callable (sync or async) or a command."""

    call: str | None = Field(
        None,
        description="A Python callable to run, as MODULE:ATTRIBUTE; sync or async "
        "(exactly one of call and command).",
    )
    command: str | None = Field(
        None,
        description="A command to run, split as a shell would and run without one, so that "
        "signals reach it.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for it, over [env]'s."
    )
    cwd: Path | None = Field(None, description="The directory it runs in (default: corral's own).")

    _call_is_a_target = field_validator("call")(_target)

    @field_validator("command")
    @classmethod
    def _splits_into_arguments(cls, value: str | None) -> str | None:
        """A command is split as a shell would, then run without one: it must split, into words."""
        if value is None:
            return value
        try:
            argv = shlex.split(value)
        except ValueError as error:
            reason = str(error)[:1].lower() + str(error)[1:]
            raise ValueError(f"{value!r} cannot be split into arguments: {reason}") from None
        if not argv:
            raise ValueError("expected a program and its arguments, got an empty command")
        return value

    @model_validator(mode="after")
    def _one_of_call_or_command(self) -> Runnable:
        if (self.call is None) == (self.command is None):
            raise ValueError("give exactly one of `call` or `command`")
        return self


class ProcessConfig(Runnable):
    replicas: int = Field(
        1, ge=0, description="How many run at once: NAME.1..NAME.N, each with CORRAL_REPLICA=i."
    )
    restart: Literal["always", "on-failure", "never"] = Field(
        "always",
        description="When a replica that exited starts again (with a backoff): always, "
        "on-failure (a non-zero exit), or never.",
    )
    stop_signal: str = Field(
        "SIGTERM", description="The signal that asks a replica to stop (SIGTERM, INT...)."
    )
    stop_timeout: Duration = Field(
        10.0, description="Seconds a replica has to stop after stop_signal, before SIGKILL."
    )

    @field_validator("stop_signal")
    @classmethod
    def _a_signal(cls, value: str) -> str:
        name = value.upper() if value.upper().startswith("SIG") else "SIG" + value.upper()
        if not hasattr(signal.Signals, name):
            raise ValueError(f"expected a signal name such as SIGTERM or INT, got {value!r}")
        return name


class JobConfig(Runnable):
    every: Duration | None = Field(
        None, gt=0, description='Run at this interval ("1s", "5m"); or give schedule.'
    )
    schedule: str | None = Field(
        None, description='Run on this cron schedule ("*/5 * * * *"); or give every.'
    )
    timezone: str | None = Field(
        None, description="The time zone of schedule, such as Europe/Paris (default: UTC)."
    )
    overlap: Literal["skip", "allow"] = Field(
        "skip",
        description="What a tick does while the previous run still goes: skip it, or allow "
        "a second run.",
    )
    timeout: Duration | None = Field(
        None, gt=0, description="Seconds after which a run is killed and counted failed."
    )
    jitter: Duration = Field(
        0.0, description="A random delay of up to this many seconds before each run."
    )

    @field_validator("schedule")
    @classmethod
    def _a_cron_expression(cls, value: str | None) -> str | None:
        from croniter import CroniterBadDateError, croniter

        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"expected a cron expression such as '*/5 * * * *', got {value!r}")
        if value is not None:
            try:
                croniter(value).get_next(float)
            except CroniterBadDateError:
                raise ValueError(f"{value!r} never fires (no such date)") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _a_timezone(cls, value: str | None) -> str | None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"expected a timezone such as Europe/Paris, got {value!r}"
                ) from None
        return value

    @model_validator(mode="after")
    def _one_of_every_or_schedule(self) -> JobConfig:
        if (self.every is None) == (self.schedule is None):
            raise ValueError("give exactly one of `every` (an interval) or `schedule` (cron)")
        if self.timezone is not None and self.schedule is None:
            raise ValueError("`timezone` goes with `schedule`")
        return self


class PrestartCall(_Strict):
    call: str = Field(description="A Python callable to run once, as MODULE:ATTRIBUTE.")

    _call_is_a_target = field_validator("call")(_target)


class PrestartConfig(_Strict):
    steps: list[str | PrestartCall] = Field(
        default_factory=list,
        description="Run once, in order, before anything starts: a command (run by sh -c) "
        'or { call = "module:function" }; the first that fails stops corral (exit 4).',
    )

    @field_validator("steps", mode="before")
    @classmethod
    def _each_a_command_or_a_call(cls, steps: Any) -> Any:
        if not isinstance(steps, list):
            return steps
        checked: list[str | PrestartCall] = []
        problems = []
        for number, step in enumerate(steps, start=1):
            if isinstance(step, str):
                checked.append(step)
                problem = shell_syntax_error(step)
                if problem:
                    problems.append(f"step {number}: {SHELL} cannot parse it: {problem}")
            elif isinstance(step, dict) and set(step) == {"call"}:
                try:
                    checked.append(PrestartCall.model_validate(step))
                except ValidationError as error:
                    reason = error.errors()[0]["msg"].removeprefix("Value error, ")
                    problems.append(f"step {number}: {reason}")
            else:
                problems.append(
                    f'step {number}: expected a command string or {{ call = "module:function" }}, '
                    f"got {step!r}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return checked


SHELL = "/bin/sh"


def shell_syntax_error(command: str) -> str | None:
    """What `sh` says is wrong with `command`'s syntax, or None; nothing is run (`sh -n`).

    Prestart steps run through `sh -c`, so the shell that will run them
    judges them: an unclosed quote is refused when the file is read,
    rather than after the steps before it have run.
    """
    checked = subprocess.run(
        [SHELL, "-n", "-c", command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
    )
    if checked.returncode == 0:
        return None
    said = checked.stderr.strip().splitlines()
    return said[-1].removeprefix(f"{SHELL}: ").removeprefix("1: ") if said else "a syntax error"


class FileConfig(_Strict):
    """corral.toml's tables; [corral] and [web] are validated once merged with the flags."""

    corral: dict[str, Any] | None = Field(
        None, description="The manager's own settings (ManagerConfig): control, user, ..."
    )
    web: dict[str, Any] | None = Field(
        None, description="The web app: every `corral run` setting by its name (WebConfig)."
    )
    processes: dict[str, ProcessConfig] = Field(
        default_factory=dict, description="Long-running processes, by group name."
    )
    jobs: dict[str, JobConfig] = Field(default_factory=dict, description="Scheduled jobs, by name.")
    prestart: PrestartConfig = Field(
        default_factory=PrestartConfig, description="Steps that run once before anything starts."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for every process."
    )
    env_file: Path | None = Field(
        None, description="A .env file whose variables every process gets, under [env]'s."
    )


JOB_STOP_TIMEOUT = 10.0
"""Seconds a stop waits for a run of a job that has no `timeout`, before killing it."""


def jobs_stop_timeout(jobs: Iterable[JobConfig]) -> float:
    """How long a stop waits for running jobs, in seconds: the longest of their timeouts,
    a job without one counting JOB_STOP_TIMEOUT."""
    return max((job.timeout or JOB_STOP_TIMEOUT for job in jobs), default=JOB_STOP_TIMEOUT)
