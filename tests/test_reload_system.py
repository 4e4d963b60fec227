"""SIGHUP reloads the whole system: web workers, process replicas and call jobs."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from textwrap import dedent

TASKS = """
import asyncio
import os

import version


async def consume():
    while True:
        print(f"replica {os.environ['CORRAL_REPLICA']} runs {version.VERSION}", flush=True)
        await asyncio.sleep(0.2)


def tick():
    print(f"tick runs {version.VERSION}", flush=True)
"""

CONFIG = """
[processes.consumer]
call = "tasks:consume"
replicas = 2

[jobs.beat]
call = "tasks:tick"
every = "0.5s"
"""


def _system(directory: Path) -> None:
    (directory / "tasks.py").write_text(dedent(TASKS))
    (directory / "version.py").write_text('VERSION = "v1"\n')
    (directory / "corral.toml").write_text(dedent(CONFIG))


def _jobs_zygotes(server) -> list[int]:
    return [p.pid for p in server.alive() if p.cmdline()[:1] == ["corral: jobs.zygote"]]


def test_sighup_restarts_replicas_one_at_a_time_and_jobs_run_the_new_code(corral, tmp_path):
    _system(tmp_path)
    server = corral("run", cwd=tmp_path, env={"PYTHONDONTWRITEBYTECODE": "1"})
    server.wait_for(r"^beat\s+\| tick runs v1$")
    server.wait_for(r"^consumer\.2\s+\| replica 2 runs v1$")
    (old_zygote,) = _jobs_zygotes(server)

    (tmp_path / "version.py").write_text('VERSION = "v2"\n')
    mark = server.mark()
    server.send(signal.SIGHUP)
    server.wait_for(r"jobs reloaded: the next runs use the current code", after=mark)
    server.wait_for(r"^beat\s+\| tick runs v2$", after=mark)
    server.wait_for(r"^consumer\.1\s+\| replica 1 runs v2$", after=mark)
    server.wait_for(r"^consumer\.2\s+\| replica 2 runs v2$", after=mark)

    lifecycle = [
        line for line in server.lines[mark:] if line.startswith("corral") and ("consumer." in line)
    ]
    # One at a time: consumer.1 is back before consumer.2 is stopped.
    order = [line.split("|", 1)[1].split(" (")[0].strip() for line in lifecycle]
    assert order[:4] == [
        "consumer.1 stopped",
        "consumer.1 started",
        "consumer.2 stopped",
        "consumer.2 started",
    ], lifecycle
    assert all("reload" in line for line in lifecycle if "stopped" in line), lifecycle

    deadline = time.monotonic() + 5
    while old_zygote in _jobs_zygotes(server):
        assert time.monotonic() < deadline, "the old jobs zygote did not retire"
        time.sleep(0.05)
    assert len(_jobs_zygotes(server)) == 1
    assert server.stop() == 0


def _pids(server, title: str) -> list[int]:
    return [p.pid for p in server.alive() if p.cmdline()[:1] == [title]]


def test_sighup_with_code_that_does_not_import_leaves_replicas_and_jobs_on_their_code(
    corral, tmp_path
):
    """As web's workers keep serving when a new zygote cannot load the app, the replicas keep
    running and the jobs keep their zygote when the current code no longer imports; a later
    reload of fixed code goes through."""
    _system(tmp_path)
    server = corral("run", cwd=tmp_path, env={"PYTHONDONTWRITEBYTECODE": "1"})
    server.wait_for(r"^beat\s+\| tick runs v1$")
    server.wait_for(r"^consumer\.2\s+\| replica 2 runs v1$")
    replicas = {
        title: _pids(server, title) for title in ("corral: consumer.1", "corral: consumer.2")
    }
    (old_zygote,) = _jobs_zygotes(server)

    (tmp_path / "version.py").write_text('VERSION = "v2"\ndef oops(:\n')  # a deploy gone wrong
    mark = server.mark()
    server.send(signal.SIGHUP)
    server.wait_for(r"reload of consumer failed: 'tasks:consume' cannot be imported", after=mark)
    server.wait_for(r"jobs not reloaded: the current code of beat cannot be imported", after=mark)
    after = server.mark()
    server.wait_for(r"^beat\s+\| tick runs v1$", after=after)
    server.wait_for(r"^consumer\.1\s+\| replica 1 runs v1$", after=after)
    assert {t: _pids(server, t) for t in replicas} == replicas
    assert _jobs_zygotes(server) == [old_zygote]
    assert not [line for line in server.lines[mark:] if "consumer.1 stopped" in line]
    assert not [line for line in server.lines[mark:] if "beat run failed" in line]

    (tmp_path / "version.py").write_text('VERSION = "v3"\n')
    mark = server.mark()
    server.send(signal.SIGHUP)
    server.wait_for(r"jobs reloaded: the next runs use the current code", after=mark)
    server.wait_for(r"^beat\s+\| tick runs v3$", after=mark)
    server.wait_for(r"^consumer\.2\s+\| replica 2 runs v3$", after=mark)
    assert server.stop() == 0
