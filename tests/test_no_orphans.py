"""Nothing corral started outlives it, however the manager dies (issue 11, item 4).

Every process corral starts, and every process those start, ends when the manager is killed
with SIGKILL: a command's own children (in its process group, or in a session of their own),
what a web worker's app, a `call` job and a `command` job start, a prestart step's children.
Each is a `sleep` with a number no other test uses, found by its command line among all the
machine's processes (an orphan leaves corral's process tree, so the tree cannot find it).
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import Corral

PYTHON = sys.executable
GONE_WITHIN = 15.0  # seconds: the longest stop_timeout here (10 s) and some slack

_numbers = itertools.count(int(time.time() * 1000) % 1_000_000)


def _marker() -> str:
    """A `sleep` argument no other process on the machine has: 3170.<unique digits>."""
    return f"3170.{os.getpid()}{next(_numbers)}"


def _sleeps(markers: list[str]) -> dict[str, list[psutil.Process]]:
    """The live `sleep MARKER` processes, by marker."""
    found: dict[str, list[psutil.Process]] = {marker: [] for marker in markers}
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] == psutil.STATUS_ZOMBIE or len(cmdline) != 2:
            continue
        if os.path.basename(cmdline[0]) == "sleep" and cmdline[1] in found:
            found[cmdline[1]].append(process)
    return found


def _wait_running(markers: list[str], server: Corral, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        missing = [marker for marker, found in _sleeps(markers).items() if not found]
        if not missing:
            return
        if time.monotonic() > deadline or server.proc.poll() is not None:
            raise AssertionError(f"never started: sleep {missing}\n{server.output}")
        time.sleep(0.1)


def _wait_gone(markers: list[str], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for found in _sleeps(markers).values() for p in found]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.fixture
def markers() -> Iterator[list[str]]:
    """The test's sleep markers; any sleep still there after the test is killed (and fails it)."""
    chosen: list[str] = []
    yield chosen
    left = [process for found in _sleeps(chosen).values() for process in found]
    for process in left:
        process.kill()
    psutil.wait_procs(left, timeout=5)


def _write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip("\n"))


def _kill_manager_and_check_everything_ends(server: Corral, markers: list[str]) -> None:
    server.send(signal.SIGKILL)
    assert server.wait(10) == -signal.SIGKILL
    left = _wait_gone(markers, GONE_WITHIN)
    assert not left, f"outlived the manager: {[p.cmdline() for p in left]}\n{server.output}"
    tree = server.wait_until_gone(5)
    assert not tree, f"processes of corral's tree left: {tree}\n{server.output}"


def test_a_commands_children_end_when_the_manager_is_killed(corral, tmp_path, markers):
    """The issue's input: `sh -c 'sleep & sleep; wait'`; the shell alone got the signal."""
    first, second = _marker(), _marker()
    markers += [first, second]
    command = f"sh -c 'sleep {first} & sleep {second}; wait'"
    _write(tmp_path, {"corral.toml": f'[processes.x]\ncommand = "{command}"\n'})
    server = corral("run", cwd=tmp_path)
    _wait_running(markers, server)
    _kill_manager_and_check_everything_ends(server, markers)


def test_what_every_kind_of_child_starts_ends_when_the_manager_is_killed(corral, tmp_path, markers):
    """A web worker's app, a call job, a command job, and a process's child in its own session.

    The call and command jobs' children outlive their run (each run exits at once): they are
    orphans long before the manager dies.
    """
    app, call_job, command_job, own_session, plain = (_marker() for _ in range(5))
    markers += [app, call_job, command_job, own_session, plain]
    _write(
        tmp_path,
        {
            "corral.toml": f"""
                [web]
                app = "sprouts:app"
                port = 0

                [processes.daemonish]
                command = "sh -c 'setsid sleep {own_session} & sleep {plain}; wait'"

                [jobs.forks]
                call = "sprouts:start_a_sleep"
                every = "1s"

                [jobs.shell]
                command = "sh -c 'sleep {command_job} &'"
                every = "1s"
            """,
            "sprouts.py": f"""
                import subprocess

                def start_a_sleep():
                    subprocess.Popen(["sleep", "{call_job}"])

                async def app(scope, receive, send):
                    if scope["type"] == "lifespan":
                        message = await receive()
                        subprocess.Popen(["sleep", "{app}"])
                        await send({{"type": "lifespan.startup.complete"}})
                        await receive()
                        await send({{"type": "lifespan.shutdown.complete"}})
            """,
        },
    )
    server = corral("run", cwd=tmp_path)
    server.url()
    _wait_running(markers, server)
    _kill_manager_and_check_everything_ends(server, markers)


def test_a_prestart_steps_children_end_when_the_manager_is_killed(corral, tmp_path, markers):
    first, second = _marker(), _marker()
    markers += [first, second]
    _write(
        tmp_path,
        {
            "corral.toml": f"""
                [prestart]
                steps = ["sleep {first} & sleep {second}; wait"]

                [processes.never]
                command = "sleep 60"
            """
        },
    )
    server = corral("run", cwd=tmp_path)
    _wait_running(markers, server)
    _kill_manager_and_check_everything_ends(server, markers)
