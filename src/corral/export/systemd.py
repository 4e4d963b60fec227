"""corral.toml as systemd units, one corral per unit.

- APP.target wants every unit; each is PartOf it, so it starts and stops them all.
- web: APP-web.socket holds the listening sockets (they outlive a restart of
  the service) and APP-web.service runs corral itself (no shell between, so
  LISTEN_PID is corral's), Type=notify: READY=1 once a worker serves.
- each process group: a template, APP-NAME@.service, instance N running
  replica N (`corral run --only NAME.N`, CORRAL_REPLICA=N).
- each job a timer can express: APP-NAME.timer and a oneshot APP-NAME.service
  (`corral job NAME`); a timer never starts a unit still running, which is
  overlap = "skip". The others: one APP-jobs.service running them in corral.
- prestart: a oneshot APP-prestart.service the others require and follow.
"""

from __future__ import annotations

import ipaddress

from corral.export.common import (
    STOP_MARGIN,
    Cron,
    Export,
    ExportError,
    Target,
    bind_addresses,
    cron_of,
    graceful_stop,
    seconds,
    why_kept,
)
from corral.settings import System
from corral.settings.declared import jobs_stop_timeout
from corral.words import counted

ENGINE = "systemd"
WEEKDAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")  # cron's 0..6
RELOAD = "/bin/kill -HUP $MAINPID"


class Specifier(str):
    """Text systemd expands (%i), written as it is."""


def export(system: System, target: Target) -> Export:
    result = Export()
    units = _Units(system, target, result.notes)
    if system.prestart.steps:
        units.prestart()
    if system.web is not None:
        units.web()
    for name in sorted(system.processes):
        units.process(name)
    kept = []
    for name in sorted(system.jobs):
        config = system.jobs[name]
        cron = cron_of(config)
        if cron is None or config.overlap == "allow":
            kept.append(name)
            why = "overlap = 'allow'" if cron is not None else why_kept(config, cron)
            result.notes.append(
                f"systemd: job {name}: kept in corral, in {units.name('jobs')}.service "
                f"(a timer cannot express {why})"
            )
        else:
            units.timer(name, cron)
            result.notes.append(
                f"systemd: job {name}: {units.name(name)}.timer ({cron.said}"
                + (f", jitter as RandomizedDelaySec={config.jitter:g}s" if config.jitter else "")
                + ")"
            )
    if kept:
        units.jobs(kept)
    units.target()
    result.files = dict(sorted(units.files.items()))
    return result


