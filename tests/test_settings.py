"""corral run's settings: flags, CORRAL_* variables, corral.run(), and what each one changes."""

from __future__ import annotations

import pwd
import re
import shutil
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

import corral as corral_package
from conftest import APPS, Corral
from corral.settings import (
    ConfigError,
    JobConfig,
    ManagerConfig,
    PrestartConfig,
    ProcessConfig,
    WebConfig,
    env_name,
    flagged_settings,
)
from corral.settings.declared import FileConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

README = Path(__file__).parent.parent / "README.md"


class Seen(NamedTuple):
    """What tests/apps/plain.py reports about the request and the process that served it."""

    worker: str
    pid: int
    uid: int
    scheme: str
    client: str
    from_env_file: str
    root_path: str


def seen(response: httpx.Response) -> Seen:
    assert response.status_code == 200, (response.status_code, response.text)
    worker, pid, uid, scheme, client, from_env_file, root_path = response.text.split()
    return Seen(worker, int(pid), int(uid), scheme, client, from_env_file, root_path)


def fails_with_usage(server: Corral) -> str:
    """Wait for a corral that should refuse to start; return its one error line."""
    assert server.wait(15) == 2, server.output
    errors = [line for line in server.lines if "error" in line.lower()]
    assert len(errors) == 1, server.output
    assert "Traceback" not in server.output, server.output
    assert not server.wait_until_gone(2)
    return errors[0]


# -- the command -------------------------------------------------------------------


def test_version_prints_the_version(corral):
    server = corral("--version")
    assert server.wait(15) == 0
    assert server.output.strip() == f"corral, version {corral_package.__version__}"


def test_run_help_lists_the_groups_and_the_environment_variables(corral):
    server = corral("run", "--help")
    assert server.wait(15) == 0
    help_text = server.output
    headings = re.findall(r"^(\w[\w ]*):$", help_text, re.MULTILINE)
    for group in ("Binding", "Workers", "HTTP", "HTTPS", "Logging", "Process"):
        assert group in headings, help_text
    for name, _, _ in flagged_settings(WebConfig):
        assert f"env: {env_name(name)}]" in " ".join(help_text.split()), env_name(name)
    assert "CORRAL_WORKERS" in help_text


def test_run_help_has_every_flag_the_readme_names(corral):
    section = README.read_text().split("## `corral run`", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", section))
    assert {"--workers", "--factory", "--uds", "--backlog", "-b", "--no-access-log"} <= named
    server = corral("run", "--help")
    assert server.wait(15) == 0
    offered = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", server.output))
    assert named - offered == set()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["plain:app", "--workers", "0"], ["--workers: expected a number of 1 or more, got '0'"]),
        (["plain:app", "--workers", "x"], ["--workers", "integer", "'x'"]),
        (["plain:app", "--timeout", "soon"], ["--timeout", "duration", "'soon'"]),
        (["plain:app", "--timeout", "0"], ["--timeout: expected a duration greater than 0", "'0'"]),
        (["plain:app", "--timeout", "-5"], ["--timeout: expected a duration greater than 0"]),
        (["plain:app", "--keep-alive", "-1s"], ["--keep-alive: expected a duration of 0 or more"]),
        (["plain:app", "--ws-max-size", "0"], ["--ws-max-size: expected a size greater than 0"]),
        (["plain:app", "--port", "70000"], ["--port: expected a number of 65535 or less"]),
        (["plain:app", "--log-level", "loud"], ["--log-level", "'debug'", "'loud'"]),
        ([], ["no app", "MODULE:ATTRIBUTE"]),
        (["plainapp"], ["MODULE:ATTRIBUTE", "'plainapp'"]),
        (["plain:app", "--wrokers", "2"], ["--wrokers", "--workers"]),
    ],
    ids=[
        "workers-0",
        "workers-x",
        "timeout",
        "timeout-0",
        "timeout-negative",
        "keep-alive-negative",
        "size-0",
        "port",
        "log-level",
        "no-app",
        "no-colon",
        "unknown-flag",
    ],
)
def test_bad_input_exits_2_with_one_message_naming_it(corral, args, expected):
    line = fails_with_usage(corral("run", *args))
    for fragment in expected:
        assert fragment in line, line


