"""SIGHUP (and `corral reload`) re-reads corral.toml, env_file and [env], and applies the change."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from textwrap import dedent

import httpx

APP = """
import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = f"{os.environ.get('FEATURE', '-')} {os.getpid()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""

TASKS = """
import os
import time


def consume():
    name = os.environ["PROCESS"]
    while True:
        print(f"{name} sees FEATURE={os.environ.get('FEATURE', '-')}", flush=True)
        time.sleep(0.2)


def tick():
    print(f"{os.environ.get('JOB', '?')} ticks", flush=True)
"""


def _write(directory: Path, config: str, feature: str = "off") -> None:
    (directory / "api.py").write_text(dedent(APP))
    (directory / "tasks.py").write_text(dedent(TASKS))
    (directory / ".env").write_text(f"FEATURE={feature}\n")
    (directory / "corral.toml").write_text(dedent(config))


BASE = """
env_file = ".env"

[web]
app = "api:app"
port = {port}
workers = 1

[processes.consumer]
call = "tasks:consume"
env = {{ PROCESS = "consumer" }}
"""


def _status(directory: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "corral", "status", "--json"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _ready_workers(directory: Path) -> set[str]:
    rows = _status(directory)["processes"]
    return {row["name"] for row in rows if row["group"] == "web" and row["state"] == "ready"}


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sighup_applies_a_changed_env_file_to_web_and_processes(corral, tmp_path, free_port):
    _write(tmp_path, BASE.format(port=free_port))
    server = corral("run", cwd=tmp_path)
    url = server.url()
    server.wait_for(r"^consumer\.1\s+\| consumer sees FEATURE=off$")
    assert httpx.get(url).text.startswith("off ")

    (tmp_path / ".env").write_text("FEATURE=on\n")
    mark = server.mark()
    server.send(signal.SIGHUP)
    server.wait_for(r"reload complete: 1 worker on the new code", after=mark)
    server.wait_for(r"^consumer\.1\s+\| consumer sees FEATURE=on$", after=mark)
    assert httpx.get(url, headers={"Connection": "close"}).text.startswith("on ")
    assert server.stop() == 0


def test_sighup_applies_worker_counts_and_adds_changes_and_removes_groups_and_jobs(
    corral, tmp_path, free_port
):
    _write(
        tmp_path,
        BASE.format(port=free_port)
        + dedent(
            """
            [processes.old]
            call = "tasks:consume"
            env = { PROCESS = "old" }

            [jobs.gone]
            call = "tasks:tick"
            every = "0.3s"
            env = { JOB = "gone" }
            """
        ),
    )
    server = corral("run", cwd=tmp_path)
    server.url()
    server.wait_for(r"^gone\s+\| gone ticks$")
    server.wait_for(r"^old\.1\s+\| old sees FEATURE=off$")

    (tmp_path / "corral.toml").write_text(
        dedent(
            BASE.format(port=free_port).replace("workers = 1", "workers = 3")
            + """
            [processes.new]
            call = "tasks:consume"
            replicas = 2
            env = { PROCESS = "new" }

            [jobs.fresh]
            call = "tasks:tick"
            every = "0.3s"
            env = { JOB = "fresh" }
            """
        ).replace('env = { PROCESS = "consumer" }', 'env = { PROCESS = "changed" }')
    )
    mark = server.mark()
    server.send(signal.SIGHUP)
    server.wait_for(r"reload: \[processes\.old\] is no longer declared: stopping it", after=mark)
    server.wait_for(r"^new\.2\s+\| new sees FEATURE=off$", after=mark)
    server.wait_for(r"^consumer\.1\s+\| changed sees FEATURE=off$", after=mark)
    server.wait_for(r"^fresh\s+\| fresh ticks$", after=mark)
    _wait(lambda: _ready_workers(tmp_path) == {"web.1", "web.2", "web.3"}, 20, "3 web workers")

    status = _status(tmp_path)
    names = {row["name"] for row in status["processes"]}
    assert "old.1" not in names and {"new.1", "new.2", "consumer.1"} <= names, names
    assert [job["name"] for job in status["jobs"]] == ["fresh"]
    # The removed job ticks no more, and the removed process's output has ended.
    time.sleep(0.2)  # let a line written just before the reload reach the output
    after = server.mark()
    server.wait_for(r"^fresh\s+\| fresh ticks$", after=after)
    server.wait_for(r"^fresh\s+\| fresh ticks$", after=server.mark())
    assert not any(line.startswith(("gone ", "old.1 ")) for line in server.lines[after:])
    assert server.stop() == 0


def test_a_configuration_that_no_longer_validates_changes_nothing(corral, tmp_path, free_port):
    _write(tmp_path, BASE.format(port=free_port))
    server = corral("run", cwd=tmp_path)
    url = server.url()
    before = httpx.get(url, headers={"Connection": "close"}).text.split()[1]
    server.wait_for(r"^consumer\.1\s+\| consumer sees FEATURE=off$")
    consumer = next(r["pid"] for r in _status(tmp_path)["processes"] if r["name"] == "consumer.1")

    (tmp_path / "corral.toml").write_text(
        BASE.format(port=free_port).replace("workers = 1", "workers = 0")
    )
    mark = server.mark()
    server.send(signal.SIGHUP)
    server.wait_for(r"reload: the configuration does not validate; nothing changes:", after=mark)
    server.wait_for(r"corral\.toml: \[web\] workers: expected a number of 1 or more", after=mark)
    time.sleep(0.5)  # nothing is under way that could change what follows
    rows = {r["name"]: r for r in _status(tmp_path)["processes"]}
    assert rows["consumer.1"]["pid"] == consumer
    assert httpx.get(url, headers={"Connection": "close"}).text.split()[1] == before
    assert server.count(r"reloading: |reload complete") == 0, server.output
    assert server.stop() == 0


def test_a_reload_names_what_needs_a_restart_and_keeps_serving(corral, tmp_path, free_port):
    _write(tmp_path, BASE.format(port=free_port))
    server = corral("run", cwd=tmp_path)
    url = server.url()
    (tmp_path / "corral.toml").write_text(
        BASE.format(port=free_port).replace(f"port = {free_port}", f"port = {free_port + 1}")
    )
    mark = server.mark()
    server.send(signal.SIGHUP)
    server.wait_for(r"reload: \[web\] port changed; that takes a restart of corral", after=mark)
    server.wait_for(r"reload complete", after=mark)
    assert httpx.get(url).status_code == 200
    assert server.stop() == 0


def test_sigkill_of_the_manager_during_a_configuration_reload_leaves_no_process(
    corral, tmp_path, free_port
):
    _write(tmp_path, BASE.format(port=free_port).replace("workers = 1", "workers = 2"))
    server = corral("run", cwd=tmp_path)
    server.url()
    server.wait_for(r"^consumer\.1\s+\| consumer sees FEATURE=off$")
    (tmp_path / "corral.toml").write_text(
        BASE.format(port=free_port).replace("workers = 1", "workers = 4")
        + '\n[processes.extra]\ncall = "tasks:consume"\nreplicas = 2\n'
        + 'env = { PROCESS = "extra" }\n'
    )
    mark = server.mark()
    server.send(signal.SIGHUP)
    server.wait_for(r"reloading: loading the current code in a new zygote", after=mark)
    tree = server.alive()
    assert len(tree) >= 5, tree
    os.kill(server.pid, signal.SIGKILL)
    server.wait(10)
    left = server.wait_until_gone(10)
    assert not left, f"left behind after SIGKILL during a reload: {left}\n{server.output}"


def test_a_reload_after_one_that_added_a_process_group_is_applied_too(corral, tmp_path, free_port):
    """The added group's processes run on: the first reload must not wait for them to end."""
    _write(tmp_path, BASE.format(port=free_port))
    server = corral("run", cwd=tmp_path)
    server.url()
    added = '\n[processes.extra]\ncall = "tasks:consume"\nenv = { PROCESS = "extra" }\n'
    (tmp_path / "corral.toml").write_text(BASE.format(port=free_port) + added)
    mark = server.mark()
    server.send(signal.SIGHUP)
    server.wait_for(r"^extra\.1\s+\| extra sees FEATURE=off$", after=mark)
    server.wait_for(r"reload complete", after=mark)
    (tmp_path / ".env").write_text("FEATURE=on\n")
    mark = server.mark()
    server.send(signal.SIGHUP)
    server.wait_for(r"^extra\.1\s+\| extra sees FEATURE=on$", after=mark, timeout=20)
    assert "ignored" not in server.output, server.output
    assert server.stop() == 0


def test_corral_reload_refuses_a_file_that_no_longer_validates(corral, tmp_path, free_port):
    _write(tmp_path, BASE.format(port=free_port))
    server = corral("run", cwd=tmp_path)
    server.url()
    (tmp_path / "corral.toml").write_text(BASE.format(port=free_port) + "\n[jobs.x]\n")
    verb = subprocess.run(
        [sys.executable, "-m", "corral", "reload"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert verb.returncode == 1, (verb.stdout, verb.stderr)
    assert "does not validate" in verb.stderr and "[jobs.x]" in verb.stderr, verb.stderr
    assert server.count(r"reloading: ") == 0, server.output
    assert server.stop() == 0


def test_what_needs_a_restart_is_said_on_every_reload_until_then(corral, tmp_path, free_port):
    _write(tmp_path, BASE.format(port=free_port))
    server = corral("run", cwd=tmp_path)
    server.url()
    (tmp_path / "corral.toml").write_text(
        BASE.format(port=free_port).replace(f"port = {free_port}", f"port = {free_port + 1}")
    )
    for _ in range(2):
        mark = server.mark()
        server.send(signal.SIGHUP)
        server.wait_for(r"reload: \[web\] port changed", after=mark)
        server.wait_for(r"reload complete", after=mark)
    assert server.stop() == 0
