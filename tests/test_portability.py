"""What the design promises beyond Linux's conveniences, tested on Linux: libc is loaded once,
not searched for in each child; a zygote's end is seen without a pidfd; and what a SIGKILLed
manager leaves in the temp folder is removed by the next one."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.manager.exit_watch import HAS_PIDFD, watch_exit

LIBC_USE = """
import ctypes
import json
import os
import sys

spawned = []
sys.addaudithook(
    lambda event, args: event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.system")
    and spawned.append(f"{event} {args[0]!r}")
)

from corral import posix

for _ in range(3):  # as each forked child does
    posix.die_with_parent(os.getppid())
asked = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(asked), 0, 0, 0)  # PR_GET_PDEATHSIG
print(json.dumps({"spawned": spawned, "asked": asked.value}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_parent_death_signal_is_asked_for_without_starting_a_process():
    """ctypes.util.find_library("c") runs `ldconfig -p`: once per forked child, it did."""
    done = subprocess.run(
        [sys.executable, "-c", LIBC_USE], capture_output=True, text=True, timeout=30, check=True
    )
    assert json.loads(done.stdout) == {"spawned": [], "asked": signal.SIGTERM}


def _process_not_ours() -> int:
    """The pid of a sleeping process that is not our child (its parent, a shell, has exited)."""
    shell = subprocess.run(
        ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return int(shell.stdout)


WAYS = pytest.mark.parametrize(
    "pidfd",
    [pytest.param(True, marks=pytest.mark.skipif(not HAS_PIDFD, reason="no pidfd")), False],
    ids=["pidfd", "polling"],
)


@WAYS
def test_the_end_of_a_process_that_is_not_our_child_is_seen_with_or_without_a_pidfd(pidfd):
    pid = _process_not_ours()

    async def watch() -> tuple[bool, float]:
        gone = asyncio.Event()
        watch_exit(pid, gone.set, pidfd=pidfd)
        await asyncio.sleep(0.5)
        early = gone.is_set()
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(gone.wait(), 5)
        return early, time.monotonic() - killed_at

    early, took = asyncio.run(watch())
    assert not early, "seen gone while it was running"
    assert took < 1.0, f"seen gone {took:.2f}s after it was killed"


@WAYS
def test_a_process_already_gone_is_seen_gone_at_once(pidfd):
    finished = subprocess.Popen(["true"])
    finished.wait(10)  # exited and reaped: its pid names no process
    seen = []

    async def watch() -> None:
        watch_exit(finished.pid, lambda: seen.append(finished.pid), pidfd=pidfd)

    asyncio.run(watch())
    assert seen == [finished.pid]


def _metrics_dir(temp: Path, pid: int) -> Path:
    (found,) = temp.glob(f"corral-metrics-{pid}-*")
    return found


def test_a_killed_managers_metrics_directory_is_removed_by_the_next_and_a_live_ones_kept(
    corral, tmp_path
):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp)}
    running = corral("run", "plain:app", "--port", "0", env=env)
    killed = corral("run", "plain:app", "--port", "0", env=env)
    for server in (running, killed):
        server.url()
    kept, left = _metrics_dir(temp, running.pid), _metrics_dir(temp, killed.pid)
    killed.send(signal.SIGKILL)
    assert killed.wait(10) == -signal.SIGKILL
    assert not killed.wait_until_gone(10)
    assert left.is_dir()  # the manager could not remove it

    following = corral("run", "plain:app", "--port", "0", env=env)
    following.url()
    assert not left.exists()
    assert kept.is_dir()  # its manager runs
    assert sorted(temp.iterdir()) == sorted([kept, _metrics_dir(temp, following.pid)])
    assert following.stop() == 0 and running.stop() == 0
    assert list(temp.iterdir()) == []
