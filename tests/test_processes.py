"""[processes.NAME]: callables and commands run as supervised replicas beside the web group.

What a replica runs and sees (its prefixed output, CORRAL_REPLICA, env, cwd), what happens when
it exits (restart policies, backoff, a SIGKILL), how it is stopped (stop_signal, stop_timeout),
the order of a whole system's stop, and no orphan when the manager is SIGKILLed.

Each test writes its corral.toml and its programs under tmp_path and runs corral there.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import APPS, Corral

PYTHON = sys.executable


# -- helpers -------------------------------------------------------------------------


def _write(directory: Path, files: dict[str, str]) -> None:
    """Write each file (its text dedented), creating folders as needed."""
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


def _indices(server: Corral, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return [i for i, line in enumerate(server.lines) if regex.search(line)]


def _started_pid(server: Corral, name: str, after: int = 0) -> int:
    escaped = re.escape(name)
    return int(server.wait_for(rf"^corral\s+\| {escaped} started \(pid (\d+)\)", after=after)[1])


# -- what a replica runs, and what it sees ------------------------------------------------


def test_sync_async_and_command_processes_run_with_their_output_prefixed_by_name(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": f"""
                [processes.sync]
                call = "tasks:sync_main"

                [processes.async]
                call = "tasks:async_main"

                [processes.shell]
                command = "sh -c 'echo shell says hi; exec sleep 60'"

                [processes.script]
                command = "{PYTHON} script.py --flag 'two words'"
            """,
            "tasks.py": """
                import asyncio
                import sys
                import time

                def sync_main():
                    print("sync says hi", flush=True)
                    try:
                        time.sleep(60)
                    finally:
                        print("sync finally", flush=True)

                async def async_main():
                    await asyncio.sleep(0)
                    print("async says hi from its event loop", file=sys.stderr, flush=True)
                    try:
                        await asyncio.sleep(60)
                    except asyncio.CancelledError:
                        print("async cancelled", flush=True)
                        raise
            """,
            "script.py": """
                import sys
                import time

                print("script says hi", sys.argv[1:], flush=True)
                time.sleep(60)
            """,
        },
    )

    server = corral("run", cwd=tmp_path)

    server.wait_for(r"^sync\.1\s+\| sync says hi$")
    server.wait_for(r"^async\.1\s+\| async says hi from its event loop$")  # stderr too
    server.wait_for(r"^shell\.1\s+\| shell says hi$")
    server.wait_for(r"^script\.1\s+\| script says hi \['--flag', 'two words'\]$")
    assert server.stop() == 0
    # SIGTERM asks a callable to stop: a sync one's `finally` runs, an async one is cancelled.
    assert server.count(r"^sync\.1\s+\| sync finally$") == 1, server.output
    assert server.count(r"^async\.1\s+\| async cancelled$") == 1, server.output
    assert server.count(r"\| sync\.1 stopped \(pid \d+, exit code 0\)") == 1, server.output
    assert server.count(r"\| async\.1 stopped \(pid \d+, exit code 0\)") == 1, server.output
    assert server.count(r"shell\.1 stopped") == 1, server.output
    assert server.count(r"script\.1 stopped") == 1, server.output


def test_replicas_are_named_name_1_and_name_2_and_each_sees_its_corral_replica(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": """
                [processes.consumer]
                call = "tasks:main"
                replicas = 2

                [processes.shell]
                command = "sh -c 'echo replica $CORRAL_REPLICA; exec sleep 60'"
                replicas = 2
            """,
            "tasks.py": """
                import os
                import time

                def main():
                    print("replica", os.environ["CORRAL_REPLICA"], flush=True)
                    time.sleep(60)
            """,
        },
    )

    server = corral("run", cwd=tmp_path)

    for name in ("consumer", "shell"):
        for index in (1, 2):
            server.wait_for(rf"^{name}\.{index}\s+\| replica {index}$")
            server.wait_for(rf"^corral\s+\| {name}\.{index} started \(pid \d+\)$")
    assert server.stop() == 0
    assert server.count(r"(consumer|shell)\.3") == 0, server.output
    assert server.count(r"^consumer\.\d\s+\| replica") == 2, server.output


def test_env_file_then_env_table_then_the_processs_own_env_reach_its_replicas(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": """
                env_file = "app.env"

                [env]
                OVERRIDDEN = "by-env-table"
                SHARED = "from-env-table"

                [processes.pycall]
                call = "tasks:main"
                env = { SHARED = "from-process", OWN = "pycall-only" }

                [processes.shell]
                command = "sh -c 'echo $FROM_FILE $OVERRIDDEN $SHARED $OWN; exec sleep 60'"
                env = { OWN = "shell-only" }
            """,
            "app.env": """
                FROM_FILE=from-env-file
                OVERRIDDEN=by-env-file
            """,
            "tasks.py": """
                import os
                import time

                def main():
                    names = ("FROM_FILE", "OVERRIDDEN", "SHARED", "OWN")
                    print(*(os.environ.get(name, "-") for name in names), flush=True)
                    time.sleep(60)
            """,
        },
    )

    server = corral("run", cwd=tmp_path)

    server.wait_for(r"^pycall\.1\s+\| from-env-file by-env-table from-process pycall-only$")
    server.wait_for(r"^shell\.1\s+\| from-env-file by-env-table from-env-table shell-only$")
    assert server.stop() == 0


def test_cwd_is_where_a_replica_runs_and_imports_from(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": """
                [processes.pycall]
                call = "where:main"
                cwd = "sub"

                [processes.shell]
                command = "sh -c 'echo in $(pwd -P); exec sleep 60'"
                cwd = "sub"
            """,
            "sub/where.py": """
                import os
                import time

                def main():
                    print("in", os.getcwd(), flush=True)
                    time.sleep(60)
            """,
        },
    )
    sub = re.escape(str((tmp_path / "sub").resolve()))

    server = corral("run", cwd=tmp_path)

    server.wait_for(rf"^pycall\.1\s+\| in {sub}$")
    server.wait_for(rf"^shell\.1\s+\| in {sub}$")
    assert server.stop() == 0


# -- when a replica exits: restart policies and backoff ------------------------------------

FIRST_RUN_EXITS = """
from pathlib import Path
import sys
import time

