"""What the three engines share: the plan of what goes where, names, commands, schedules.

An export is a function of the resolved `System` (corral.toml) and the
`Target` options alone: the same input gives the same bytes, so generated
files can be committed and compared.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from croniter import croniter

from corral.addresses import Address, AddressError, parse_bind
from corral.errors import UsageError
from corral.settings import JobConfig, PrestartCall, System, WebConfig

# Seconds a stop may take beyond what corral.toml allows for it: the manager's own exit.
STOP_MARGIN = 5
# What the probes listener listens on in a pod or a container, unless [corral] probes says.
PROBES_PORT = 9000
CONFIG_NAMES = ("corral.toml", "pyproject.toml")  # found without -c
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*,/-]+$")  # no `?` nor `#`
CRON_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class ExportError(Exception):
    """corral.toml says something this engine cannot run faithfully; each message says what."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


@dataclass(frozen=True)
class Target:
    """The export's options: where and how the engine finds the app and corral.

    No path in an export depends on where the configuration's folder is on
    this machine: a path inside it is written relative to it (`relative`),
    or under `workdir` where the engine wants it absolute (`under_workdir`).
    """

    name: str  # the application's name: APP.target, APP-web, the compose project
    config: Path  # the corral.toml (or pyproject.toml) the system was read from
    image: str | None = None  # Kubernetes, compose: the image with the app, corral, corral.toml
    workdir: str | None = None  # where corral.toml is where the engine runs corral
    executable: str = "corral"  # systemd: the corral that ExecStart runs
    output: Path | None = None  # the folder the files go to (None: the configuration's)

    @property
    def folder(self) -> Path:
        """The configuration's folder, where corral reads its relative paths from."""
        return self.config.resolve().parent

    def corral(self, *args: str) -> list[str]:
        """The command line of a corral run there, with -c when the file is not found alone."""
        config = [] if self.config.name in CONFIG_NAMES else ["-c", self.config.name]
        executable = self.executable  # a bare name is looked up on PATH; a path may move
        return [self.under_workdir(executable) if "/" in executable else executable, *config, *args]

    def under_workdir(self, path: str) -> str:
        """`path` (read from the configuration's folder) where the engine finds it: a path
        inside that folder moves with it under `workdir`; any other stays as it is."""
        inside = _inside(self.folder, path)
        if inside is None or self.workdir is None:
            return path
        return str(PurePosixPath(self.workdir) / inside) if inside.parts else self.workdir

    def relative(self, path: Path) -> str:
        """`path` (read from the configuration's folder) from the folder the files go to,
        as a file there names it ("./.env", "../../.env"); an absolute one outside stays."""
        if path.is_absolute() and _inside(self.folder, str(path)) is None:
            return str(path)
        output = (self.output or self.folder).resolve()
        found = Path(os.path.relpath(self.folder / path, output)).as_posix()
        return found if found.startswith("../") else f"./{found}"


def _inside(folder: Path, path: str) -> PurePosixPath | None:
    """`path` relative to `folder` when it lies inside it (relative paths do), else None."""
    candidate = Path(path)
    if not candidate.is_absolute():
        return PurePosixPath(candidate.as_posix())
    try:
        return PurePosixPath(candidate.relative_to(folder).as_posix())
    except ValueError:
        return None


@dataclass(frozen=True)
class Environment:
    """corral.toml's environment as written, which System.env holds merged."""

    table: dict[str, str]  # [env]
    file: Path | None = None  # env_file, as written (relative to where corral runs)
    file_text: str = ""  # its content

    def mount_path(self, target: Target, engine: str) -> str | None:
        """Where corral in a container reads env_file: an absolute path, or None without one.

        ExportError when it lies in the configuration's folder and --workdir does not
        say where that folder is in the container.
        """
        if self.file is None:
            return None
        if _inside(target.folder, str(self.file)) is None:
            return str(self.file)
        if target.workdir is None:
            raise ExportError(
                [
                    f"{engine}: env_file = {str(self.file)!r} is read by corral in each "
                    "container, relative to its working directory: give --workdir, the "
                    "image's working directory, so that the file is mounted there"
                ]
            )
        return target.under_workdir(str(self.file))


@dataclass
class Export:
    """The files of one engine (name -> text) and what the user must be told."""

    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def app_name(config: Path) -> str:
    """The default application name: the configuration's folder, as a DNS label."""
    folder = config.resolve().parent.name.lower()
    return re.sub(r"[^a-z0-9]+", "-", folder).strip("-")[:40]


def check_name(name: str, given: bool) -> str:
    """`name` if Kubernetes, systemd and compose all take it; UsageError otherwise.

    `given`: it is --name's (else the configuration's folder's, made a DNS label).
    """
    if not _DNS_LABEL.match(name) or len(name) > 40:
        where = "--name" if given else "the configuration's folder, as a name,"
        raise UsageError(
            f"{where} {name!r}: expected up to 40 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit" + ("" if given else "; give --name")
        )
    return name


def dns_names(prefix: str, names: list[str], what: str) -> dict[str, str]:
    """Each corral name as a Kubernetes object name (`_` becomes `-`); ExportError on a clash."""
    mapped = {name: f"{prefix}-{name.replace('_', '-')}" for name in names}
    seen: dict[str, str] = {}
    problems = []
    for name, dns in mapped.items():
        if dns in seen:
            problems.append(f"{what} {seen[dns]!r} and {name!r} would both be named {dns!r}")
        seen[dns] = name
        if len(dns) > 52:  # a CronJob's limit, the shortest: its Jobs add 11 characters
            problems.append(f"{what} {name!r}: {dns!r} is longer than 52 characters")
    if problems:
        raise ExportError(problems)
    return mapped


