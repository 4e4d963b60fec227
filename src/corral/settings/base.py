"""The machinery behind every settings model: flags, `CORRAL_*` variables, messages.

A setting is declared once, as a typed field of a model (`corral.settings.web`).
Its `Flag` metadata gives its command-line spelling and its `--help` group;
its name gives its `CORRAL_<NAME>` environment variable and its corral.toml
key. The CLI is derived from the models (see `corral.cli`), so a setting is
never written twice.

Precedence, lowest first: model defaults, the file, flags (or `corral.run()`
arguments), `CORRAL_*` environment variables.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    ValidationError,
)
from pydantic.fields import FieldInfo

from corral.errors import UsageError

ENV_PREFIX = "CORRAL_"
MAX_MEMBERS = 1024
"""The most web workers, or replicas of a process group, one corral runs: more is a typo."""


@dataclass(frozen=True)
class Flag:
    """How a setting is spelled on the command line and where `--help` lists it."""

    decls: tuple[str, ...]
    group: str
    metavar: str | None = None


def flag(*decls: str, group: str, metavar: str | None = None) -> Flag:
    return Flag(decls, group, metavar)


class ConfigError(UsageError):
    """Settings that do not validate; each message names the setting and what was expected."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__(*messages)


def _one_or_more(value: Any) -> Any:
    """A list setting given one value, as a string: a list of it (gunicorn's `bind` takes
    "127.0.0.1:8000" as well as a list of them)."""
    return [value] if isinstance(value, str) else value


OneOrMore = BeforeValidator(_one_or_more)
"""The metadata of a list setting that takes one value as a string too."""


def _id_as_text(value: Any) -> Any:
    """A user or group given by its number (`user = 1000`, as gunicorn takes it): its text."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


IdAsText = BeforeValidator(_id_as_text)
"""The metadata of a user or group setting: a name, or an id as text or a number."""


def _comma_joined(value: Any) -> Any:
    """A comma-separated setting given as a list (uvicorn's `forwarded_allow_ips` takes both)."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    return value


CommaJoined = BeforeValidator(_comma_joined)
"""The metadata of a comma-separated setting that takes a list of its items too."""


def _environment_table(table: Any) -> Any:
    """An environment table with its numbers as their decimal text (`PORT = 5` is "5"), as a
    TOML user writes them; ValueError naming each key whose value is not text or a number.

    A boolean is refused too: "true", "True" and "1" are all said for it.
    """
    if not isinstance(table, dict):
        return table
    problems = []
    text = {}
    for key, value in table.items():
        if isinstance(value, str):
            text[key] = value
        elif isinstance(value, int) and not isinstance(value, bool):
            text[key] = str(value)
        elif isinstance(value, float):
            text[key] = format(Decimal(repr(value)), "f")
        else:
            problems.append(f"{key!r}: expected a string or a number, got {_kind(value)}")
    if problems:
        raise ValueError("; ".join(problems))
    return text


def _kind(value: Any) -> str:
    """What a TOML value is, in the file's words: a table, an array, a boolean..."""
    kinds = {dict: "a table", list: "an array", bool: "a boolean"}
    return kinds.get(type(value), f"{type(value).__name__} {value!r}")


Environment = Annotated[dict[str, str], BeforeValidator(_environment_table)]
"""Environment variables by name, as [env] and every `env` table declare them."""


BINDING = "Binding"
WORKERS = "Workers"
HTTP = "HTTP"
LIMITS = "Limits"
TLS = "HTTPS"
LOGGING = "Logging"
PROCESS = "Process"
CONTROL = "Control"
SELECTION = "Selection"
DEVELOPMENT = "Development"


class Settings(BaseModel):
    """Settings with flags and CORRAL_* variables, validated with messages that name them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def from_sources(
        cls: type[_S],
        values: Mapping[str, Any],
        *,
        source: str,
        describe: Callable[[str], str] | None = None,
        environ: Mapping[str, str] | None = None,
        context: dict[str, Any] | None = None,
    ) -> _S:
        """Validate `values`, overridden by `CORRAL_*` variables, or raise ConfigError.

        `describe(name)` says how the user spelled a setting (its flag, say),
        so that a message points at what the user typed. `context` is the
        validation's (`corral.settings.here`: where the files must be).
        """
        environ = os.environ if environ is None else environ
        from_env = env_values(cls, environ)
        merged = {**values, **from_env}
        try:
            return cls.model_validate(merged, context=context)
        except ValidationError as error:
            messages = []
            for problem in error.errors():
                name = str(problem["loc"][0]) if problem["loc"] else ""
                if name in from_env:
                    where = env_name(name)
                elif describe is not None and name:
                    where = describe(name)
                else:
                    where = f"{source}: {name}" if name else source
                messages.append(explain(cls, where, name, problem))
            raise ConfigError(messages) from None


_S = TypeVar("_S", bound=Settings)


def flagged_settings(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo, Flag]]:
    """The settings of `model` that have a command-line flag, in declaration order."""
    for name, info in model.model_fields.items():
        for marker in info.metadata:
            if isinstance(marker, Flag):
                yield name, info, marker


def setting_flag(model: type[BaseModel], name: str) -> Flag:
    """The command-line spelling of setting `name` of `model` (KeyError if it has none)."""
    for setting, _, spelling in flagged_settings(model):
        if setting == name:
            return spelling
    raise KeyError(f"{model.__name__}.{name} has no flag")


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def env_values(model: type[BaseModel], environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings given as `CORRAL_<NAME>`; a list takes comma- or space-separated items."""
    values: dict[str, Any] = {}
    for name, info, _ in flagged_settings(model):
        raw = environ.get(env_name(name))
        if raw is None:
            continue
        if _is_list(info):
            values[name] = raw.replace(",", " ").split()
        else:
            values[name] = raw
    return values


def _is_list(info: FieldInfo) -> bool:
    return getattr(info.annotation, "__origin__", None) is list


# pydantic's bounds, in corral's words: (the bound's key, the phrase after the noun).
_BOUNDS = {
    "greater_than": ("gt", "greater than {}"),
    "greater_than_equal": ("ge", "of {} or more"),
    "less_than": ("lt", "less than {}"),
    "less_than_equal": ("le", "of {} or less"),
}


def explain(model: type[BaseModel], where: str, name: str, problem: Mapping[str, Any]) -> str:
    """One line for one of pydantic's problems with setting `name` of `model`, after `where`."""
    if problem["type"] == "extra_forbidden":
        close = difflib.get_close_matches(name, list(model.model_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: unknown setting{hint}"
    if problem["type"] in _BOUNDS:
        key, phrase = _BOUNDS[problem["type"]]
        bound = phrase.format(problem["ctx"][key])
        return f"{where}: expected {_noun(model, name)} {bound}, got {problem['input']!r}"
    message = str(problem["msg"]).removeprefix("Value error, ")
    if problem["type"] in ("value_error", "assertion_error") or "input" not in problem:
        return f"{where}: {message}"
    return f"{where}: {message}, got {problem['input']!r}"


def _noun(model: type[BaseModel], name: str) -> str:
    """What setting `name` of `model` holds, as a message names it: a size, or a number."""
    info = model.model_fields.get(name)
    sizes = (ByteSize, ByteSize | None)
    return "a size" if info is not None and info.annotation in sizes else "a number"
