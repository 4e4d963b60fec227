"""A stop (SIGTERM, SIGINT) is honoured promptly in every phase of a process's life (issue 11,
item 7): while the manager starts, during a prestart step, while the zygote imports a slow app,
while a worker's lifespan startup runs, during a reload that loads slow code, while a job runs,
with a process that ignores SIGTERM. Each phase's bound is what it has to wait for: nothing
(PROMPTLY), or the stop_timeout / job timeout it declares.

And a planned stop is not an error: no traceback, no `run failed`, no ERROR line.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import Corral

PYTHON = sys.executable
PROMPTLY = 5.0  # seconds: the phase has nothing to wait for
NO_PYC = {"PYTHONDONTWRITEBYTECODE": "1"}  # a module rewritten in the same second is re-read


def _write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip("\n"))


def _wait_file(path: Path, server: Corral, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or server.proc.poll() is not None:
            raise AssertionError(f"{path.name} never appeared\n{server.output}")
        time.sleep(0.05)


def _stops_within(server: Corral, seconds: float, sig: int = signal.SIGTERM) -> None:
    """`sig`, then exit 0 within `seconds`, nothing left, and nothing said as an error."""
    began = time.monotonic()
    assert server.stop(sig, timeout=seconds + 30) == 0, server.output
    took = time.monotonic() - began
    assert took < seconds, f"stopped in {took:.1f}s, not within {seconds}s\n{server.output}"
    assert server.count(r"Traceback|ERROR|error|run failed") == 0, server.output


SLOW_IMPORT = """
    import os
    import time

    if os.path.exists("slow"):
        open("importing", "w").close()
        time.sleep(60)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def job():
        print("job ran")
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_stop_during_a_prestart_step_stops_the_step_and_starts_nothing(corral, tmp_path, sig):
    _write(
        tmp_path,
        {
            "corral.toml": """
                [prestart]
                steps = ["touch step-1; exec sleep 60", "touch step-2"]

                [processes.p]
                command = "sleep 60"
            """
        },
    )
    server = corral("run", cwd=tmp_path)
    _wait_file(tmp_path / "step-1", server)
    _stops_within(server, PROMPTLY, sig)
    assert not (tmp_path / "step-2").exists()
    assert server.count(r"p\.1 started") == 0, server.output
    assert server.count(r"prestart step 1 is stopped: corral is stopping") == 1, server.output


def test_a_stop_while_the_zygote_imports_a_slow_app(corral, tmp_path):
    _write(tmp_path, {"slowapp.py": SLOW_IMPORT, "slow": ""})
    server = corral("run", "slowapp:app", "--port", "0", cwd=tmp_path)
    _wait_file(tmp_path / "importing", server)
    _stops_within(server, PROMPTLY)


def test_a_stop_while_a_worker_runs_its_lifespan_startup(corral, tmp_path):
    _write(
        tmp_path,
        {
            "booting.py": """
                import asyncio

                async def app(scope, receive, send):
                    assert scope["type"] == "lifespan"
                    await receive()
                    open("starting", "w").close()
                    await asyncio.sleep(60)
            """
        },
    )
    server = corral("run", "booting:app", "--port", "0", "--graceful-timeout", "30", cwd=tmp_path)
    _wait_file(tmp_path / "starting", server)
    _stops_within(server, PROMPTLY)


def test_a_stop_during_a_reload_that_loads_slow_code(corral, tmp_path):
    """The new web zygote and the new jobs zygote both import for a minute."""
    _write(
        tmp_path,
        {
            "slowapp.py": SLOW_IMPORT,
            "corral.toml": """
                [web]
                app = "slowapp:app"
                port = 0

                [jobs.j]
                call = "slowapp:job"
                every = "1h"
            """,
        },
    )
    server = corral("run", cwd=tmp_path, env=NO_PYC)
    server.url()
    server.wait_workers(1)
    (tmp_path / "slow").touch()
    server.send(signal.SIGHUP)
    _wait_file(tmp_path / "importing", server)
    _stops_within(server, PROMPTLY)


