"""`corral check`, beyond the settings: import every target a configuration names, and find
every program a `command` runs, without running anything.

The settings themselves (files, addresses, identities) are checked as `run`
checks them, by `corral.settings.resolve`; these are what only starting
would otherwise tell.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from corral.child.app_loader import AppLoadError, load_app
from corral.child.web_app import load_web_app
from corral.settings import PrestartCall, Runnable, System

WEB_APP = "[web] app"


def targets(system: System, web_app: str = WEB_APP) -> list[tuple[str, str, bool]]:
    """(where it is declared, MODULE:ATTRIBUTE, is it a factory) for every Python target.

    `web_app` says where the web app was given ([web] app, or APP on the command line).
    """
    found = []
    if system.web is not None:
        found.append((web_app, system.web.app, system.web.factory))
    for name, process in system.processes.items():
        if process.call is not None:
            found.append((f"[processes.{name}] call", process.call, False))
    for name, job in system.jobs.items():
        if job.call is not None:
            found.append((f"[jobs.{name}] call", job.call, False))
    for number, step in enumerate(system.prestart.steps, start=1):
        if isinstance(step, PrestartCall):
            found.append((f"[prestart] step {number}", step.call, False))
    return found


def problems_with(system: System, app_given: bool = False) -> list[str]:
    """One message per target that does not import (or whose factory fails), and per
    program a `command` names that is not there to run.

    `app_given`: the web app is APP, from the command line, not corral.toml's.
    """
    sys.path.insert(0, os.getcwd())
    os.environ.update(system.env)
    if system.web is not None and system.web.env_file is not None:
        from dotenv import load_dotenv

        load_dotenv(system.web.env_file, override=False)
    file = f"{system.config.name}: " if system.config is not None else ""
    web_app = "APP" if app_given else f"{file}{WEB_APP}"
    problems = []
    for where, target, factory in targets(system, web_app):
        try:
            if where == web_app and system.web is not None:
                load_web_app(system.web)  # found, and told ASGI or WSGI, as the workers will
            else:
                load_app(target, factory)
        except AppLoadError as error:
            named = where if where == web_app else f"{file}{where}"
            problems.append(f"{named} {target!r}: {error}")
    declared: list[tuple[str, Runnable]] = [
        *((f"[processes.{name}]", config) for name, config in system.processes.items()),
        *((f"[jobs.{name}]", config) for name, config in system.jobs.items()),
    ]
    for where, runnable in declared:
        problem = missing_program(runnable, system.env)
        if problem is not None:
            problems.append(f"{file}{where} command: {problem}")
    return problems


def missing_program(runnable: Runnable, env: dict[str, str]) -> str | None:
    """What is wrong with the program `runnable`'s command starts, or None (or no command).

    Found as the launcher will find it: on the PATH the child gets (`env`,
    then the runnable's own, over ours), or from its working directory.
    """
    if runnable.command is None:
        return None
    program = shlex.split(runnable.command)[0]
    cwd = Path(runnable.cwd or ".")
    if "/" in program:
        path = cwd / program
        if not path.is_file():
            return f"no such program {program!r}"
        return None if os.access(path, os.X_OK) else f"{program!r} is not executable"
    search = {**os.environ, **env, **runnable.env}.get("PATH", os.defpath)
    found = shutil.which(program, path=os.pathsep.join(_from(cwd, search)))
    return None if found is not None else f"no program {program!r} on PATH ({search})"


def _from(cwd: Path, search: str) -> list[str]:
    """PATH's folders, a relative one read from `cwd` as the child will."""
    return [str(cwd / folder) for folder in search.split(os.pathsep) if folder]