# A key like no setting: (where in corral.toml, what else that table needs to be sound).
UNLIKE_ANY_SETTING = {
    "top_level": ("", ""),
    "web": ("[web] ", '[web]\napp = "plain:app"\n'),
    "corral": ("[corral] ", "[corral]\n"),
    "process": ("[processes.worker] ", '[processes.worker]\ncommand = "sleep 60"\n'),
    "job": ("[jobs.beat] ", '[jobs.beat]\ncommand = "true"\nevery = "1h"\n'),
    "prestart": ("[prestart] ", "[prestart]\n"),
}


@pytest.mark.parametrize("table", list(UNLIKE_ANY_SETTING))
def test_a_key_like_no_setting_is_refused_without_a_did_you_mean(corral, tmp_path, table):
    where, before = UNLIKE_ANY_SETTING[table]
    (tmp_path / "corral.toml").write_text(before + 'colour = "red"\n')
    line = fails_with_usage(corral("run", cwd=tmp_path))
    assert line == f"corral: error: corral.toml: {where}colour: unknown setting", line


# -- environment variables -----------------------------------------------------------


def test_corral_workers_variable_sets_the_worker_count(corral):
    server = corral("run", "plain:app", "--port", "0", env={"CORRAL_WORKERS": "2"})
    server.url()
    assert sorted(server.wait_workers(2, timeout=10)) == ["web.1", "web.2"]
    assert server.wait_for(r"listening on .*\((\d+) workers\)").group(1) == "2"
    assert server.stop() == 0


def test_a_corral_variable_overrides_the_flag(corral):
    server = corral(
        "run", "plain:app", "--port", "0", "--workers", "1", env={"CORRAL_WORKERS": "2"}
    )
    server.url()
    assert sorted(server.wait_workers(2, timeout=10)) == ["web.1", "web.2"]
    assert server.stop() == 0


def test_a_bad_corral_variable_is_named_in_the_error(corral):
    line = fails_with_usage(
        corral("run", "plain:app", "--workers", "3", env={"CORRAL_WORKERS": "many"})
    )
    assert "CORRAL_WORKERS" in line and "'many'" in line, line


# -- the app and what it sees ----------------------------------------------------------


def test_factory_calls_the_named_callable_for_the_app(corral):
    server = corral("run", "plain:make_app", "--factory", "--port", "0")
    url = server.url()
    server.wait_workers(1)
    assert seen(httpx.get(url)).worker == "web.1"
    assert server.stop() == 0


def test_root_path_is_the_one_the_app_sees(corral):
    server = corral("run", "plain:app", "--port", "0", "--root-path", "/api")
    url = server.url()
    server.wait_workers(1)
    assert seen(httpx.get(f"{url}/hello")).root_path == "/api"
    assert server.stop() == 0


def test_access_log_shows_the_path_once_under_a_root_path(corral):
    server = corral("run", "plain:app", "--port", "0", "--root-path", "/api")
    url = server.url()
    server.wait_workers(1)
    seen(httpx.get(f"{url}/hello"))
    line = server.wait_for(r'"GET \S+ HTTP/1\.1" 200').group(0)
    assert server.stop() == 0
    # uvicorn already puts root_path in front of the path; the line must not say /api/api/.
    assert line in ('"GET /hello HTTP/1.1" 200', '"GET /api/hello HTTP/1.1" 200'), line


FORWARDED = {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"}


def test_proxy_headers_from_a_trusted_address_set_client_and_scheme(corral):
    server = corral(
        "run", "plain:app", "--port", "0", "--proxy-headers", "--forwarded-allow-ips", "*"
    )
    url = server.url()
    server.wait_workers(1)
    app_saw = seen(httpx.get(url, headers=FORWARDED))
    assert (app_saw.client, app_saw.scheme) == ("203.0.113.7", "https")
    assert server.stop() == 0


def test_proxy_headers_are_trusted_only_from_127_0_0_1_by_default(corral):
    server = corral("run", "plain:app", "--port", "0")
    url = server.url()
    server.wait_workers(1)
    # From 127.0.0.1, the default trusted proxy address, the headers count...
    from_proxy = seen(httpx.get(url, headers=FORWARDED))
    assert (from_proxy.client, from_proxy.scheme) == ("203.0.113.7", "https")
    # ...from another address (127.0.0.2 is loopback too), they do not.
    other = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=other) as client:
        from_elsewhere = seen(client.get(url, headers=FORWARDED))
    assert (from_elsewhere.client, from_elsewhere.scheme) == ("127.0.0.2", "http")
    assert server.stop() == 0