def test_a_stop_while_a_job_runs_waits_for_it_up_to_its_timeout_and_says_so(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": """
                [jobs.long]
                command = "sh -c 'touch running; exec sleep 60'"
                every = "1h"
                timeout = "3s"

                [jobs.other]
                command = "true"
                every = "1h"
            """
        },
    )
    server = corral("run", cwd=tmp_path)
    server.control_socket()
    subprocess.run(
        [PYTHON, "-m", "corral", "jobs", "run", "long"], cwd=tmp_path, check=True, timeout=10
    )
    _wait_file(tmp_path / "running", server)
    began = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - began < 3 + PROMPTLY
    server.wait_for(r"^corral\s+\| long run failed: killed at its timeout")


def test_a_process_that_ignores_sigterm_is_stopped_at_its_stop_timeout(corral, tmp_path):
    _write(
        tmp_path,
        {
            "corral.toml": """
                [processes.stubborn]
                command = "sh -c 'trap \\"\\" TERM; touch up; while true; do sleep 0.1; done'"
                stop_timeout = "2s"
            """
        },
    )
    server = corral("run", cwd=tmp_path)
    _wait_file(tmp_path / "up", server)
    _stops_within(server, 2 + PROMPTLY)
    server.wait_for(r"stubborn\.1 stopped \(pid \d+, killed by SIGKILL\)")


def test_a_ctrl_c_while_the_manager_starts_stops_it_without_a_traceback(launch, tmp_path):
    """The signal comes before the manager's event loop runs: as the launcher is forked."""
    _write(
        tmp_path,
        {
            "corral.toml": '[processes.p]\ncommand = "sleep 60"\n',
            "start.py": """
                import os
                import signal
                import sys

                import corral
                from corral.manager import supervisor

                fork = supervisor.fork_launcher

                def fork_after_a_ctrl_c(**options):
                    os.kill(os.getpid(), signal.SIGINT)  # as a terminal sends it
                    return fork(**options)

                supervisor.fork_launcher = fork_after_a_ctrl_c
                sys.exit(corral.run())
            """,
        },
    )
    server = launch([PYTHON, "start.py"], cwd=tmp_path)
    assert server.wait(PROMPTLY + 10) == 0, server.output
    assert server.count(r"Traceback|KeyboardInterrupt") == 0, server.output
    assert server.count(r"SIGINT: stopping") == 1, server.output
    assert not server.wait_until_gone(5)


@pytest.mark.parametrize(("count", "said"), [(1, "1 request"), (2, "2 requests")])
def test_requests_cancelled_at_the_graceful_timeout_are_a_warning_not_errors(corral, count, said):
    server = corral("run", "plain:app", "--port", "0", "--graceful-timeout", "2")
    url = server.url()
    server.wait_workers(1)
    with ThreadPoolExecutor(count) as pool:
        slow = [pool.submit(httpx.get, f"{url}/slow?seconds=60", timeout=30) for _ in range(count)]
        server.wait_accepted(int(url.rsplit(":", 1)[1]), count)
        _stops_within(server, 2 + PROMPTLY)
        for request in slow:
            with contextlib.suppress(httpx.HTTPError):
                request.result()
    server.wait_for(rf"^web\.1\s+\| WARNING: {said} still running at --graceful-timeout: cancelled")


def test_a_job_run_still_going_at_the_stops_bound_is_stopped_not_failed(corral, tmp_path):
    """A job without a timeout gets 10 s (JOB_STOP_TIMEOUT) to finish once the stop begins."""
    _write(
        tmp_path,
        {
            "corral.toml": """
                [jobs.long]
                command = "sh -c 'touch running; exec sleep 60'"
                every = "1h"
            """
        },
    )
    server = corral("run", cwd=tmp_path)
    server.control_socket()
    subprocess.run(
        [PYTHON, "-m", "corral", "jobs", "run", "long"], cwd=tmp_path, check=True, timeout=10
    )
    _wait_file(tmp_path / "running", server)
    _stops_within(server, 10 + PROMPTLY)
    server.wait_for(r"^corral\s+\| long run stopped: corral is stopping")


def test_a_declared_program_starts_with_no_signal_ignored_or_blocked(corral, tmp_path):
    """What corral ignores or blocks for itself is not its children's: `stop_signal = "SIGINT"`
    stops a program that leaves SIGINT to its default action."""
    _write(
        tmp_path,
        {
            "corral.toml": """
                [processes.sleeper]
                command = "sleep 60"
                stop_signal = "SIGINT"
            """
        },
    )
    server = corral("run", cwd=tmp_path)
    pid = int(server.wait_for(r"sleeper\.1 started \(pid (\d+)\)")[1])
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    assert (int(status["SigIgn"], 16), int(status["SigBlk"], 16)) == (0, 0), status
    _stops_within(server, PROMPTLY)
    server.wait_for(rf"sleeper\.1 stopped \(pid {pid}, killed by SIGINT\)")


def test_ctrl_c_on_corral_job_stops_the_run_without_a_traceback(corral, tmp_path):
    """`corral job` passes the signal on to its run: a stop, not a KeyboardInterrupt."""
    _write(
        tmp_path,
        {
            "tasks.py": """
                import time

                def slow():
                    print("working", flush=True)
                    time.sleep(60)
            """,
            "corral.toml": '[jobs.slow]\ncall = "tasks:slow"\nevery = "1h"\n',
        },
    )
    run = corral("job", "slow", cwd=tmp_path)
    run.wait_for(r"^slow\s+\| working$")
    began = time.monotonic()
    run.send(signal.SIGINT)
    assert run.wait(PROMPTLY + 10) == 0, run.output
    assert time.monotonic() - began < PROMPTLY
    assert run.count(r"Traceback|KeyboardInterrupt|failed") == 0, run.output
