"""corral.toml files, flags and CORRAL_* variables made by hypothesis: a bad one is refused with
messages that name where (the file, its table and key; the flag; the variable) and what was
expected, never with a traceback; a good one resolves into settings corral can start with.

The configuration is resolved as `corral run` and `corral check` resolve it (`resolve`, in
this process: an example costs no interpreter start), then read the way the manager reads it
before it starts anything: the identity its children take, the control addresses. Anything
raised there but a UsageError would reach the user as a traceback.

In CI the examples are a fixed sequence (the "ci" profile of conftest.py); the long form
draws new ones: `pytest tests/test_fuzz_config.py --hypothesis-profile long`.
"""

from __future__ import annotations

import math
import os
import string
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from conftest import fuzz_timeout
from corral.cli import spelling_of_settings
from corral.errors import UsageError
from corral.manager.control import ControlPlan
from corral.manager.supervisor import identities
from corral.settings import (
    JobConfig,
    ManagerConfig,
    ProcessConfig,
    System,
    WebConfig,
    env_name,
    flagged_settings,
    resolve,
)
from corral.settings.declared import FileConfig

# -- values: what a user might type, right or wrong ----------------------------------------

WORDS = st.text(string.ascii_letters + string.digits + "_-.:/ ", max_size=20)
DURATIONS = st.sampled_from(
    ["30", "30s", "1m30s", "500ms", "2h", "1d", "0", "-1s", "5x", "s", "nan", "inf", "1e400"]
)
SIZES = st.sampled_from(["512MiB", "1G", "100", "0", "-1", "1e3GiB", "12 parsecs", "inf"])
ADDRESSES = st.sampled_from(
    [
        *("127.0.0.1:0", "[::1]:0", "unix:app.sock", "fd://3", "fd://x", "127.0.0.1:99999"),
        *(":80", "localhost", "[::1", "127.0.0.1:", "unix:", "/tmp/control.sock", "a:b:c"),
    ]
)
TARGETS = st.sampled_from(["plain:app", "plain", ":app", "plain:", "a.b:c.d", "pläin:app"])
SPECIAL = st.sampled_from(
    [
        *("*/5 * * * *", "0 0 30 2 *", "* * *", "@hourly", "Europe/Paris", "Mars/Olympus"),
        *("../x", "SIGTERM", "INT", "SIGNOPE", "always", "never", "skip", "allow", "json"),
        *("root", "nobody", "0", "4294967296", "a\x00b", "", " ", "\n"),
    ]
)
SCALARS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    WORDS,
    st.text(max_size=12),
    DURATIONS,
    SIZES,
    ADDRESSES,
    TARGETS,
    SPECIAL,
    st.datetimes(timezones=st.none() | st.just(timezone.utc)),
    st.dates(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(WORDS, inner, max_size=3),
    max_leaves=6,
)


def _keys(model: type) -> list[str]:
    return list(model.model_fields)


TABLE_KEYS = {
    "web": _keys(WebConfig),
    "corral": _keys(ManagerConfig),
    "process": _keys(ProcessConfig),
    "job": _keys(JobConfig),
}
FLAGGED = [
    (name, model) for model in (WebConfig, ManagerConfig) for name, _, _ in flagged_settings(model)
]


# -- files: a sound base, and one change to it ---------------------------------------------

BASE: dict[str, Any] = {
    "env": {"GREETING": "hello"},
    "web": {"app": "plain:app", "port": 0, "workers": 2, "timeout": "30s"},
    "corral": {"log_format": "text"},
    "processes": {"worker": {"command": "sleep 60", "replicas": 1}},
    "jobs": {"beat": {"command": "true", "every": "1s"}},
    "prestart": {"steps": ["true"]},
}


