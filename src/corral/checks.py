"""`corral check`: import every target a configuration names, without running anything."""

from __future__ import annotations

import os
import sys

from corral.child.app_loader import AppLoadError, load_app
from corral.child.web_app import load_web_app
from corral.settings import PrestartCall, System

WEB_APP = "[web] app"


def targets(system: System) -> list[tuple[str, str, bool]]:
    """(where it is declared, MODULE:ATTRIBUTE, is it a factory) for every Python target."""
    found = []
    if system.web is not None:
        found.append((WEB_APP, system.web.app, system.web.factory))
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


def problems_with(system: System) -> list[str]:
    """One message per target that does not import (or whose factory fails)."""
    sys.path.insert(0, os.getcwd())
    os.environ.update(system.env)
    if system.web is not None and system.web.env_file is not None:
        from dotenv import load_dotenv

        load_dotenv(system.web.env_file, override=False)
    problems = []
    for where, target, factory in targets(system):
        try:
            if where == WEB_APP and system.web is not None:
                load_web_app(system.web)  # found, and told ASGI or WSGI, as the workers will
            else:
                load_app(target, factory)
        except AppLoadError as error:
            problems.append(f"{where} {target!r}: {error}")
    return problems