class _Units:
    def __init__(self, system: System, target: Target, notes: list[str]) -> None:
        self.system = system
        self.options = target
        self.notes = notes
        self.files: dict[str, str] = {}
        self.wanted: list[str] = []
        # Each unit runs as the identity its children need, so that corral there keeps it:
        # web's for web's unit ([web]'s, else [corral]'s), [corral]'s for every other.
        self.identity = _identity(system.manager.user, system.manager.group)
        web = system.web
        self.web_identity = _identity(web.user, web.group) if web is not None else []

    def name(self, part: str) -> str:
        return f"{self.options.name}-{part}"

    # -- the units -----------------------------------------------------------------

    def prestart(self) -> None:
        self._add(
            "prestart.service",
            self._unit("prestart", prestart=False),
            [
                "[Service]",
                "Type=oneshot",
                "RemainAfterExit=yes",  # once per start of the target, not once per dependent
                self._exec(self.options.corral("prestart")),
                "TimeoutStartSec=infinity",
                *self._where(),
                *self.identity,
            ],
        )

    def web(self) -> None:
        web = self.system.web
        assert web is not None
        listen = self._listen_streams()
        self._add(
            "web.socket",
            [
                "[Unit]",
                f"Description={self.options.name} web: its listening sockets",
                f"PartOf={self.options.name}.target",
            ],
            [
                "[Socket]",
                *listen,
                *(["BindIPv6Only=ipv6-only"] if any("[" in line for line in listen) else []),
                f"Backlog={web.backlog}",
            ],
        )
        self._add(
            "web.service",
            [
                *self._unit("web"),
                f"Requires={self.name('web')}.socket",
                f"After={self.name('web')}.socket",
            ],
            [
                "[Service]",
                "Type=notify",
                "NotifyAccess=main",
                self._exec(self.options.corral("run", "--only", "web")),
                f"ExecReload={RELOAD}",
                "KillMode=mixed",
                f"TimeoutStartSec={seconds(web.boot_timeout) + STOP_MARGIN}s",
                f"TimeoutStopSec={graceful_stop(web)}s",
                "Restart=on-failure",
                *self._where(),
                *self.web_identity,
            ],
        )
        addresses = ", ".join(line.partition("=")[2] for line in listen)
        self.notes.append(
            f"systemd: web: {self.name('web')}.socket ({addresses}) "
            f"and {self.name('web')}.service, corral with {counted(web.workers, 'worker')}"
        )

    def process(self, group: str) -> None:
        config = self.system.processes[group]
        self._add(
            f"{group}@.service",
            self._unit(f"{group}.%i"),
            [
                "[Service]",
                "Type=notify",
                "NotifyAccess=main",
                self._exec(self.options.corral("run", "--only", Specifier(f"{group}.%i"))),
                f"ExecReload={RELOAD}",
                "KillMode=mixed",
                f"TimeoutStopSec={seconds(config.stop_timeout) + STOP_MARGIN}s",
                "Restart=on-failure",
                *self._where(),
                *self.identity,
            ],
            wanted=[f"{group}@{index}.service" for index in range(1, config.replicas + 1)],
        )
        self.notes.append(
            f"systemd: {group}: {self.name(group)}@.service, instances 1..{config.replicas}"
            + (
                f"; restart = {config.restart!r} is kept in corral (the unit stays active "
                "once the process has exited)"
                if config.restart != "always"
                else ""
            )
        )

    def timer(self, job: str, cron: Cron) -> None:
        config = self.system.jobs[job]
        self._add(
            f"{job}.timer",
            [
                "[Unit]",
                f"Description={self.options.name} job {job}: its schedule",
                f"PartOf={self.options.name}.target",
            ],
            [
                "[Timer]",
                *(f"OnCalendar={spec}" for spec in on_calendar(cron)),
                "AccuracySec=1s",  # systemd's default, a minute, would shift every run
                *([f"RandomizedDelaySec={config.jitter:g}s"] if config.jitter else []),
            ],
        )
        timeout = f"{seconds(config.timeout) + STOP_MARGIN}s" if config.timeout else "infinity"
        self._add(
            f"{job}.service",
            self._unit(f"job {job}"),
            [
                "[Service]",
                "Type=oneshot",
                self._exec(self.options.corral("job", job)),
                f"TimeoutStartSec={timeout}",  # corral kills the run at its timeout first
                *self._where(),
                *self.identity,
            ],
            wanted=[],
        )

    def jobs(self, kept: list[str]) -> None:
        only = ",".join(f"jobs.{name}" for name in kept)
        stop_timeout = jobs_stop_timeout(self.system.jobs[name] for name in kept)
        self._add(
            "jobs.service",
            self._unit("jobs"),
            [
                "[Service]",
                "Type=notify",
                "NotifyAccess=main",
                self._exec(self.options.corral("run", "--only", only)),
                f"ExecReload={RELOAD}",
                "KillMode=mixed",
                f"TimeoutStopSec={seconds(stop_timeout) + STOP_MARGIN}s",
                "Restart=on-failure",
                *self._where(),
                *self.identity,
            ],
        )

    def target(self) -> None:
        self.files[f"{self.options.name}.target"] = _text(
            [
                "[Unit]",
                f"Description={self.options.name}, run by corral",
                *(f"Wants={unit}" for unit in self.wanted),
            ],
            ["[Install]", "WantedBy=multi-user.target"],
        )

    # -- parts ---------------------------------------------------------------------

    def _add(
        self, part: str, unit: list[str], body: list[str], wanted: list[str] | None = None
    ) -> None:
        self.files[self.name(part)] = _text(unit, body)
        self.wanted += [self.name(w) for w in wanted] if wanted is not None else [self.name(part)]

    def _unit(self, what: str, prestart: bool = True) -> list[str]:
        lines = [
            "[Unit]",
            f"Description={self.options.name} {what} (corral)",
            f"PartOf={self.options.name}.target",
        ]
        if prestart and self.system.prestart.steps:
            lines += [f"Requires={self.name('prestart')}.service"]
            lines += [f"After={self.name('prestart')}.service"]
        return lines

    def _where(self) -> list[str]:
        assert self.options.workdir is not None  # the CLI's default: the configuration's folder
        return [f"WorkingDirectory={_escape(self.options.workdir)}"]

    def _exec(self, argv: list[str]) -> str:
        return "ExecStart=" + " ".join(_quote(arg) for arg in argv)

    def _listen_streams(self) -> list[str]:
        web = self.system.web
        assert web is not None
        lines, problems = [], []
        for address in bind_addresses(web):
            if address.path is not None:  # systemd wants it absolute: under WorkingDirectory
                lines.append(f"ListenStream={_escape(self.options.under_workdir(address.path))}")
            elif address.fd is not None or not _is_ip(address.host):
                problems.append(
                    f"systemd: web binds {address}: a socket unit listens on an IP address "
                    "and a port, or a path"
                )
            else:
                lines.append(f"ListenStream={address}")
        if problems:
            raise ExportError(problems)
        return lines


def _identity(user: str | None, group: str | None) -> list[str]:
    """User= and Group= lines, for those set."""
    return [f"{key}={_escape(value)}" for key, value in (("User", user), ("Group", group)) if value]


def on_calendar(cron: Cron) -> list[str]:
    """The OnCalendar= values whose union is `cron`'s ticks, in its time zone.

    When both the day of the month and the day of the week are given, cron
    runs on either; systemd's calendar wants both: so two values.
    """
    minute, hour, day, month, weekday = cron.fields
    time = f"{_values(hour)}:{_values(minute)}:00"

    def spec(weekdays: list[int] | None, days: list[int] | None) -> str:
        names = f"{_weekdays(weekdays)} " if weekdays is not None else ""
        return f"{names}*-{_values(month)}-{_values(days)} {time} {cron.timezone}"

    if day is not None and weekday is not None:
        return [spec(None, day), spec(weekday, None)]
    return [spec(weekday, day)]


def _values(values: list[int] | None) -> str:
    """1,2,3,4,7 as 1..4,7: systemd's ranges."""
    if values is None:
        return "*"
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ",".join(
        f"{run[0]:02d}..{run[-1]:02d}" if len(run) > 2 else ",".join(f"{v:02d}" for v in run)
        for run in runs
    )


def _weekdays(values: list[int]) -> str:
    return ",".join(WEEKDAYS[value % 7] for value in values)


def _is_ip(host: str | None) -> bool:
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True


def _escape(text: str) -> str:
    """Text systemd takes as it is: `%` starts a specifier, `$` a variable."""
    return text.replace("%", "%%").replace("$", "$$")


def _quote(arg: str) -> str:
    """One argument of an Exec line, quoted when systemd would split it."""
    if isinstance(arg, Specifier):
        return arg
    text = _escape(arg).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"' if not text or any(c.isspace() for c in text) else text


def _text(unit: list[str], body: list[str]) -> str:
    return "\n".join(unit) + "\n\n" + "\n".join(body) + "\n"