@st.composite
def changed_files(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The base file with one value set, replaced or added; and where: (table..., key)."""
    table = draw(st.sampled_from(["web", "corral", "process", "job", "prestart", "env", "top"]))
    known = TABLE_KEYS.get(table, ["steps"] if table == "prestart" else ["env_file", "env"])
    key = draw(st.sampled_from(known) | WORDS.filter(bool))
    value = draw(VALUES)
    file = {name: dict(section) for name, section in BASE.items()}
    file["processes"] = {"worker": dict(BASE["processes"]["worker"])}
    file["jobs"] = {"beat": dict(BASE["jobs"]["beat"])}
    path: tuple[str, ...]
    if table == "process":
        file["processes"]["worker"][key] = value
        path = ("processes", "worker", key)
    elif table == "job":
        file["jobs"]["beat"][key] = value
        path = ("jobs", "beat", key)
    elif table == "top":
        file[key] = value
        path = (key,)
    elif table == "prestart":
        file["prestart"] = {key: value}
        path = ("prestart", key)
    else:
        file[table][key] = value
        path = (table, key)
    return file, path


def write(directory: Path, file: dict[str, Any]) -> Path:
    path = directory / "corral.toml"
    path.write_bytes(tomli_w.dumps(file).encode())
    return path


# -- what resolving must give --------------------------------------------------------------


def resolved_or_refused(
    directory: Path,
    flags: dict[str, Any],
    environ: dict[str, str],
) -> System | list[str]:
    """The system (read as the manager reads it before starting), or the refusal's messages.

    Any exception but a UsageError fails the test: the user would see its traceback.
    """
    cwd = os.getcwd()
    os.chdir(directory)  # the control socket's folder is named after the current directory
    try:
        system = resolve(None, flags, None, directory, spelling_of_settings(), environ)
        identities(system)
        ControlPlan(system.manager.control, system.manager.probes)
    except UsageError as error:
        return list(error.messages)
    finally:
        os.chdir(cwd)
    return system


def assert_sound(system: System) -> None:
    """Settings corral can start with: every duration a finite number of seconds."""
    models: list[Any] = [*system.processes.values(), *system.jobs.values()]
    if system.web is not None:
        models.append(system.web)
    for model in models:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, float):
                assert math.isfinite(value), f"{type(model).__name__}.{name} = {value!r}"


def assert_explained(messages: list[str], names: list[str]) -> None:
    """Each message one line saying what was expected; one of them names one of `names`."""
    assert messages
    for message in messages:
        assert "Traceback" not in message and "\n" not in message, message
    assert any(
        name in message and len(message.split(name, 1)[1].strip(" :'\"")) >= 8
        for message in messages
        for name in names
    ), (messages, names)


@fuzz_timeout(per_example=0.2)
@given(changed=changed_files())
def test_a_file_is_refused_naming_the_file_the_key_and_what_was_expected(changed, tmp_path):
    file, where = changed
    write(tmp_path, file)
    outcome = resolved_or_refused(tmp_path, {}, {})
    if isinstance(outcome, System):
        assert_sound(outcome)
        return
    table, *_, key = ("", *where)
    assert all(m.startswith("corral.toml: ") for m in outcome), outcome
    assert_explained(outcome, [key] if table != "prestart" else ["step", key])


@fuzz_timeout(per_example=0.2)
@given(text=st.binary(max_size=200), cut=st.integers(0, 400))
def test_a_file_that_is_not_toml_is_refused_naming_the_file(text, cut, tmp_path):
    sound = tomli_w.dumps(BASE).encode()
    (tmp_path / "corral.toml").write_bytes(sound[:cut] + text + sound[cut:])
    outcome = resolved_or_refused(tmp_path, {}, {})
    if isinstance(outcome, System):
        assert_sound(outcome)
        return
    assert all(m.startswith("corral.toml") for m in outcome), outcome
    assert all("Traceback" not in m for m in outcome), outcome


FLAG_VALUES = st.one_of(
    WORDS, st.text(max_size=12), DURATIONS, SIZES, ADDRESSES, TARGETS, SPECIAL,
    st.integers(-(2**70), 2**70).map(str), st.floats().map(str),
)  # fmt: skip


@fuzz_timeout(per_example=0.2)
@given(
    flags=st.dictionaries(st.sampled_from(FLAGGED), FLAG_VALUES, min_size=1, max_size=3),
    in_environment=st.booleans(),
)
def test_a_flag_or_a_variable_is_refused_naming_it(flags, in_environment, tmp_path):
    """Flags come from the command line as strings (lists for the repeatable ones)."""
    write(tmp_path, {"web": {"app": "plain:app", "port": 0}})
    spelling = spelling_of_settings()
    values: dict[str, Any] = {}
    environ: dict[str, str] = {}
    names = []
    for (name, model), value in flags.items():
        repeatable = getattr(model.model_fields[name].annotation, "__origin__", None) is list
        if in_environment:
            environ[env_name(name)] = value
            names.append(env_name(name))
        else:
            values[name] = (value,) if repeatable else value
            names.append(spelling(name))
    outcome = resolved_or_refused(tmp_path, values, environ)
    if isinstance(outcome, System):
        assert_sound(outcome)
        return
    assert_explained(outcome, names)


def test_the_generated_base_file_is_sound(tmp_path):
    """The files above are this one, changed once: it must resolve as it is."""
    write(tmp_path, BASE)
    outcome = resolved_or_refused(tmp_path, {}, {})
    assert isinstance(outcome, System), outcome
    assert FileConfig.model_validate(BASE)


@pytest.mark.parametrize("value", [date(2026, 1, 1), time(12, 0), datetime(2026, 1, 1, 12)])
def test_a_toml_date_where_a_duration_goes_is_refused_naming_the_key(value, tmp_path):
    file = {"web": {"app": "plain:app", "graceful_timeout": value}}
    write(tmp_path, file)
    outcome = resolved_or_refused(tmp_path, {}, {})
    assert isinstance(outcome, list), outcome
    assert_explained(outcome, ["graceful_timeout"])


@pytest.mark.parametrize("value", [math.inf, math.nan, "inf", "NaN", "1e400", "-inf"])
@pytest.mark.parametrize(
    ("table", "key"),
    [("web", "graceful_timeout"), ("processes.worker", "stop_timeout"), ("jobs.beat", "jitter")],
)
def test_a_duration_that_is_no_number_of_seconds_is_refused_naming_the_key(
    value, table, key, tmp_path
):
    file = {name: dict(section) for name, section in BASE.items()}
    file["processes"] = {"worker": dict(BASE["processes"]["worker"])}
    file["jobs"] = {"beat": dict(BASE["jobs"]["beat"])}
    section = file
    for part in table.split("."):
        section = section[part]
    section[key] = value
    write(tmp_path, file)
    outcome = resolved_or_refused(tmp_path, {}, {})
    assert isinstance(outcome, list), outcome
    assert_explained(outcome, [key])
    assert any(f"[{table}] {key}" in message for message in outcome), outcome


def test_a_backlog_listen_cannot_take_is_refused_naming_it(tmp_path):
    """Found by running what the fuzzing resolved: listen() raised OverflowError (a traceback)."""
    write(tmp_path, {"web": {"app": "plain:app", "port": 0}})
    outcome = resolved_or_refused(tmp_path, {"backlog": "99999999999999"}, {})
    assert isinstance(outcome, list), outcome
    assert_explained(outcome, ["--backlog"])


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("corral", "control", ""),
        ("corral", "control", "127.0.0.1:70000"),
        ("corral", "probes", "/tmp/probes.sock"),
        ("corral", "user", ""),
        ("corral", "user", "a\x00b"),
        ("corral", "user", "\u00b2"),  # a digit to str.isdigit, not to int()
        ("corral", "group", "a\x00b"),
        ("corral", "group", "99999999999"),
        ("web", "bind", ["127.0.0.1:70000"]),
        ("web", "bind", ["fd://\u0663"]),
        ("web", "keyfile", "key.pem"),
    ],
)
def test_a_refusal_names_the_key_of_the_file_that_gave_the_value(table, key, value, tmp_path):
    """Found by the fuzzing above: these named a flag (--bind, --probes), no source at all
    (an empty control address, an unknown user), or escaped as a traceback (a NUL in a name,
    a digit int() does not read, a group id beyond what gid_t holds)."""
    file = {"web": {"app": "plain:app", "port": 0}, "corral": {}}
    file[table][key] = value
    write(tmp_path, file)
    outcome = resolved_or_refused(tmp_path, {}, {})
    assert isinstance(outcome, list), outcome
    assert any(m.startswith(f"corral.toml: [{table}] {key}") for m in outcome), outcome
    assert_explained(outcome, [key])


def test_a_file_that_is_not_utf8_is_refused_naming_it(tmp_path):
    """Found by the fuzzing above: tomllib's UnicodeDecodeError escaped as a traceback."""
    (tmp_path / "corral.toml").write_bytes('[web]\napp = "caf\u00e9:app"\n'.encode("latin-1"))
    outcome = resolved_or_refused(tmp_path, {}, {})
    assert outcome == ["corral.toml: not valid TOML: expected UTF-8 text, byte 16 is not"]