@pytest.mark.parametrize(
    "args",
    [["--forwarded-allow-ips", "10.9.8.7"], ["--no-proxy-headers", "--forwarded-allow-ips", "*"]],
    ids=["untrusted-address", "no-proxy-headers"],
)
def test_proxy_headers_are_ignored_without_trust(corral, args):
    server = corral("run", "plain:app", "--port", "0", *args)
    url = server.url()
    server.wait_workers(1)
    app_saw = seen(httpx.get(url, headers=FORWARDED))
    assert (app_saw.client, app_saw.scheme) == ("127.0.0.1", "http")
    assert server.stop() == 0


def test_limit_concurrency_answers_503_beyond_the_limit(corral):
    server = corral("run", "plain:app", "--port", "0", "--limit-concurrency", "1")
    url = server.url()
    server.wait_workers(1)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, f"{url}/slow?seconds=2", timeout=10)
        time.sleep(0.5)  # the slow request is in the app now
        second = httpx.get(f"{url}/", timeout=10)
        first = slow.result(10)
    assert server.stop() == 0
    assert second.status_code == 503
    assert first.status_code == 200, "the first request, within the limit, was refused"


def test_env_file_variables_reach_the_app(corral, tmp_path, monkeypatch):
    monkeypatch.delenv("FROM_ENV_FILE", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("# for the app\nFROM_ENV_FILE=yes\n")
    server = corral("run", "plain:app", "--port", "0", "--env-file", str(env_file))
    url = server.url()
    server.wait_workers(1)
    assert seen(httpx.get(url)).from_env_file == "yes"
    assert server.stop() == 0


# -- the process -----------------------------------------------------------------------


def test_pidfile_holds_the_manager_pid_while_running(corral, tmp_path):
    pidfile = tmp_path / "corral.pid"
    server = corral("run", "plain:app", "--port", "0", "--pidfile", str(pidfile))
    server.url()
    assert pidfile.read_text().strip() == str(server.pid)
    assert server.stop() == 0
    assert not pidfile.exists()


def test_user_and_group_drop_privileges_after_writing_the_pidfile(
    launch, tmp_path, nobody_python, public_dir
):
    shutil.copy(APPS / "plain.py", public_dir)  # where nobody can read it
    private = tmp_path / "run"
    private.mkdir(mode=0o700)  # only root can write here: the pidfile comes before the drop
    pidfile = private / "corral.pid"
    identity = ["--user", "nobody", "--group", "nogroup", "--pidfile", str(pidfile)]
    corral = [str(nobody_python), "-m", "corral", "run", "plain:app", "--port", "0", *identity]
    server = launch(corral, public_dir)
    url = server.url()
    server.wait_workers(1)
    assert seen(httpx.get(url)).uid == pwd.getpwnam("nobody").pw_uid
    assert pidfile.read_text().strip() == str(server.pid)
    assert server.stop() == 0
    assert not pidfile.exists(), "the pidfile outlived the server"


# -- logging ---------------------------------------------------------------------------


def _get(url: str, target: str) -> tuple[int, bytes]:
    """GET `target` over a connection of our own; return its client port and the response."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return client_port, response


def test_access_log_has_one_line_per_request_by_default(corral):
    server = corral("run", "plain:app", "--port", "0")
    url = server.url()
    server.wait_workers(1)
    client_port, response = _get(url, "/path?x=1")
    assert response.startswith(b"HTTP/1.1 200 ")
    server.wait_for(
        rf'^web\.1 +\| 127\.0\.0\.1:{client_port} - "GET /path\?x=1 HTTP/1\.1" 200 '
        r"\d+(\.\d+)?ms$",
        timeout=5,
    )
    assert server.count(r'"GET /path\?x=1 HTTP') == 1
    assert server.stop() == 0


def test_no_access_log_writes_no_request_lines(corral):
    server = corral("run", "plain:app", "--port", "0", "--no-access-log")
    url = server.url()
    server.wait_workers(1)
    _, response = _get(url, "/path?x=1")
    assert response.startswith(b"HTTP/1.1 200 ")
    assert server.stop() == 0  # a worker flushes its access lines before it exits
    assert server.count(r'"GET /path') == 0, server.output


# -- the Python API ----------------------------------------------------------------------


def test_python_api_serves_and_exits_0_on_sigterm(launch, tmp_path):
    script = tmp_path / "serve.py"
    script.write_text(
        'import sys\nimport corral\n\nsys.exit(corral.run("plain:app", workers=2, port=0))\n'
    )
    server = launch([sys.executable, str(script)], cwd=tmp_path, env={"PYTHONPATH": str(APPS)})
    url = server.url()
    pids = server.wait_workers(2, timeout=10)
    app_saw = seen(httpx.get(url))
    assert pids[app_saw.worker] == app_saw.pid
    assert server.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize(
    ("settings", "named"),
    [({"workers": 0}, "workers"), ({"wrokers": 2}, "wrokers"), ({"timeout": "soon"}, "timeout")],
)
def test_python_api_raises_config_error_naming_the_setting(settings, named):
    with pytest.raises(ConfigError) as raised:
        # An app that cannot be imported: were the settings accepted, run() would end at once.
        corral_package.run("no_such_module_here:app", **settings)
    assert len(raised.value.messages) == 1
    assert named in raised.value.messages[0]


def test_python_api_offers_no_did_you_mean_for_a_keyword_like_no_setting():
    with pytest.raises(ConfigError) as raised:
        corral_package.run("no_such_module_here:app", colour="red")
    assert raised.value.messages == ["corral.run(colour=...): unknown setting"]


# -- durations ---------------------------------------------------------------------------


def _idle_close_after(url: str) -> float:
    """Seconds until the server closes an idle keep-alive connection after a response."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while not response.endswith(b"0\r\n\r\n"):  # the end of a chunked body
            chunk = sock.recv(65536)
            assert chunk, response
            response += chunk
        idle_since = time.monotonic()
        assert sock.recv(65536) == b""
        return time.monotonic() - idle_since


@pytest.mark.parametrize(("value", "seconds"), [("2s", 2.0), ("1", 1.0)])
def test_keep_alive_takes_a_duration_or_a_number(corral, value, seconds):
    server = corral("run", "plain:app", "--port", "0", "--keep-alive", value)
    url = server.url()
    server.wait_workers(1)
    assert abs(_idle_close_after(url) - seconds) < 0.6
    assert server.stop() == 0


@pytest.mark.parametrize("value", ["2s", "2"])
def test_graceful_timeout_takes_a_duration_or_a_number(corral, value):
    server = corral("run", "plain:app", "--port", "0", "--graceful-timeout", value)
    url = server.url()
    server.wait_workers(1)
    with ThreadPoolExecutor(1) as pool:
        long_request = pool.submit(httpx.get, f"{url}/slow?seconds=30", timeout=40)
        time.sleep(0.5)
        started = time.monotonic()
        assert server.stop(timeout=8) == 0  # the default, 30 s, would not make it
        took = time.monotonic() - started
        try:
            cut_off = long_request.result(10).status_code  # uvicorn answers 500 when it cancels
        except httpx.HTTPError:
            cut_off = None
    assert cut_off != 200, "the 30 s request was not cut off at the graceful timeout"
    assert server.count(r"stopping gracefully \(up to 2s") == 1, server.output
    assert took < 6, f"a 2s graceful timeout took {took:.1f}s to stop"


FILE_MODELS = {
    "corral": ManagerConfig,
    "processes": ProcessConfig,
    "jobs": JobConfig,
    "prestart": PrestartConfig,
}


def test_the_readme_reference_of_corral_toml_matches_the_models():
    """Every key the README's corral.toml names exists; every setting of the file is named."""
    section = README.read_text().split("## The whole system: `corral.toml`", 1)[1]
    section = section.split("\n## ", 1)[0]
    example = tomllib.loads(section.split("```toml", 1)[1].split("```", 1)[0])
    assert set(example) <= set(FileConfig.model_fields), set(example) - set(FileConfig.model_fields)
    assert set(example["web"]) <= set(WebConfig.model_fields)
    for table, model in FILE_MODELS.items():
        entries = example[table].values() if table in ("processes", "jobs") else [example[table]]
        for entry in entries:
            assert set(entry) <= set(model.model_fields), (
                table,
                set(entry) - set(model.model_fields),
            )
    named = set(re.findall(r"\b([a-z][a-z_]*)\b", section))
    for table, model in {**FILE_MODELS, "": FileConfig}.items():
        missing = set(model.model_fields) - named
        assert not missing, f"README's corral.toml reference does not name [{table}] {missing}"


def test_every_setting_of_the_file_has_a_description():
    for model in (*FILE_MODELS.values(), FileConfig, WebConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
