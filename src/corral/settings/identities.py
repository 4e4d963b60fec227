"""Who each part of a system runs as: `[corral] user`/`group` for every child, `[web]`'s for web.

Resolved once (`assign`), so that the rest of corral reads one answer: the
web app's identity is `[web]`'s, else `[corral]`'s, setting by setting;
`[corral]`'s is kept only when this corral runs a child that needs it (a
process, a job, a prestart step). So a corral started as web's user, with
`--only web` (a systemd unit's `User=`, a container's user), is never asked
to become `[corral]`'s user as well. `problems` says, before anything
starts, which identity cannot be taken on here, naming where it was set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral.identity import IdentityError, identity
from corral.settings.web import ManagerConfig, WebConfig

if TYPE_CHECKING:
    from corral.settings.resolve import System

Where = Callable[[str], str]  # how a message names a setting: "corral.toml: [corral] user"


def assign(system: System, others: bool) -> System:
    """`system` with web's identity filled in from [corral]'s, and [corral]'s dropped unless
    `others`: this corral runs a child other than web's (`runs_others`)."""
    manager, web = system.manager, system.web
    if web is not None:
        user, group = of_web(manager, web)
        web = web.model_copy(update={"user": user, "group": group})
    if not others:
        manager = manager.model_copy(update={"user": None, "group": None})
    return dataclasses.replace(system, web=web, manager=manager)


def runs_others(table: dict[str, Any], only: list[str]) -> bool:
    """Whether a corral reading corral.toml's `table`, with `--only` `only`, runs a child that
    is not web's (a process, a job, a prestart step), which runs as [corral]'s identity.

    From the file's tables, so that it can be told even when some of them do not validate.
    """
    if only:
        return any(name.partition(".")[0] != "web" for name in only)
    prestart = table.get("prestart")
    steps = prestart.get("steps") if isinstance(prestart, dict) else None
    return bool(table.get("processes") or table.get("jobs") or steps)


def runs_web(only: list[str]) -> bool:
    """Whether a corral with `--only` `only` runs the web app (when there is one)."""
    return not only or "web" in only


def of_web(manager: ManagerConfig, web: WebConfig) -> tuple[str | None, str | None]:
    """The web app's user and group: [web]'s, else [corral]'s, setting by setting."""
    return web.user or manager.user, web.group or manager.group


def problems(
    manager: ManagerConfig, web: WebConfig | None, others: bool, where: Where, web_where: Where
) -> list[str]:
    """One message per identity that cannot be taken on here: [corral]'s when `others` needs
    it, web's when there is a web app (`web`, None when this corral does not run it).

    `where(name)` names where [corral]'s `user` or `group` was set, `web_where(name)`
    where web's was ([web]'s, or the [corral] one it falls back on).
    """
    wanted = []
    if others:
        wanted.append((manager.user, manager.group, where))
    if web is not None:
        wanted.append((*of_web(manager, web), web_where))
    found = []
    for user, group, named in wanted:
        if user is None and group is None:
            continue
        try:
            identity(user, group)
        except IdentityError as error:
            message = f"{named(error.setting)}: {error.value!r}: {error.reason}"
            if message not in found:
                found.append(message)
    return found
