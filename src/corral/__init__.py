"""corral: one process manager for a Python web application."""

from __future__ import annotations

from typing import Any

from corral.version import __version__

__all__ = ["__version__", "run"]


def run(app: str, **settings: Any) -> int:
    """Serve `app` ("module:attribute") as `corral run` would; return the exit code.

    Keyword arguments are the settings of `corral run --help`, by their Python
    names (`workers=4`, `bind=["127.0.0.1:8000"]`, `graceful_timeout=10`).
    Raises `corral.settings.ConfigError` for settings that do not validate.
    """
    from corral.manager.supervisor import Manager
    from corral.settings import PrestartConfig, System, WebConfig

    config = WebConfig.from_sources({"app": app, **settings}, source="corral.run()")
    return Manager(System(config, {}, {}, PrestartConfig(), {})).run()
