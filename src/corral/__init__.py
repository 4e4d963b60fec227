"""corral: one process manager for a Python web application."""

from __future__ import annotations

import os
from typing import Any

from corral.version import __version__

__all__ = ["__version__", "run"]


def run(
    app: str | None = None, *, config: str | os.PathLike[str] | None = None, **settings: Any
) -> int:
    """Run as `corral run` would, until it stops; return its exit code (see the README).

    0 after a stop, 3 when the app cannot start, 4 when a prestart step
    failed, 2 for what only starting finds (an address in use), 1 for a bug.

    `app` is "module:attribute" or a file, as `corral run APP` takes it (or
    None: corral.toml's `[web] app`, if any, else main.py or app.py here).
    Keyword arguments are the settings of `corral run --help` by their
    Python names (`workers=4`, `bind=["127.0.0.1:8000"]`, `control="..."`),
    and override corral.toml (or `config`, a path, as `-c` gives); `CORRAL_*`
    variables override both. SIGHUP re-reads them all, as for `corral run`.

    Raises `corral.settings.ConfigError` (its `messages`, one per problem,
    name each setting) when the settings are refused before anything starts:
    a value that does not validate, a file that is not there, a user that
    cannot be taken on. As `uvicorn.run()` raises for a bad configuration: a
    mistake in the calling code is an exception, not an exit code.
    """
    from pathlib import Path

    from corral.manager.supervisor import Manager
    from corral.settings import System, resolve

    directory = Path.cwd()
    path = Path(config) if config is not None else None

    def load() -> System:
        return resolve(app, settings, path, directory, lambda name: f"corral.run({name}=...)")

    return Manager(load(), load).run()
