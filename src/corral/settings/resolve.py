"""The whole system, resolved: corral.toml (or [tool.corral] in pyproject.toml), flags, env.

    [corral]           the manager's own settings (control, log_format, user, group, pidfile)
    [web]              everything `corral run APP` takes (flags override it)
    [processes.NAME], [jobs.NAME], [prestart], [env], env_file: see `declared`

A bad file gets one message per problem, naming the file, the section, the
key and what was expected; nothing starts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from corral.settings.base import ConfigError, env_name, explain
from corral.settings.declared import (
    CONFIG_FILE,
    NAME,
    RESERVED_NAMES,
    FileConfig,
    JobConfig,
    PrestartConfig,
    ProcessConfig,
)
from corral.settings.only import select
from corral.settings.web import ManagerConfig, WebConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class ConfigFile:
    """A configuration file found on disk, and where its table sits in it."""

    path: Path
    table: dict[str, Any]
    section_prefix: str  # "" for corral.toml, "tool.corral." in pyproject.toml

    def where(self, sections: list[str], key: str | None) -> str:
        """How a message names a place in the file: corral.toml: [processes.worker] replicas."""
        head = f"[{self.section_prefix}{'.'.join(sections)}]" if sections else ""
        return f"{self.path.name}: {' '.join(part for part in (head, key) if part)}"


def find(explicit: Path | None, directory: Path) -> ConfigFile | None:
    """`-c PATH`, else corral.toml here, else [tool.corral] in pyproject.toml here, else None."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError([f"-c {explicit}: no such file"])
        return _read(explicit)
    candidate = directory / CONFIG_FILE
    if candidate.is_file():
        return _read(candidate)
    pyproject = directory / "pyproject.toml"
    if pyproject.is_file():
        table = _parse(pyproject).get("tool", {}).get("corral")
        if table is not None:
            return ConfigFile(pyproject, table, "tool.corral.")
    return None


def _read(path: Path) -> ConfigFile:
    if path.name == "pyproject.toml":
        return ConfigFile(path, _parse(path).get("tool", {}).get("corral", {}), "tool.corral.")
    return ConfigFile(path, _parse(path), "")


def _parse(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path.name}: not valid TOML: {error}"]) from None


_MODELS: dict[str, type[BaseModel]] = {"processes": ProcessConfig, "jobs": JobConfig}


def validate(file: ConfigFile) -> FileConfig:
    """The file's content as models, or ConfigError with one message per problem."""
    messages = _name_problems(file)
    try:
        declared = FileConfig.model_validate(file.table)
    except ValidationError as error:
        for problem in error.errors():
            keys = [str(k) for k in problem["loc"] if not isinstance(k, int)]
            keys = [k for k in keys if k not in ("str", "PrestartCall")]  # union branch names
            section = keys[0] if keys else ""
            model: type[BaseModel] = FileConfig
            if section in _MODELS and len(keys) >= 3:
                model = _MODELS[section]
            elif section == "prestart" and len(keys) >= 2:
                model = PrestartConfig
            if section in _MODELS and len(keys) == 2:  # about the entry as a whole
                where = file.where(keys, None)
            else:
                where = file.where(keys[:-1], keys[-1] if keys else None)
            messages.append(explain(model, where, keys[-1] if keys else "", problem))
    if messages:
        raise ConfigError(sorted(set(messages)))
    return declared


def _name_problems(file: ConfigFile) -> list[str]:
    """Process and job names become process names (worker.1): keep them plain."""
    problems = []
    for section in ("processes", "jobs"):
        entries = file.table.get(section)
        for name in entries if isinstance(entries, dict) else ():
            if not NAME.match(name) or name in RESERVED_NAMES:
                where = file.where([section, name], None)
                problems.append(
                    f"{where}: {name!r} cannot name a process or a job: "
                    "use lowercase letters, digits, '-' and '_', starting with a letter "
                    "(and not web, corral, jobs or prestart)"
                )
    return problems


