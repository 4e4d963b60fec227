"""Settings: the models, reading corral.toml, and merging it with flags and `CORRAL_*` variables.

Imports nothing of corral's runtime: the manager and the children import it,
never the other way round.

- `base`: the machinery (flags, variables, messages that name the setting);
- `web`: `WebConfig` (`corral run` and `[web]`) and `ManagerConfig` (`[corral]`);
- `declared`: `[processes.NAME]`, `[jobs.NAME]`, `[prestart]`, `[env]`;
- `resolve`: finding the file and merging everything into one `System`;
- `only`: the part of a `System` that `--only` names.
"""

from corral.settings.base import ConfigError, env_name, flagged_settings
from corral.settings.declared import (
    JobConfig,
    PrestartCall,
    PrestartConfig,
    ProcessConfig,
    Runnable,
)
from corral.settings.resolve import System, resolve
from corral.settings.web import ManagerConfig, WebConfig

__all__ = [
    "ConfigError",
    "JobConfig",
    "ManagerConfig",
    "PrestartCall",
    "PrestartConfig",
    "ProcessConfig",
    "Runnable",
    "System",
    "WebConfig",
    "env_name",
    "flagged_settings",
    "resolve",
]