def main():
    runs = Path("runs")
    runs.open("a").write("x")
    run = len(runs.read_text())
    print("run", run, flush=True)
    if run == 1:
        sys.exit(CODE)
    time.sleep(60)
"""


@pytest.mark.parametrize(
    ("restart", "code", "restarted"),
    [
        pytest.param("always", 1, True, id="always_after_a_crash"),
        pytest.param("always", 0, True, id="always_after_a_clean_exit"),
        pytest.param("on-failure", 1, True, id="on-failure_after_exit_1"),
        pytest.param("on-failure", 0, False, id="on-failure_not_after_exit_0"),
        pytest.param("never", 1, False, id="never_after_a_crash"),
        pytest.param("never", 0, False, id="never_after_a_clean_exit"),
    ],
)
def test_restart_policy_decides_whether_an_exited_replica_starts_again(
    corral, tmp_path, restart, code, restarted
):
    _write(
        tmp_path,
        {
            "corral.toml": f"""
                [processes.worker]
                call = "tasks:main"
                restart = "{restart}"
            """,
            "tasks.py": FIRST_RUN_EXITS.replace("CODE", str(code)),
        },
    )

    server = corral("run", cwd=tmp_path)

    first = _started_pid(server, "worker.1")
    server.wait_for(rf"worker\.1 exited \(pid {first}, exit code {code}\)")
    if restarted:
        server.wait_for(r"^worker\.1\s+\| run 2$")
        pids = [int(pid) for pid in re.findall(r"worker\.1 started \(pid (\d+)\)", server.output)]
        assert len(pids) == 2 and pids[0] == first and pids[1] != first, server.output
        assert server.count(r"is not restarted") == 0, server.output
    else:
        server.wait_for(rf"worker\.1 is not restarted \(restart = '{restart}'\)")
        (row,) = [row for row in server.status()["processes"] if row["name"] == "worker.1"]
        given_up = "failed" if code != 0 else "stopped"  # a crash not restarted has failed
        assert (row["state"], row["pid"]) == (given_up, None), row
    assert server.stop() == 0
    if not restarted:  # not until the very end of the run
        assert server.count(r"worker\.1 started") == 1, server.output
        assert server.count(r"run 2") == 0, server.output


def test_a_replica_that_keeps_dying_is_restarted_with_a_doubling_delay(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": """
                [processes.dying]
                command = "sh -c 'echo dying now; exit 3'"
            """
        },
    )

    server = corral("run", cwd=tmp_path)

    server.wait_for(r"dying\.1 restarts in 2s \(it keeps exiting\)", timeout=20)
    mark = server.mark()
    # The restart waits its 2 s: nothing starts in the first second of it.
    time.sleep(1.0)
    assert not any("dying.1 started" in line for line in server.lines[mark:]), server.output
    server.wait_for(r"dying\.1 started", after=mark, timeout=10)
    delays = re.findall(r"dying\.1 restarts in ([\d.]+)s \(it keeps exiting\)", server.output)
    # The first death restarts at once (no delay logged), then 0.5 s, 1 s, 2 s...
    assert delays[:3] == ["0.5", "1", "2"], server.output
    assert server.count(r"dying\.1 exited \(pid \d+, exit code 3\)") >= 4, server.output
    assert server.stop() == 0


def test_a_replica_killed_by_sigkill_is_restarted_under_the_same_name(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": """
                [processes.consumer]
                call = "tasks:main"
                replicas = 2
            """,
            "tasks.py": """
                import os
                import time

                def main():
                    print("replica", os.environ["CORRAL_REPLICA"], "pid", os.getpid(), flush=True)
                    time.sleep(60)
            """,
        },
    )

    server = corral("run", cwd=tmp_path)
    server.wait_for(r"^consumer\.1\s+\| replica 1 pid")
    old = int(server.wait_for(r"^consumer\.2\s+\| replica 2 pid (\d+)$")[1])
    assert old == _started_pid(server, "consumer.2")
    mark = server.mark()

    os.kill(old, signal.SIGKILL)

    server.wait_for(rf"consumer\.2 exited \(pid {old}, killed by SIGKILL\)", after=mark)
    new = _started_pid(server, "consumer.2", after=mark)
    assert new != old
    server.wait_for(rf"^consumer\.2\s+\| replica 2 pid {new}$", after=mark)
    assert server.count(r"consumer\.1 (exited|started)") == 1, server.output  # untouched
    assert server.stop() == 0


# -- how a replica is stopped ----------------------------------------------------------

POLITE = """
import signal
import sys
import time