@dataclass(frozen=True)
class System:
    """Everything one `corral run` supervises, resolved from the file, the flags and the env."""

    web: WebConfig | None
    processes: dict[str, ProcessConfig]
    jobs: dict[str, JobConfig]
    prestart: PrestartConfig
    env: dict[str, str]  # for every process: env_file's variables, then [env]
    manager: ManagerConfig = field(default_factory=ManagerConfig)  # [corral]: control, user...
    config: Path | None = None  # the file it came from, if any
    # `--only NAME.N`: the process groups of which this corral runs one replica, and its number.
    only_replica: dict[str, int] = field(default_factory=dict)


def resolve(
    app: str | None,
    flags: dict[str, Any],
    explicit: Path | None,
    directory: Path,
    describe_flag: Callable[[str], str],
    environ: Mapping[str, str] | None = None,
) -> System:
    """Merge the file (if any), the flags and the CORRAL_* variables; ConfigError if unsound.

    `environ` holds the CORRAL_* variables (default: this process's environment).
    Keeps only the part that `--only` names (`corral.settings.only`).
    """
    file = find(explicit, directory)
    problems: list[str] = []
    declared = FileConfig()
    if file is not None:
        try:
            declared = validate(file)
        except ConfigError as error:
            problems += error.messages
    manager_flags = {k: v for k, v in flags.items() if k in ManagerConfig.model_fields}
    flags = {k: v for k, v in flags.items() if k not in manager_flags}
    raw_manager = file.table.get("corral") if file is not None else None
    manager_values = {**(raw_manager if isinstance(raw_manager, dict) else {}), **manager_flags}
    manager = ManagerConfig()
    try:
        manager = ManagerConfig.from_sources(
            manager_values,
            source="corral run",
            environ=environ,
            describe=lambda name: (
                describe_flag(name)
                if name in manager_flags or file is None
                else file.where(["corral"], name)
            ),
        )
    except ConfigError as error:
        problems += error.messages
    raw_web = file.table.get("web") if file is not None else None
    web_values = {**(raw_web if isinstance(raw_web, dict) else {}), **flags}
    if file is not None and web_values.pop("pidfile", None) is not None:  # [web] had it once
        where = file.where(["web"], "pidfile")
        problems.append(f"{where}: the pid file is the manager's: set pidfile under [corral]")
    if app is not None:
        web_values["app"] = app
    web = None
    if "app" in web_values:

        def describe(name: str) -> str:
            if name in flags or file is None or (name == "app" and app is not None):
                return describe_flag(name)
            return file.where(["web"], name)

        try:
            web = WebConfig.from_sources(
                web_values, source="corral run", describe=describe, environ=environ
            )
        except ConfigError as error:
            problems += error.messages
    elif raw_web is not None and file is not None:
        problems.append(f"{file.where(['web'], 'app')}: missing (expected MODULE:ATTRIBUTE)")
    elif flags:
        problems.append("no app given: expected `corral run MODULE:ATTRIBUTE`, such as main:app")
    if problems:
        raise ConfigError(problems)
    if web is None and not declared.processes and not declared.jobs:
        where = file.path.name if file is not None else f"no {CONFIG_FILE} here"
        raise ConfigError(
            [
                f"no app given and nothing declared ({where}): expected "
                "`corral run MODULE:ATTRIBUTE` (such as main:app), "
                "or [web], [processes] or [jobs] in corral.toml"
            ]
        )
    env = _environment(declared, file)
    config = file.path if file is not None else None
    system = System(web, declared.processes, declared.jobs, declared.prestart, env, manager, config)
    if env_name("only") in (os.environ if environ is None else environ):
        where = env_name("only")
    elif "only" in manager_flags or file is None:
        where = describe_flag("only")
    else:
        where = file.where(["corral"], "only")
    return select(system, manager.only, where)


def _environment(declared: FileConfig, file: ConfigFile | None) -> dict[str, str]:
    env: dict[str, str] = {}
    if declared.env_file is not None:
        from dotenv import dotenv_values

        if not declared.env_file.is_file():
            where = file.where([], "env_file") if file is not None else "env_file"
            raise ConfigError([f"{where}: no such file {str(declared.env_file)!r}"])
        env.update({k: v for k, v in dotenv_values(declared.env_file).items() if v is not None})
    env.update(declared.env)
    return env