# -- web -----------------------------------------------------------------------------


def bind_addresses(web: WebConfig) -> list[Address]:
    """Where web listens, as `corral run` reads its settings: --bind, else --uds, else host:port."""
    if web.bind:
        specs = web.bind
    elif web.uds:
        specs = [f"unix:{web.uds}"]
    else:
        specs = [f"[{web.host}]:{web.port}" if ":" in web.host else f"{web.host}:{web.port}"]
    try:
        return [parse_bind(spec) for spec in specs]
    except AddressError as error:
        raise ExportError([str(error)]) from None


def tcp_addresses(web: WebConfig, engine: str) -> list[Address]:
    """Where web listens, as TCP addresses; ExportError for what a container cannot publish."""
    addresses = []
    problems = []
    for address in bind_addresses(web):
        if address.port is None:
            problems.append(
                f"{engine}: web listens on {address}: a container publishes TCP ports only; "
                "bind HOST:PORT in corral.toml's [web]"
            )
        elif address.port == 0:
            problems.append(f"{engine}: web listens on {address}: port 0 is not a fixed port")
        else:
            addresses.append(address)
    if problems:
        raise ExportError(problems)
    return addresses


def ports(addresses: list[Address]) -> list[int]:
    return sorted({address.port for address in addresses if address.port is not None})


def probes_port(system: System, taken: list[int], engine: str) -> int:
    """The probes listener's port in a container: [corral] probes' port, else PROBES_PORT."""
    port = PROBES_PORT
    if system.manager.probes is not None:
        port = int(system.manager.probes.rpartition(":")[2] or 0)
    if port in taken or port == 0:
        raise ExportError(
            [
                f"{engine}: the probes listener needs a port of its own, and {port} is "
                'web\'s or 0: set one with [corral] probes = "0.0.0.0:PORT"'
            ]
        )
    return port


def graceful_stop(web: WebConfig) -> int:
    """Seconds a web stop may take: the graceful timeout, and the manager's own exit."""
    return math.ceil(web.graceful_timeout) + STOP_MARGIN


def seconds(value: float) -> int:
    """A duration as the whole seconds engines take, never shorter than asked."""
    return max(1, math.ceil(value))


# -- jobs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cron:
    """A job's schedule as a five-field cron expression, and how it was read from corral.toml."""

    expression: str
    fields: list[list[int] | None]  # minute, hour, day of month, month, day of week; None = *
    timezone: str
    said: str  # "every = 300s, as */5 * * * * (on the clock's minutes)" when `every` was given


def cron_of(config: JobConfig) -> Cron | None:
    """The job's schedule as a standard cron expression, or None if it has none.

    `every` maps when it divides an hour or a day into whole minutes or hours
    (the runs then fall on the clock's minutes, where corral's fall on its
    start's); seconds, six-field expressions and croniter's extensions (L, W,
    #, H) have none.
    """
    timezone = config.timezone or "Etc/UTC"  # corral's default: see corral.manager.schedule
    if config.every is not None:
        expression = _every_as_cron(config.every)
        if expression is None:
            return None
        said = f"every = {config.every:g}s, as {expression!r} (on the clock's minutes)"
        return Cron(expression, _expand(expression), timezone, said)
    assert config.schedule is not None
    expression = CRON_DESCRIPTORS.get(config.schedule.strip().lower(), config.schedule.strip())
    parts = expression.split()
    if len(parts) != 5 or not all(_CRON_FIELD.match(part) for part in parts):
        return None
    if any(re.search("[a-z]", re.sub("[a-z]{3}", "", part.lower())) for part in parts):
        return None  # letters that are not a month's or a day's name: L, W, H
    fields = _expand(expression)
    if any(values is not None and not all(isinstance(v, int) for v in values) for values in fields):
        return None
    return Cron(config.schedule, fields, timezone, f"schedule = {config.schedule!r}")


def _every_as_cron(every: float) -> str | None:
    if every % 60 or every < 60:
        return None
    minutes = int(every // 60)
    if minutes < 60 and 60 % minutes == 0:
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    if minutes % 60 == 0 and 24 % (minutes // 60) == 0:
        hours = minutes // 60
        return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
    if minutes == 24 * 60:
        return "0 0 * * *"
    return None


def _expand(expression: str) -> list[list[int] | None]:
    expanded, _ = croniter.expand(expression)  # the `#` of nth weekdays is refused above
    return [None if values == ["*"] else sorted(set(values)) for values in expanded]


def why_kept(config: JobConfig, cron: Cron | None) -> str:
    """What a job says that a CronJob or a timer cannot, so that it stays with corral."""
    if cron is None and config.every is not None:
        return (
            f"every = {config.every:g}s: not whole minutes dividing an hour, "
            "nor whole hours dividing a day"
        )
    if cron is None:
        return f"schedule = {config.schedule!r}: not a five-field cron expression"
    return f"jitter = {config.jitter:g}s"


# -- prestart ------------------------------------------------------------------------


def prestart_hash(system: System) -> str:
    """Ten hex digits that change when a step does: a changed step is a new Job."""
    steps = [
        {"call": step.call} if isinstance(step, PrestartCall) else step
        for step in system.prestart.steps
    ]
    return hashlib.sha256(json.dumps(steps, sort_keys=True).encode()).hexdigest()[:10]


def replica_note(engine: str, name: str, replicas: int, what: str) -> str:
    return (
        f"{engine}: {name}: {replicas} {what}, each running `corral run --only {name}.1`: "
        "CORRAL_REPLICA is 1 in each (they have no stable number of their own)"
    )
