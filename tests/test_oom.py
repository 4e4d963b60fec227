"""A process the kernel's OOM killer ends is told apart from one killed by hand.

corral runs in a memory cgroup of the test's own, with a limit its hog
process passes: the kernel kills the hog (SIGKILL), and corral says so from
the cgroup's OOM kill count. A SIGKILL sent by hand, later, is only a
SIGKILL. Skipped where no memory cgroup can be made (not root, no memory
controller).
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.manager.exits import OOM_WINDOW, oom_counter

LIMIT = 200 * 1024 * 1024  # bytes: the manager, a sleeper and the hog until it passes it

HOG = """
blocks = []
print("allocating", flush=True)
while True:
    blocks.append(bytearray(10_000_000))  # zero-filled: every page is touched
"""


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A new memory cgroup under this process's own, limited to LIMIT bytes, with no swap.

    A test names it before `launch`, so that it goes after corral's processes have.
    """
    counter = oom_counter(Path("/proc/self/cgroup").read_text())
    if counter is None:
        pytest.skip("no memory cgroup here")
    path = counter.parent / f"corral-oom-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as error:
        pytest.skip(f"cannot make a memory cgroup here: {error}")
    try:
        if counter.name == "memory.oom_control":  # cgroup v1
            (path / "memory.limit_in_bytes").write_text(str(LIMIT))
            swap = path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(LIMIT))
        else:
            (path / "memory.max").write_text(str(LIMIT))
            (path / "memory.swap.max").write_text("0")
        yield path
    finally:
        deadline = time.monotonic() + 10
        while True:  # a cgroup goes once its last process has
            try:
                path.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def test_an_oom_kill_is_told_and_a_sigkill_by_hand_is_not(memory_cgroup, launch, tmp_path):
    (tmp_path / "hog.py").write_text(HOG)
    (tmp_path / "corral.toml").write_text(
        textwrap.dedent(
            f"""
            [processes.hog]
            command = "{sys.executable} hog.py"
            restart = "never"

            [processes.sleeper]
            command = "sleep 3600"
            """
        )
    )
    enter = f"echo $$ > {memory_cgroup / 'cgroup.procs'} && exec {sys.executable} -m corral run"
    server = launch(["sh", "-c", enter], cwd=tmp_path)
    server.wait_for(r"hog\.1 exited \(pid \d+, killed by SIGKILL \(out of memory\?\)\)", timeout=30)
    hog = server.wait_status("the hog failed", lambda s: _row(s, "hog.1")["state"] == "failed")
    assert _row(hog, "hog.1")["last_exit"] == "killed by SIGKILL (out of memory?)"

    time.sleep(OOM_WINDOW + 0.5)  # a kill long after the OOM kill is not taken for one
    sleeper = _row(server.status(), "sleeper.1")
    os.kill(sleeper["pid"], signal.SIGKILL)
    server.wait_for(rf"sleeper\.1 exited \(pid {sleeper['pid']}, killed by SIGKILL\)$")
    restarted = server.wait_status(
        "the sleeper restarted",
        lambda s: _row(s, "sleeper.1")["pid"] not in (None, sleeper["pid"]),
    )
    assert _row(restarted, "sleeper.1")["last_cause"] == "killed by SIGKILL"
    assert _row(restarted, "sleeper.1")["restarts"] == 1
    assert server.stop() == 0


def _row(status: dict, name: str) -> dict:
    return next(row for row in status["processes"] if row["name"] == name)
