"""The whole system, resolved: corral.toml (or [tool.corral] in pyproject.toml), flags, env.

    [corral]           the manager's own settings (control, log_format, user, group, pidfile)
    [web]              everything `corral run APP` takes (flags override it)
    [processes.NAME], [jobs.NAME], [prestart], [env], env_file: see `declared`

A bad file gets one message per problem, naming the file, the section, the
key and what was expected; nothing starts.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from corral.settings import app_ref, identities, tls
from corral.settings import here as here_checks
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
        if not explicit.exists():
            raise ConfigError([f"-c {explicit}: no such file"])
        if explicit.is_dir():
            raise ConfigError([f"-c {explicit}: a folder; expected a file, such as corral.toml"])
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
    except UnicodeDecodeError as error:
        raise ConfigError(
            [f"{path.name}: not valid TOML: expected UTF-8 text, byte {error.start} is not"]
        ) from None
    except OSError as error:
        raise ConfigError([f"{path}: cannot read it: {error.strerror or error}"]) from None


_MODELS: dict[str, type[BaseModel]] = {"processes": ProcessConfig, "jobs": JobConfig}


def validate(file: ConfigFile, context: dict[str, Any] | None = None) -> FileConfig:
    """The file's content as models, or ConfigError with one message per problem.

    `context` is the validation's (`corral.settings.here`: where files must be).
    """
    messages = _name_problems(file)
    try:
        declared = FileConfig.model_validate(file.table, context=context)
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
            elif len(keys) == 1 and problem["type"] == "extra_forbidden":
                messages.append(_unknown_top_level(file, section, problem["input"]))
                continue
            elif len(keys) == 1 and isinstance(file.table.get(section), dict):  # [env] whole
                where = file.where(keys, None)
            else:
                where = file.where(keys[:-1], keys[-1] if keys else None)
            messages.append(explain(model, where, keys[-1] if keys else "", problem))
    if messages:
        raise ConfigError(sorted(set(messages)))
    return declared


def _unknown_top_level(file: ConfigFile, key: str, value: Any) -> str:
    """A key corral.toml has no use for: a table ([mystery]) or a setting, with a did-you-mean."""
    tables = [name for name in FileConfig.model_fields if name != "env_file"]
    if isinstance(value, dict):
        close = difflib.get_close_matches(key, tables, n=1)
        hint = f" (did you mean [{file.section_prefix}{close[0]}]?)" if close else ""
        return f"{file.where([key], None)}: unknown table{hint}"
    return explain(FileConfig, file.where([], key), key, {"type": "extra_forbidden"})


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
    here: bool = True,
    serves: bool = True,
) -> System:
    """Merge the file (if any), the flags and the CORRAL_* variables; ConfigError if unsound.

    `directory` is where corral runs: relative paths are read from there.
    `environ` holds the CORRAL_* variables (default: this process's environment).
    Keeps only the part that `--only` names (`corral.settings.only`). With
    `here` (the default: `run`, `check`, a reload, `prestart`, `job`), also
    refuses what cannot work on this machine (`corral.settings.here`: files
    that are not there; identities that do not exist or cannot be taken
    on); `corral export`, which writes for other machines, does not ask.
    `serves`: the caller may run the web app (`corral prestart` and `corral
    job` do not, so web's identity is not theirs to take on). Every
    problem is one message naming where its setting came from.
    """
    environ = os.environ if environ is None else environ
    context = here_checks.context(directory) if here else None
    file = find(explicit, directory)
    problems: list[str] = []
    declared = FileConfig()
    if file is not None:
        try:
            declared = validate(file, context)
        except ConfigError as error:
            problems += error.messages
    manager_flags = {k: v for k, v in flags.items() if k in ManagerConfig.model_fields}
    flags = {k: v for k, v in flags.items() if k not in manager_flags}

    def manager_where(name: str) -> str:
        if env_name(name) in environ:
            return env_name(name)
        if name in manager_flags or file is None:
            return describe_flag(name)
        return file.where(["corral"], name)

    raw_manager = file.table.get("corral") if file is not None else None
    manager_values = {**(raw_manager if isinstance(raw_manager, dict) else {}), **manager_flags}
    manager_valid = True
    try:
        manager = ManagerConfig.from_sources(
            manager_values,
            source="corral run",
            environ=environ,
            describe=manager_where,
            context=context,
        )
    except ConfigError as error:
        problems += error.messages
        # Its identity may still be checked, with the rest of the problems, if it is sound.
        manager_valid, manager = _identity_only(manager_values, environ, manager_where)
    raw_web = file.table.get("web") if file is not None else None
    web_values = {**(raw_web if isinstance(raw_web, dict) else {}), **flags}
    if file is not None and web_values.pop("pidfile", None) is not None:  # [web] had it once
        where = file.where(["web"], "pidfile")
        problems.append(f"{where}: the pid file is the manager's: set pidfile under [corral]")
    if app is not None:
        web_values["app"] = app
    elif file is None and (found := app_ref.default(directory)) is not None:
        web_values["app"] = found  # `corral run` alone, as `fastapi run` alone

    def web_where(name: str) -> str:
        if name in flags or file is None or (name == "app" and app is not None):
            return describe_flag(name)
        return file.where(["web"], name)

    web = None
    if "app" in web_values:
        try:
            web = WebConfig.from_sources(
                web_values,
                source="corral run",
                describe=web_where,
                environ=environ,
                context=context,
            )
            ref = app_ref.read(web.app, directory)
            if web.factory and ref.attribute is None:
                named = ref.file if ref.file is not None else ref.module
                problems.append(
                    f"{web_where('factory')}: a factory is called by its name: "
                    f"give it in the app, as {named}:NAME"
                )
            if here:
                problems += tls.problems(web, directory, web_where)
        except ConfigError as error:
            problems += error.messages
        except ValueError as error:
            problems.append(f"{web_where('app')}: {error}")
    elif raw_web is not None and file is not None:
        problems.append(f"{file.where(['web'], 'app')}: missing (expected {app_ref.EXPECTED})")
    elif flags:
        missing = f"no app given: expected {app_ref.EXPECTED}"
        problems.append(missing + (f"; {_no_default()}" if file is None else ""))
    env: dict[str, str] = {}
    try:
        env = _environment(declared, file, directory)
    except ConfigError as error:
        problems += error.messages
    others = identities.runs_others(file.table if file is not None else {}, manager.only)
    if here and manager_valid:
        selected = web if serves and identities.runs_web(manager.only) else None
        in_web = raw_web if isinstance(raw_web, dict) else {}

        def web_id_where(name: str) -> str:  # [web]'s, else the [corral] one it falls back on
            return web_where(name) if name in in_web else manager_where(name)

        problems += identities.problems(manager, selected, others, manager_where, web_id_where)
    if problems:
        raise ConfigError(problems)
    if web is None and not declared.processes and not declared.jobs:
        where = f"{file.path} declares none" if file is not None else f"no {CONFIG_FILE} here"
        raise ConfigError(
            [
                f"no app given and nothing declared ({where}): expected "
                f"`corral run APP`, APP being {app_ref.EXPECTED}, "
                "or [web], [processes] or [jobs] in corral.toml"
                + (f"; {_no_default()}" if file is None else "")
            ]
        )
    config = file.path if file is not None else None
    system = System(web, declared.processes, declared.jobs, declared.prestart, env, manager, config)
    return identities.assign(select(system, manager.only, manager_where("only")), others)


IDENTITY_SETTINGS = ("user", "group", "only")  # what tells who each child runs as


def _identity_only(
    values: dict[str, Any], environ: Mapping[str, str], where: Callable[[str], str]
) -> tuple[bool, ManagerConfig]:
    """[corral]'s identity settings alone, validated: (whether they are sound, them)."""
    try:
        return True, ManagerConfig.from_sources(
            {name: values[name] for name in IDENTITY_SETTINGS if name in values},
            source="corral run",
            environ={
                env_name(name): environ[env_name(name)]
                for name in IDENTITY_SETTINGS
                if env_name(name) in environ
            },
            describe=where,
        )
    except ConfigError:
        return False, ManagerConfig()


def _no_default() -> str:
    return f"none of {', '.join(app_ref.DEFAULT_FILES)} here either"


def _environment(declared: FileConfig, file: ConfigFile | None, directory: Path) -> dict[str, str]:
    """env_file's variables (read from `directory`, where corral runs), then [env]'s."""
    env: dict[str, str] = {}
    if declared.env_file is not None:
        from dotenv import dotenv_values

        path = directory / declared.env_file
        if not path.is_file():
            where = file.where([], "env_file") if file is not None else "env_file"
            raise ConfigError([f"{where}: no such file {str(declared.env_file)!r}"])
        env.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    env.update(declared.env)
    return env