def on_signal(number, frame):
    print("received", signal.Signals(number).name, flush=True)
    sys.exit(0)

for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGHUP"):
    signal.signal(getattr(signal, name), on_signal)
print("handlers installed", flush=True)
while True:
    time.sleep(0.1)
"""


@pytest.mark.parametrize(
    ("stop_signal", "received"),
    [("SIGINT", "SIGINT"), ("usr1", "SIGUSR1"), ("SIGTERM", "SIGTERM")],
)
def test_stop_signal_is_the_signal_a_replica_receives_on_stop(
    corral, tmp_path, stop_signal, received
):
    _write(
        tmp_path,
        {
            "corral.toml": f"""
                [processes.polite]
                command = "{PYTHON} polite.py"
                stop_signal = "{stop_signal}"
            """,
            "polite.py": POLITE,
        },
    )

    server = corral("run", cwd=tmp_path)
    server.wait_for(r"^polite\.1\s+\| handlers installed$")

    assert server.stop() == 0
    assert re.findall(r"^polite\.1\s+\| received (\w+)$", server.output, re.M) == [received]
    assert server.count(r"polite\.1 stopped \(pid \d+, exit code 0\)") == 1, server.output


def test_a_replica_ignoring_its_stop_signal_is_killed_after_stop_timeout(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": f"""
                [processes.stubborn]
                command = "{PYTHON} stubborn.py"
                stop_timeout = "1500ms"
            """,
            "stubborn.py": """
                import signal
                import time

                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                print("ignoring SIGTERM", flush=True)
                time.sleep(60)
            """,
        },
    )

    server = corral("run", cwd=tmp_path)
    pid = _started_pid(server, "stubborn.1")
    server.wait_for(r"^stubborn\.1\s+\| ignoring SIGTERM$")

    asked = time.monotonic()
    assert server.stop() == 0
    took = time.monotonic() - asked

    assert server.count(rf"stubborn\.1 stopped \(pid {pid}, killed by SIGKILL\)") == 1, (
        server.output
    )
    assert 1.4 <= took < 8, f"stopped after {took:.2f}s, stop_timeout is 1.5s"


def test_a_process_group_alone_runs_and_stops_with_exit_code_0(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": """
                [processes.alone]
                call = "tasks:main"
            """,
            "tasks.py": """
                import time

                def main():
                    print("running alone", flush=True)
                    time.sleep(60)
            """,
        },
    )

    server = corral("run", cwd=tmp_path)
    server.wait_for(r"^alone\.1\s+\| running alone$")

    assert server.stop() == 0
    assert server.count(r"alone\.1 stopped") == 1, server.output
    assert server.lines[-1].endswith("| stopped"), server.output
    assert server.count(r"web\.|listening on") == 0, server.output


# -- the whole system's stop order -----------------------------------------------------------


def test_stop_order_is_web_workers_then_processes_then_running_jobs(corral, tmp_path):
    shutil.copy(APPS / "plain.py", tmp_path / "plain.py")
    _write(
        tmp_path,
        {
            "corral.toml": """
                [web]
                app = "plain:app"
                port = 0
                workers = 2

                [processes.worker]
                call = "tasks:worker"
                replicas = 2

                [jobs.x]
                call = "tasks:job"
                every = "1s"
                timeout = "10s"
            """,
            "tasks.py": """
                import signal
                import sys
                import time

                def worker():
                    def on_term(number, frame):
                        print("got SIGTERM", flush=True)
                        sys.exit(0)

                    signal.signal(signal.SIGTERM, on_term)
                    print("worker ready", flush=True)
                    while True:
                        time.sleep(0.1)

                def job():
                    print("job run begins", flush=True)
                    time.sleep(4)
                    print("job run ends", flush=True)
            """,
        },
    )

    server = corral("run", cwd=tmp_path)
    server.url()
    server.wait_workers(2)
    server.wait_for(r"^worker\.1\s+\| worker ready$")
    server.wait_for(r"^worker\.2\s+\| worker ready$")
    server.wait_for(r"^x\s+\| job run begins$")
    mark = server.mark()  # the run has just begun: it has about 4 s to go

    assert server.stop() == 0

    def after_stop(pattern: str) -> list[int]:
        return [i for i in _indices(server, pattern) if i >= mark]

    web_stopped = after_stop(r"^corral\s+\| web\.\d+ stopped")
    worker_signalled = after_stop(r"^worker\.\d+\s+\| got SIGTERM$")
    worker_stopped = after_stop(r"^corral\s+\| worker\.\d+ stopped")
    job_ended = after_stop(r"^x\s+\| job run ends$")
    assert (len(web_stopped), len(worker_signalled), len(worker_stopped)) == (2, 2, 2), (
        server.output
    )
    assert len(job_ended) == 1, server.output  # the running job was let finish, not killed
    assert max(web_stopped) < min(worker_signalled + worker_stopped), server.output
    assert max(worker_stopped) < job_ended[0], server.output
    assert server.count(r"x run failed") == 0, server.output


# -- no orphans ------------------------------------------------------------------------------


def test_replicas_exit_within_seconds_when_the_manager_is_sigkilled(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": f"""
                [processes.sync]
                call = "tasks:sync_main"
                replicas = 2

                [processes.async]
                call = "tasks:async_main"

                [processes.command]
                command = "{PYTHON} -u sleeper.py"
            """,
            "tasks.py": """
                import asyncio
                import time

                def sync_main():
                    print("up", flush=True)
                    time.sleep(60)

                async def async_main():
                    print("up", flush=True)
                    await asyncio.sleep(60)
            """,
            "sleeper.py": """
                import time

                print("up", flush=True)
                time.sleep(60)
            """,
        },
    )

    server = corral("run", cwd=tmp_path)
    for name in ("sync.1", "sync.2", "async.1", "command.1"):
        server.wait_for(rf"^{re.escape(name)}\s+\| up$")
    replicas = [
        p for p in server.alive() if p.pid != server.pid and p.cmdline()[:1] != ["corral: launcher"]
    ]
    assert len(replicas) == 4, (replicas, server.output)

    server.send(signal.SIGKILL)

    assert server.wait(10) == -signal.SIGKILL
    left = server.wait_until_gone(5)
    assert not left, f"replicas outlived the manager: {left}\n{server.output}"
