"""corral: one process manager for a Python web application."""

from __future__ import annotations

from typing import Any

from corral.version import __version__

__all__ = ["__version__", "run"]


def run(app: str, **settings: Any) -> int:
    """Serve `app` ("module:attribute") as `corral run` would; return the exit code.

    Keyword arguments are the settings of `corral run --help`, by their Python
    names (`workers=4`, `bind=["127.0.0.1:8000"]`, `graceful_timeout=10`,
    `user="app"`). Raises `corral.settings.ConfigError` for settings that do
    not validate.
    """
    from corral.manager.supervisor import Manager
    from corral.settings import ManagerConfig, PrestartConfig, System, WebConfig

    own = {k: v for k, v in settings.items() if k in ManagerConfig.model_fields}
    web = {k: v for k, v in settings.items() if k not in own}
    config = WebConfig.from_sources({"app": app, **web}, source="corral.run()")
    manager = ManagerConfig.from_sources(own, source="corral.run()")
    return Manager(System(config, {}, {}, PrestartConfig(), {}, manager)).run()
