"""The web app `corral run APP` serves: found, imported, and told ASGI or WSGI.

APP names a module or a file (`corral.settings.app_ref`). Without an
attribute, the app is the module's `app`, `api` or `application` (the first
of these names that holds a callable), else the one ASGI or WSGI app among
the module's names; none, or several, is an error that names what was
looked for. `application` is the name Django's and mod_wsgi's `wsgi.py` use.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.child.app_loader import AppLoadError, attribute_of, call_factory, import_module
from corral.child.interface import Interface, LooksLikeAFactory, Undecided, app_like, detect
from corral.settings import WebConfig, app_ref
from corral.words import counted, with_article

NAMES = ("app", "api", "application")


@dataclass(frozen=True)
class WebApp:
    """A loaded app: the callable, its interface, and how it was found (for the one line)."""

    app: Any
    interface: Interface
    target: str  # MODULE:ATTRIBUTE, as found
    found: str  # how: "as given", "named app in main.py", "the only WSGI app in main.py"

    def describe(self, threads: int) -> str:
        """One line for the log: which app, which interface, found how."""
        kind = type(self.app)
        what = f"{kind.__module__}.{kind.__qualname__}"
        if self.interface == "wsgi":
            served = f"WSGI, {counted(threads, 'thread')} per worker"
        elif threads > 1:
            served = f"ASGI (--threads {threads} applies to WSGI apps only)"
        else:
            served = "ASGI"
        return f"app {self.target} ({what}), {served}; {self.found}"


def load_web_app(config: WebConfig) -> WebApp:
    """Import and find the app that `config.app` names; AppLoadError, for the user, if not.

    A file's import root goes first on `sys.path` (the current directory is
    already there, from the launcher).
    """
    try:
        ref = app_ref.read(config.app, Path.cwd())
    except ValueError as error:
        raise AppLoadError(f"APP {config.app!r}: {error}") from None
    if ref.import_root is not None and str(ref.import_root) not in sys.path:
        sys.path.insert(0, str(ref.import_root))
    module = import_module(ref.module, config.app)
    where = str(ref.file) if ref.file is not None else ref.module
    if ref.attribute is not None:
        target = attribute_of(module, ref.module, ref.attribute)
        name, found = ref.attribute, "as given"
    else:  # a factory always has its name: corral.settings.resolve refuses one without
        name, found = _find_app(module, where)
        target = getattr(module, name)
    if config.factory:
        target = call_factory(target)
    shown = f"{ref.module}:{name}"
    interface = _interface(target, shown, config)
    if config.interface != "auto" and (guessed := _guess(target)) not in (None, interface):
        found += f"; --interface {interface}, though its signature is {guessed.upper()}'s"
    return WebApp(target, interface, shown, found)


def _find_app(module: Any, where: str) -> tuple[str, str]:
    """The name of the app in `module`, and how it was chosen; AppLoadError if none or several."""
    for name in NAMES:
        if callable(getattr(module, name, None)):
            return name, f"found by its name in {where}"
    apps = {}
    for name in dir(module):
        if not name.startswith("_"):
            interface = app_like(getattr(module, name))
            if interface is not None:
                apps[name] = interface
    looked_for = f"looked for {', '.join(NAMES)}, then any ASGI or WSGI app"
    if not apps:
        raise AppLoadError(f"no app in {where}: {looked_for}; name it: {where}:NAME")
    if len(apps) > 1:
        listed = ", ".join(f"{name} ({interface.upper()})" for name, interface in apps.items())
        raise AppLoadError(f"several apps in {where}: {listed}; name one: {where}:NAME")
    ((name, interface),) = apps.items()
    return name, f"the only {interface.upper()} app in {where}"


def _guess(app: Any) -> Interface | None:
    try:
        return detect(app)
    except Undecided:
        return None


def _interface(app: Any, shown: str, config: WebConfig) -> Interface:
    if not callable(app):
        kind = with_article(type(app).__name__)
        raise AppLoadError(f"{shown} is {kind}, not an ASGI or WSGI app")
    if config.interface != "auto":
        return config.interface
    try:
        return detect(app)
    except LooksLikeAFactory as error:
        raise AppLoadError(
            f"{shown} is not an app: {error}; if it returns the app, give --factory"
        ) from None
    except Undecided as error:
        raise AppLoadError(
            f"cannot tell whether {shown} is an ASGI or a WSGI app: {error}; "
            "give --interface asgi or --interface wsgi"
        ) from None
