"""The whole system in one file: where corral finds it, how it merges with flags and CORRAL_*
variables, what a bad file is told, and `corral check`.

Each test writes its corral.toml (and its Python modules) under tmp_path and runs corral there.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import httpx
import pytest

from conftest import APPS, Corral

# -- helpers -------------------------------------------------------------------------


def _write(directory: Path, files: dict[str, str]) -> None:
    """Write each file (its text dedented), creating folders as needed."""
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


def _says(source: str) -> str:
    """A module whose main() prints `declared in SOURCE` and then sleeps."""
    return textwrap.dedent(
        f"""
        import time

        def main():
            print("declared in {source}", flush=True)
            time.sleep(60)
        """
    )


def _with_plain_app(directory: Path) -> None:
    shutil.copy(APPS / "plain.py", directory / "plain.py")


def _errors(server: Corral) -> list[str]:
    return [line for line in server.lines if line.startswith("corral: error:")]


def _refused(server: Corral, code: int = 2) -> list[str]:
    """Wait for a corral that must refuse to start; check nothing started; its error lines."""
    assert server.wait(15) == code, server.output
    assert server.count(r"started") == 0, server.output
    assert server.count(r"listening on") == 0, server.output
    assert "Traceback" not in server.output, server.output
    assert not server.wait_until_gone(2), server.output
    return _errors(server)


def _worker_count(server: Corral) -> int:
    return int(server.wait_for(r"listening on \S+ \((\d+) workers\)", timeout=20).group(1))


# -- finding the file -------------------------------------------------------------------


def test_web_env_is_for_the_web_processes_and_overrides_the_files_env(corral, tmp_path):
    _with_plain_app(tmp_path)
    _write(
        tmp_path,
        {
            "corral.toml": """
                [env]
                FROM_ENV_FILE = "from-env-table"

                [web]
                app = "plain:app"
                port = 0
                env = { FROM_ENV_FILE = "from-web-env" }

                [processes.side]
                command = "sh -c 'echo side sees $FROM_ENV_FILE; exec sleep 60'"
            """,
        },
    )

    server = corral("run", cwd=tmp_path)

    url = server.url()
    server.wait_for(r"^side\.1\s+\| side sees from-env-table$")
    fields = httpx.get(url, timeout=10).text.split()
    assert fields[5] == "from-web-env", fields
    assert server.stop() == 0


def test_corral_toml_in_the_current_directory_is_run_without_an_app(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": """
                [processes.hello]
                call = "hello:main"
            """,
            "hello.py": _says("corral.toml"),
        },
    )

    server = corral("run", cwd=tmp_path)

    server.wait_for(r"^hello\.1\s+\| declared in corral\.toml$")
    assert server.stop() == 0


def test_tool_corral_table_in_pyproject_toml_is_used_when_there_is_no_corral_toml(corral, tmp_path):
    _write(
        tmp_path,
        {
            "pyproject.toml": """
                [project]
                name = "example"
                version = "0"

                [tool.corral.processes.hello]
                call = "hello:main"
            """,
            "hello.py": _says("pyproject.toml"),
        },
    )

    server = corral("run", cwd=tmp_path)

    server.wait_for(r"^hello\.1\s+\| declared in pyproject\.toml$")
    assert server.stop() == 0


def test_corral_toml_is_preferred_to_pyproject_toml(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": """
                [processes.from-corral-toml]
                call = "hello:main"
            """,
            "pyproject.toml": """
                [tool.corral.processes.from-pyproject]
                call = "hello:main"
            """,
            "hello.py": _says("a file"),
        },
    )

    server = corral("run", cwd=tmp_path)

    server.wait_for(r"^from-corral-toml\.1\s+\| declared in a file$")
    assert server.stop() == 0
    assert server.count(r"from-pyproject") == 0, server.output


def test_dash_c_runs_the_file_it_names_instead_of_the_one_in_the_current_directory(
    corral, tmp_path
):
    _write(
        tmp_path,
        {
            "corral.toml": """
                [processes.default]
                call = "hello:main"
            """,
            "deploy/system.toml": """
                [processes.explicit]
                call = "hello:main"
            """,
            "hello.py": _says("a file"),
        },
    )

    server = corral("run", "-c", "deploy/system.toml", cwd=tmp_path)

    server.wait_for(r"^explicit\.1\s+\| declared in a file$")
    assert server.stop() == 0
    assert server.count(r"default") == 0, server.output


def test_dash_c_reads_the_tool_corral_table_of_a_pyproject_toml(corral, tmp_path):
    _write(
        tmp_path,
        {
            "elsewhere/pyproject.toml": """
                [tool.corral.processes.hello]
                call = "hello:main"
            """,
            "hello.py": _says("elsewhere/pyproject.toml"),
        },
    )

    server = corral("run", "--config", "elsewhere/pyproject.toml", cwd=tmp_path)

    server.wait_for(r"^hello\.1\s+\| declared in elsewhere/pyproject\.toml$")
    assert server.stop() == 0


# -- precedence: the file, then flags, then CORRAL_* -------------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        pytest.param([], {}, 2, id="the_file_alone"),
        pytest.param(["--workers", "3"], {}, 3, id="a_flag_over_the_file"),
        pytest.param(
            ["--workers", "3"], {"CORRAL_WORKERS": "2"}, 2, id="the_variable_over_the_flag"
        ),
        pytest.param([], {"CORRAL_WORKERS": "3"}, 3, id="the_variable_over_the_file"),
    ],
)
def test_web_workers_come_from_the_file_then_the_flag_then_corral_workers(
    corral, tmp_path, flags, env, expected
):
    _with_plain_app(tmp_path)
    _write(
        tmp_path,
        {
            "corral.toml": """
                [web]
                app = "plain:app"
                port = 0
                workers = 2
            """
        },
    )

    server = corral("run", *flags, cwd=tmp_path, env=env)

    assert _worker_count(server) == expected, server.output
    assert len(server.wait_workers(expected)) == expected
    assert server.stop() == 0


def test_workers_flag_of_2_overrides_the_files_workers_of_1(corral, tmp_path):
    _with_plain_app(tmp_path)
    _write(
        tmp_path,
        {
            "corral.toml": """
                [web]
                app = "plain:app"
                port = 0
                workers = 1
            """
        },
    )

    server = corral("run", "--workers", "2", cwd=tmp_path)

    assert _worker_count(server) == 2, server.output
    assert set(server.wait_workers(2)) == {"web.1", "web.2"}
    assert server.stop() == 0


def test_an_app_argument_replaces_the_files_app_and_keeps_everything_else(corral, tmp_path):
    _with_plain_app(tmp_path)
    _write(
        tmp_path,
        {
            "corral.toml": """
                [env]
                FROM_ENV_FILE = "from-corral-toml"

                [web]
                app = "nosuchmodule:app"
                port = 0
                workers = 2

                [processes.side]
                call = "hello:main"
            """,
            "hello.py": _says("corral.toml"),
        },
    )

    server = corral("run", "plain:app", cwd=tmp_path)

    url = server.url()
    assert _worker_count(server) == 2, server.output  # the file's workers
    server.wait_for(r"^side\.1\s+\| declared in corral\.toml$")  # the file's processes
    response = httpx.get(url, headers={"connection": "close"}, timeout=10)
    assert response.status_code == 200
    worker, _, _, _, _, from_env, _ = response.text.split()
    assert worker.startswith("web.")
    assert from_env == "from-corral-toml"  # the file's [env]
    assert server.stop() == 0
    assert "nosuchmodule" not in server.output


# -- a bad file: one message per problem, naming the file, the section and the key -------

# A well-formed process beside the bad part: if anything started, it would say so.
BESIDE = """
[processes.bystander]
command = "echo BYSTANDER-RAN"
"""

BAD_FILES = {
    # case: (corral.toml, what the one message must contain)
    "unknown_key_with_a_suggestion": (
        """
        [processes.worker]
        call = "tasks:main"
        replica = 2
        """,
        ["corral.toml: [processes.worker] replica: unknown setting (did you mean 'replicas'?)"],
    ),
    "wrong_type": (
        """
        [processes.worker]
        call = "tasks:main"
        replicas = "two"
        """,
        ["corral.toml: [processes.worker] replicas:", "'two'"],
    ),
    "bad_cron_expression": (
        """
        [jobs.beat]
        call = "tasks:main"
        schedule = "61 * * * *"
        """,
        ["corral.toml: [jobs.beat] schedule:", "cron", "'61 * * * *'"],
    ),
    "bad_duration": (
        """
        [processes.worker]
        call = "tasks:main"
        stop_timeout = "forever"
        """,
        ["corral.toml: [processes.worker] stop_timeout:", "duration", "'forever'"],
    ),
    "bad_size": (
        """
        [web]
        app = "plain:app"
        port = 0
        max_memory = "lots"
        """,
        ["corral.toml: [web] max_memory:", "'lots'"],
    ),
    "call_without_a_colon": (
        """
        [processes.worker]
        call = "tasksmain"
        """,
        ["corral.toml: [processes.worker] call:", "MODULE:ATTRIBUTE", "'tasksmain'"],
    ),
    "both_call_and_command": (
        """
        [processes.worker]
        call = "tasks:main"
        command = "sleep 60"
        """,
        ["corral.toml: [processes.worker]", "exactly one of `call` or `command`"],
    ),
    "neither_call_nor_command": (
        """
        [processes.worker]
        replicas = 2
        """,
        ["corral.toml: [processes.worker]", "exactly one of `call` or `command`"],
    ),
    "bad_process_name": (
        """
        [processes.Bad_Name]
        call = "tasks:main"
        """,
        ["corral.toml: ", "processes", "'Bad_Name'", "cannot name a process"],
    ),
    "reserved_process_name": (
        """
        [processes.web]
        call = "tasks:main"
        """,
        ["corral.toml: ", "processes", "'web'", "cannot name a process"],
    ),
    "unknown_restart_policy": (
        """
        [processes.worker]
        call = "tasks:main"
        restart = "sometimes"
        """,
        ["corral.toml: [processes.worker] restart:", "'sometimes'"],
    ),
    "unknown_web_setting": (
        """
        [web]
        app = "plain:app"
        wokers = 2
        """,
        ["corral.toml: [web] wokers: unknown setting (did you mean 'workers'?)"],
    ),
    "prestart_call_without_a_colon": (
        """
        [prestart]
        steps = ["true", { call = "nocolon" }]
        """,
        ["corral.toml: [prestart] steps:", "step 2", "'nocolon'"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_exits_2_with_one_message_naming_the_file_section_and_key_and_starts_nothing(
    corral, tmp_path, case
):
    toml, expected = BAD_FILES[case]
    _write(tmp_path, {"corral.toml": textwrap.dedent(toml) + BESIDE})

    server = corral("run", cwd=tmp_path)

    errors = _refused(server)
    assert len(errors) == 1, server.output
    for part in expected:
        assert part in errors[0], server.output
    assert "BYSTANDER-RAN" not in server.output


def test_invalid_toml_exits_2_naming_the_file_and_the_line(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": """
                [processes.worker
                call = "tasks:main"
            """
        },
    )

    server = corral("run", cwd=tmp_path)

    errors = _refused(server)
    assert len(errors) == 1, server.output
    assert "corral.toml: not valid TOML" in errors[0]
    assert "line 1" in errors[0]


def test_bad_pyproject_table_is_named_as_tool_corral(corral, tmp_path):
    _write(
        tmp_path,
        {
            "pyproject.toml": """
                [tool.corral.processes.worker]
                call = "tasks:main"
                replica = 2
            """
        },
    )

    server = corral("run", cwd=tmp_path)

    errors = _refused(server)
    assert errors == [
        "corral: error: pyproject.toml: [tool.corral.processes.worker] replica: "
        "unknown setting (did you mean 'replicas'?)"
    ], server.output


def test_every_problem_of_a_bad_file_is_reported_at_once(corral, tmp_path):
    """Four independent problems in four sections: four messages, not the first few."""
    _write(
        tmp_path,
        {
            "corral.toml": """
                [web]
                app = "plain:app"
                max_memory = "lots"

                [processes.worker]
                call = "tasks:main"
                replica = 2

                [processes.Bad_Name]
                call = "tasks:main"

                [jobs.beat]
                call = "tasks:main"
                schedule = "61 * * * *"
            """
        },
    )

    server = corral("run", cwd=tmp_path)

    errors = _refused(server)
    assert any("[web] max_memory" in e for e in errors), server.output
    assert any("[processes.worker] replica" in e for e in errors), server.output
    assert any("'Bad_Name'" in e for e in errors), server.output
    assert any("[jobs.beat] schedule" in e for e in errors), server.output
    assert len(errors) == 4, server.output


def test_dash_c_to_a_missing_file_exits_2_naming_it(corral, tmp_path):
    _write(tmp_path, {"corral.toml": BESIDE})

    server = corral("run", "-c", "missing.toml", cwd=tmp_path)

    errors = _refused(server)
    assert len(errors) == 1, server.output
    assert "missing.toml" in errors[0]
    assert "no such file" in errors[0]
    assert "BYSTANDER-RAN" not in server.output


def test_bare_run_with_no_file_and_no_app_exits_2_saying_what_is_missing(corral, tmp_path):
    server = corral("run", cwd=tmp_path)

    errors = _refused(server)
    assert len(errors) == 1, server.output
    assert "no app given" in errors[0]
    assert "corral.toml" in errors[0]


# -- corral check ------------------------------------------------------------------------


def test_check_of_a_sound_file_exits_0_and_starts_nothing(corral, tmp_path):
    _with_plain_app(tmp_path)
    _write(
        tmp_path,
        {
            "corral.toml": """
                [web]
                app = "plain:app"
                port = 0

                [prestart]
                steps = ["touch prestart-ran", { call = "tasks:main" }]

                [processes.worker]
                call = "tasks:main"
                replicas = 2

                [processes.cmd]
                command = "touch command-ran"

                [jobs.beat]
                call = "tasks:main"
                every = "1s"
            """,
            "tasks.py": """
                from pathlib import Path

                def main():
                    Path("call-ran").touch()
            """,
        },
    )

    server = corral("check", cwd=tmp_path)

    assert server.wait(15) == 0, server.output
    assert not server.wait_until_gone(2)
    assert "configuration valid" in server.output
    assert _errors(server) == []
    assert server.count(r"started|listening on") == 0, server.output
    for trace in ("prestart-ran", "call-ran", "command-ran"):
        assert not (tmp_path / trace).exists(), trace


def test_check_exits_1_with_one_message_per_target_that_does_not_import(corral, tmp_path):
    _with_plain_app(tmp_path)
    _write(
        tmp_path,
        {
            "corral.toml": """
                [web]
                app = "plain:app"

                [processes.missing-module]
                call = "nosuchmodule:main"

                [processes.missing-attribute]
                call = "tasks:mian"

                [jobs.raising]
                call = "broken:main"
                every = "1m"
            """,
            "tasks.py": """
                def main():
                    pass
            """,
            "broken.py": """
                def read_settings():
                    raise ValueError("SETTINGS_URL is not set")

                read_settings()

                def main():
                    pass
            """,
        },
    )

    server = corral("check", cwd=tmp_path)

    assert server.wait(15) == 1, server.output
    assert not server.wait_until_gone(2)
    errors = _errors(server)
    assert len(errors) == 3, server.output
    by_where = {e.split("'")[0]: e for e in errors}
    missing_module = by_where["corral: error: corral.toml: [processes.missing-module] call "]
    assert "no module named 'nosuchmodule'" in missing_module
    missing_attribute = by_where["corral: error: corral.toml: [processes.missing-attribute] call "]
    assert "'tasks' has no attribute 'mian' (did you mean 'main'?)" in missing_attribute
    assert "corral: error: corral.toml: [jobs.raising] call " in by_where
    # The user's traceback: their file, their function, their exception; not corral's frames.
    assert 'broken.py", line 2, in read_settings' in server.output
    assert "ValueError: SETTINGS_URL is not set" in server.output
    assert "app_loader" not in server.output
    assert "importlib" not in server.output
    assert "configuration valid" not in server.output


def test_check_of_a_bad_file_exits_1_with_one_message_per_problem(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": """
                [processes.worker]
                call = "tasks:main"
                replica = 2

                [jobs.beat]
                call = "tasks:main"
                every = "soon"
            """
        },
    )

    server = corral("check", cwd=tmp_path)

    assert server.wait(15) == 1, server.output
    assert not server.wait_until_gone(2)
    assert sorted(_errors(server)) == [
        "corral: error: corral.toml: [jobs.beat] every: expected a duration such as 30, "
        "'30s' or '1m30s', got 'soon'",
        "corral: error: corral.toml: [processes.worker] replica: unknown setting "
        "(did you mean 'replicas'?)",
    ], server.output
