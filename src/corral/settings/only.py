"""`--only`: one part of the system, for one container or one unit (`corral run --only web`).

A container runs one group and the engine replicates it, so corral keeps
what is named and drops the rest, prestart included: prestart runs once, on
its own (`corral prestart`), not once per replica.

    web           the web app
    jobs          every scheduled job; jobs.NAME, one of them
    NAME          a process group, all its replicas; NAME.N, replica N alone
                  (named NAME.N, with CORRAL_REPLICA=N, as on one machine)
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from corral.settings.base import ConfigError
from corral.settings.declared import PrestartConfig, ProcessConfig

if TYPE_CHECKING:
    from corral.settings.resolve import System


def select(system: System, only: list[str], where: str = "--only") -> System:
    """The part of `system` that `only` names; all of it when `only` is empty.

    `where` is how the user gave `only`, for the messages. Raises
    ConfigError, one message per name that matches nothing, each listing
    the names that would.
    """
    if not only:
        return system
    web = False
    jobs: set[str] = set()
    whole: set[str] = set()
    replica: dict[str, int] = {}
    problems = []
    for item in only:
        group, dot, member = item.partition(".")
        if group == "web" and system.web is not None and not dot:
            web = True
        elif group == "jobs" and system.jobs and (not dot or member in system.jobs):
            jobs |= {member} if dot else set(system.jobs)
        elif group in system.processes and not dot:
            whole.add(group)
        elif group in system.processes and _is_replica(member, system.processes[group]):
            if replica.setdefault(group, int(member)) != int(member):
                problems.append(f"{where}: {item!r}: one replica of {group} at most per corral")
        else:
            problems.append(f"{where}: {item!r} names nothing here (expected {_known(system)})")
    if problems:
        raise ConfigError(problems)
    replica = {group: number for group, number in replica.items() if group not in whole}
    processes = {
        name: config.model_copy(update={"replicas": 1}) if name in replica else config
        for name, config in system.processes.items()
        if name in whole or name in replica
    }
    return dataclasses.replace(
        system,
        web=system.web if web else None,
        processes=processes,
        jobs={name: config for name, config in system.jobs.items() if name in jobs},
        prestart=PrestartConfig(),
        only_replica=replica,
    )


def _is_replica(member: str, config: ProcessConfig) -> bool:
    """NAME.N names a replica that the group declares (NAME.1 also when it declares none)."""
    return member.isascii() and member.isdigit() and 1 <= int(member) <= max(config.replicas, 1)


def _known(system: System) -> str:
    names = ["web"] if system.web is not None else []
    names += [f"{name} or {name}.1..{max(c.replicas, 1)}" for name, c in system.processes.items()]
    if system.jobs:
        names.append("jobs or " + ", ".join(f"jobs.{name}" for name in system.jobs))
    return "; ".join(names) or "nothing is declared"
