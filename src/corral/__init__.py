"""corral: one process manager for a Python web application."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "run"]


def run(app: str, **settings: Any) -> int:
    """Serve `app` ("module:attribute") as `corral run` would; return the exit code.

    Keyword arguments are the settings of `corral run --help`, by their Python
    names (`workers=4`, `bind=["127.0.0.1:8000"]`, `graceful_timeout=10`).
    Raises `corral.config.ConfigError` for settings that do not validate.
    """
    from corral.config import WebConfig
    from corral.manager.supervisor import Manager
    from corral.system_config import PrestartConfig, System

    config = WebConfig.from_sources({"app": app, **settings}, source="corral.run()")
    return Manager(System(config, {}, {}, PrestartConfig(), {})).run()
