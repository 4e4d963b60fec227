"""[prestart]: steps that run once, in order, before any web worker or process starts.

A failing step stops corral with exit code 4 and its output shown; nothing else ever starts.
A reload does not run the steps again.

Each test writes its corral.toml and its modules under tmp_path and runs corral there.
"""

from __future__ import annotations

import re
import shutil
import signal
import textwrap
from pathlib import Path

import pytest

from conftest import APPS, Corral

# Beside the steps: a web group and a process, to see that they wait for prestart.
SYSTEM = """
[env]
GREETING = "hello from [env]"

[web]
app = "plain:app"
port = 0

[processes.worker]
call = "steps:worker"
"""

STEPS_MODULE = """
import asyncio
import os
import sys
import time
from pathlib import Path


def record(what):
    with open("steps.log", "a") as log:
        log.write(what + "\\n")


def second():
    record("second")
    print("step two: a call, sees", os.environ["GREETING"], flush=True)


async def fourth():
    await asyncio.sleep(0)
    record("fourth")
    print("step four: an async call", flush=True)


def failing():
    record("failing")
    print("about to fail", flush=True)
    raise RuntimeError("the database is not reachable")


def worker():
    record("worker")
    print("worker running", flush=True)
    time.sleep(60)
"""


# -- helpers -------------------------------------------------------------------------


def _write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip("\n"))


def _system(directory: Path, steps: str) -> None:
    """A system with a web group, a process and these prestart steps (a TOML array)."""
    shutil.copy(APPS / "plain.py", directory / "plain.py")
    _write(
        directory,
        {
            "corral.toml": f"[prestart]\nsteps = {steps}\n{SYSTEM}",
            "steps.py": STEPS_MODULE,
        },
    )


def _index(server: Corral, pattern: str) -> int:
    """The index of the only line matching `pattern`."""
    regex = re.compile(pattern)
    found = [i for i, line in enumerate(server.lines) if regex.search(line)]
    assert len(found) == 1, (pattern, found, server.output)
    return found[0]


def _recorded(directory: Path) -> list[str]:
    log = directory / "steps.log"
    return log.read_text().split() if log.exists() else []


# -- steps run once, in order, before anything starts -------------------------------------


def test_steps_run_once_in_order_before_any_web_worker_or_process_starts(corral, tmp_path):
    _system(
        tmp_path,
        """[
    "echo first >> steps.log && sleep 1 && echo step one: $GREETING",
    { call = "steps:second" },
    "for n in 1 2; do echo step three, line $n; done; echo third >> steps.log",
    { call = "steps:fourth" },
]""",
    )

    server = corral("run", cwd=tmp_path)

    server.url()
    server.wait_for(r"^worker\.1\s+\| worker running$")
    assert server.stop() == 0
    step_lines = [
        _index(server, r"^prestart\s+\| step one: hello from \[env\]$"),
        _index(server, r"^prestart\s+\| step two: a call, sees hello from \[env\]$"),
        _index(server, r"^prestart\s+\| step three, line 1$"),
        _index(server, r"^prestart\s+\| step three, line 2$"),
        _index(server, r"^prestart\s+\| step four: an async call$"),
    ]
    assert step_lines == sorted(step_lines), server.output
    first_start = min(
        _index(server, r"^corral\s+\| web\.1 started"),
        _index(server, r"^corral\s+\| worker\.1 started"),
    )
    assert step_lines[-1] < first_start, server.output
    assert _recorded(tmp_path) == ["first", "second", "third", "fourth", "worker"]
    assert server.count(r"prestart step \d+ failed") == 0, server.output


# -- the first failing step stops corral with exit code 4 ---------------------------------

FAILING_STEPS = {
    # case: (steps, what the failing step's output shows, how the failure is described)
    "a_command": (
        """[
    "echo first >> steps.log",
    "echo about to fail; echo the migration failed >&2; exit 3",
    "echo third >> steps.log",
]""",
        [r"^prestart\s+\| about to fail$", r"^prestart\s+\| the migration failed$"],
        r"prestart step 2 failed \(exit code 3\)",
    ),
    "a_call": (
        """[
    "echo first >> steps.log",
    { call = "steps:failing" },
    "echo third >> steps.log",
]""",
        [
            r"^prestart\s+\| about to fail$",
            r'^prestart\s+\|\s+File ".*steps\.py", line \d+, in failing$',
            r"^prestart\s+\| RuntimeError: the database is not reachable$",
        ],
        r"prestart step 2 failed \(exit code 1\)",
    ),
}


@pytest.mark.parametrize("case", list(FAILING_STEPS))
def test_first_failing_step_stops_corral_with_code_4_its_output_shown_and_nothing_started(
    corral, tmp_path, case
):
    steps, shown, failure = FAILING_STEPS[case]
    _system(tmp_path, steps)

    server = corral("run", cwd=tmp_path)

    assert server.wait(20) == 4, server.output
    assert not server.wait_until_gone(5), server.output
    for pattern in shown:
        assert server.count(pattern) == 1, (pattern, server.output)
    assert server.count(failure) == 1, server.output
    assert server.count(r"started|listening on") == 0, server.output
    assert server.count(r"prestart step 3") == 0, server.output  # later steps do not run
    assert _recorded(tmp_path) == ["first"] + (["failing"] if case == "a_call" else [])
    assert "worker running" not in server.output


# -- a reload does not run prestart again ---------------------------------------------------


def test_reload_does_not_run_prestart_again(corral, tmp_path):
    _system(tmp_path, '["echo prestart >> steps.log; echo prestart ran"]')

    server = corral("run", cwd=tmp_path)
    server.url()
    server.wait_workers(1)
    server.wait_for(r"^worker\.1\s+\| worker running$")
    mark = server.mark()

    server.send(signal.SIGHUP)

    server.wait_for(r"reload complete", after=mark, timeout=20)
    # The reload restarts the replica (it runs the current code), not the prestart steps.
    server.wait_for(r"^worker\.1\s+\| worker running$", after=mark, timeout=20)
    assert server.count(r"^prestart\s+\| prestart ran$") == 1, server.output
    assert server.count(r"prestart step") == 1, server.output
    assert server.stop() == 0
    assert _recorded(tmp_path) == ["prestart", "worker", "worker"]
