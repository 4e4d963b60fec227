"""corral.toml as a compose file: a service per group, one corral in each container.

- prestart: a service the others wait for (`service_completed_successfully`).
- web: one container running corral with all its workers (a compose
  service's replicas cannot share a fixed host port), its ports published on
  the addresses corral.toml binds, a healthcheck on /readyz, and a stop
  grace period covering the graceful timeout.
- each process group: a service of its replicas, one per container, with no
  published port, so that compose can scale it.
- jobs: compose has no schedules: one service runs them all in corral.
"""

from __future__ import annotations

from typing import Any

from corral.export.common import (
    STOP_MARGIN,
    Environment,
    Export,
    Target,
    graceful_stop,
    ports,
    probes_port,
    replica_note,
    seconds,
    tcp_addresses,
)
from corral.export.documents import dump
from corral.settings import System
from corral.settings.declared import jobs_stop_timeout
from corral.words import counted

ENGINE = "compose"
FILE = "compose.yaml"
HEALTH_INTERVAL = 5  # seconds


def export(system: System, target: Target, environment: Environment) -> Export:
    assert target.image is not None, "corral.export.export() asks for the image"
    result = Export()
    services = _Services(system, target, environment, result.notes)
    found: dict[str, dict[str, Any]] = {}
    if system.prestart.steps:
        found["prestart"] = services.prestart()
    if system.web is not None:
        found["web"] = services.web()
    for name in sorted(system.processes):
        found[name] = services.process(name)
    if system.jobs:
        found["jobs"] = services.jobs()
    result.files = {FILE: dump({"name": target.name, "services": found})}
    return result


class _Services:
    def __init__(
        self, system: System, target: Target, environment: Environment, notes: list[str]
    ) -> None:
        self.system = system
        self.target = target
        self.notes = notes
        self.mount = environment.mount_path(target, ENGINE)
        self.env_file = environment.file
        if self.mount is not None and self.env_file is not None:
            folder = "the folder it is written to" if target.output else "corral.toml's folder"
            self.notes.append(
                f"compose: env_file is mounted from {target.relative(self.env_file)}: "
                f"compose reads it from the folder of compose.yaml ({folder})"
            )
        # Each service runs as the identity its children need, so that corral there keeps it:
        # web's for web ([web]'s, else [corral]'s), [corral]'s for every other.
        self.user = self._user("the services but web", system.manager.user, system.manager.group)
        self.web_user = None
        if system.web is not None:
            self.web_user = self._user("web", system.web.user, system.web.group)

    def prestart(self) -> dict[str, Any]:
        service = self._service(self.target.corral("prestart"), depends=False)
        service["restart"] = "no"
        return service

    def web(self) -> dict[str, Any]:
        web = self.system.web
        assert web is not None
        addresses = tcp_addresses(web, ENGINE)
        listening = ports(addresses)
        probes = probes_port(self.system, listening, ENGINE)
        binds = [arg for port in listening for arg in ("--bind", f"0.0.0.0:{port}")]
        command = self.target.corral("run", "--only", "web", *binds)
        service = self._service([*command, "--probes", f"127.0.0.1:{probes}"], web=True)
        service["ports"] = [f"{_host(a.host)}:{a.port}:{a.port}" for a in addresses]
        readyz = f"http://127.0.0.1:{probes}/readyz"
        service["healthcheck"] = {
            "test": [
                "CMD",
                "python3",
                "-c",
                f"import urllib.request; urllib.request.urlopen({readyz!r}, timeout=2)",
            ],
            "interval": f"{HEALTH_INTERVAL}s",
            "timeout": "3s",
            "retries": 3,
            "start_period": f"{seconds(web.boot_timeout)}s",
        }
        service["stop_grace_period"] = f"{graceful_stop(web)}s"
        self.notes.append(
            f"compose: web: one container, corral with {counted(web.workers, 'worker')}, "
            f"published on {', '.join(service['ports'])}"
        )
        return service

    def process(self, group: str) -> dict[str, Any]:
        config = self.system.processes[group]
        service = self._service(self.target.corral("run", "--only", f"{group}.1"))
        service["deploy"] = {"replicas": config.replicas}
        service["stop_grace_period"] = f"{seconds(config.stop_timeout) + STOP_MARGIN}s"
        if config.replicas > 1:
            self.notes.append(replica_note(ENGINE, group, config.replicas, "containers"))
        if config.restart != "always":
            self.notes.append(
                f"compose: {group}: restart = {config.restart!r} is kept in corral (the "
                "container stays up once the process has exited)"
            )
        return service

    def jobs(self) -> dict[str, Any]:
        names = sorted(self.system.jobs)
        service = self._service(self.target.corral("run", "--only", "jobs"))
        stop_timeout = jobs_stop_timeout(self.system.jobs[name] for name in names)
        service["stop_grace_period"] = f"{seconds(stop_timeout) + STOP_MARGIN}s"
        self.notes.append(
            f"compose: jobs {', '.join(names)}: kept in corral, in service jobs "
            "(compose has no schedules)"
        )
        return service

    def _user(self, whose: str, user: str | None, group: str | None) -> str | None:
        """A service's `user:` (USER[:GROUP], names or numbers), or None for the image's."""
        if user is not None:
            self.notes.append(
                f"compose: {whose}: user {':'.join(p for p in (user, group) if p)}, the "
                "identity its children run as, so corral there keeps it (a name is looked "
                "up in the image)"
            )
        if user is None and group is not None:
            self.notes.append(
                f"compose: {whose}: group {group!r} without a user: a service's group goes "
                "with its user, so they start as their image's user; corral there runs the "
                f"children with group {group!r} if that user is root, else it refuses to start"
            )
        return None if user is None else ":".join(part for part in (user, group) if part)

    def _service(
        self, command: list[str], depends: bool = True, web: bool = False
    ) -> dict[str, Any]:
        service: dict[str, Any] = {"image": self.target.image, "command": command}
        if self.target.workdir is not None:
            service["working_dir"] = self.target.workdir
        user = self.web_user if web else self.user
        if user is not None:
            service["user"] = user
        if self.mount is not None and self.env_file is not None:
            source = self.target.relative(self.env_file)  # compose reads it from its own folder
            mount = {"type": "bind", "source": source, "target": self.mount, "read_only": True}
            service["volumes"] = [mount]
        if depends and self.system.prestart.steps:
            service["depends_on"] = {"prestart": {"condition": "service_completed_successfully"}}
        service["restart"] = "on-failure"
        return service


def _host(host: str | None) -> str:
    return f"[{host}]" if host and ":" in host else host or "0.0.0.0"
