"""corral's output (issue 11, items 5 and 7): every child's lines as they are printed, the last
lines of a child that is stopped or killed, records kept whole, and a manager whose own output
goes away (a closed pipe, a pipe nobody reads) that still serves and stops.

corral runs here without PYTHONUNBUFFERED in its environment (the test harness sets it for the
manager's own sake), as a user's shell would start it.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import APPS

PYTHON = sys.executable
AS_A_USER_STARTS_IT = {"PYTHONUNBUFFERED": None}


def _write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip("\n"))


TICKER = """
    import os
    import signal
    import sys
    import time

    def stop(*_):
        print("last words")  # no flush: unbuffered output is corral's to ask for
        sys.exit(0)

    def main():
        if os.environ.get("IGNORE_TERM"):
            signal.signal(signal.SIGTERM, lambda *_: print("still here after SIGTERM"))
        else:
            signal.signal(signal.SIGTERM, stop)
        print("unbuffered:", repr(os.environ.get("PYTHONUNBUFFERED")))
        for n in range(10_000):
            print(f"tick {n}")
            time.sleep(0.2)

    if __name__ == "__main__":
        main()
"""


# -- 5. output as it is printed, never lost ------------------------------------------------


@pytest.mark.parametrize("kind", ["command", "call"])
def test_a_python_childs_lines_appear_as_printed_and_its_last_lines_when_stopped(
    corral, tmp_path, kind
):
    declared = f'command = "{PYTHON} ticker.py"' if kind == "command" else 'call = "ticker:main"'
    _write(tmp_path, {"ticker.py": TICKER, "corral.toml": f"[processes.t]\n{declared}\n"})
    server = corral("run", cwd=tmp_path, env=AS_A_USER_STARTS_IT)
    server.wait_for(r"^t\.1\s+\| tick 2$", timeout=5)  # block-buffered: nothing for minutes
    server.wait_for(r"^t\.1\s+\| unbuffered: '1'$")
    assert server.stop() == 0
    said = server.line_index(r"^t\.1\s+\| last words$", timeout=1)
    stopped = server.line_index(r"^corral\s+\| t\.1 stopped")
    assert said < stopped, server.output


def test_the_last_lines_of_a_child_killed_at_its_stop_timeout_are_shown(corral, tmp_path):
    _write(
        tmp_path,
        {
            "ticker.py": TICKER,
            "corral.toml": f"""
                [processes.t]
                command = "{PYTHON} ticker.py"
                stop_timeout = "1s"
                env = {{ IGNORE_TERM = "1" }}
            """,
        },
    )
    server = corral("run", cwd=tmp_path, env=AS_A_USER_STARTS_IT)
    server.wait_for(r"^t\.1\s+\| tick 1$", timeout=5)
    assert server.stop() == 0
    said = server.line_index(r"^t\.1\s+\| still here after SIGTERM$", timeout=1)
    last_tick = max(i for i, line in enumerate(server.lines) if re.search(r"\| tick \d+$", line))
    killed = server.line_index(r"^corral\s+\| t\.1 stopped \(pid \d+, killed by SIGKILL\)")
    assert said < killed and last_tick < killed, server.output


def test_a_users_pythonunbuffered_is_left_as_it_is(corral, tmp_path):
    _write(
        tmp_path,
        {
            "ticker.py": TICKER,
            "corral.toml": f"""
                [env]
                PYTHONUNBUFFERED = ""

                [processes.t]
                command = "{PYTHON} ticker.py"
            """,
        },
    )
    server = corral("run", cwd=tmp_path, env=AS_A_USER_STARTS_IT)
    server.wait_for(r"^corral\s+\| t\.1 started")
    time.sleep(1.5)
    assert server.count(r"\| tick") == 0, server.output  # buffered, as its user asked
    assert server.stop() == 0
    server.wait_for(r"^t\.1\s+\| unbuffered: ''$", timeout=1)  # flushed at its exit, and shown


@pytest.mark.parametrize("kind", ["command", "call"])
def test_a_job_runs_lines_appear_as_printed(corral, tmp_path, kind):
    job = f"command = \"{PYTHON} -c 'import ticker; ticker.main()'\""
    if kind == "call":
        job = 'call = "ticker:main"'
    _write(
        tmp_path,
        {
            "ticker.py": TICKER,
            "corral.toml": f"""
                [jobs.long]
                {job}
                every = "1h"
                timeout = "3s"  # the stop waits for the run this long at most
            """,
        },
    )
    server = corral("run", cwd=tmp_path, env=AS_A_USER_STARTS_IT)
    server.control_socket()
    subprocess.run(
        [PYTHON, "-m", "corral", "jobs", "run", "long"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=10,
    )
    server.wait_for(r"^long\s+\| tick 2$", timeout=5)
    assert server.stop() == 0


# -- 7. a log record is whole --------------------------------------------------------------

CRASHER = """
    import logging
    import os
    import sys
    import time
    import traceback

    logging.basicConfig(format="%(levelname)s: %(message)s")
    DEPTH = 40

    def deep(n):
        if n == 0:
            raise ValueError(f"boom from {os.environ['CORRAL_REPLICA']}")
        deeper(n - 1)  # two functions in turn: Python shortens a frame repeated in a row

    def deeper(n):
        deep(n)

    def main():
        for round in range(int(os.environ["ROUNDS"])):
            try:
                deep(DEPTH)
            except ValueError:
                if round % 2:
                    logging.exception("round %d failed", round)  # one write: message + traceback
                else:
                    print(f"round {round} failed, line by line:")
                    traceback.print_exc(file=sys.stdout)  # one write per line
            print(f"round {round} over")
        time.sleep(60)
"""


def _crashers(tmp_path: Path, rounds: int) -> None:
    _write(
        tmp_path,
        {
            "crasher.py": CRASHER,
            "corral.toml": f"""
                [processes.c]
                call = "crasher:main"
                replicas = 3
                env = {{ ROUNDS = "{rounds}" }}
            """,
        },
    )


def test_a_traceback_stays_together_when_several_processes_write_at_once(corral, tmp_path):
    rounds = 30
    _crashers(tmp_path, rounds)
    server = corral("run", cwd=tmp_path)
    for replica in (1, 2, 3):
        server.wait_for(rf"^c\.{replica}\s+\| round {rounds - 1} over$", timeout=30)
    lines = list(server.lines)
    assert server.stop() == 0
    # Each traceback: from its first line to its `ValueError` line, all of one replica's.
    tracebacks = 0
    for index, line in enumerate(lines):
        start = re.match(r"^(c\.\d)\s+\| (ERROR: round \d+ failed|round \d+ failed, line by)", line)
        if not start:
            continue
        name = start[1]
        end = next(i for i in range(index, len(lines)) if "ValueError: boom" in lines[i])
        block = lines[index : end + 1]
        assert all(entry.startswith(f"{name} ") for entry in block), "\n".join(block)
        assert len(block) >= 2 + 2 * 40, "\n".join(block)  # the frames are all there
        tracebacks += 1
    assert tracebacks == 3 * rounds, server.output


def test_a_traceback_is_one_json_record_with_its_level(corral, tmp_path):
    rounds = 4
    _crashers(tmp_path, rounds)
    server = corral("run", "--log-format", "json", cwd=tmp_path)
    for replica in (1, 2, 3):
        server.wait_for(rf'"process": "c\.{replica}".*"message": "round {rounds - 1} over"')
    assert server.stop() == 0
    records = [json.loads(line) for line in server.lines]
    failed = [r for r in records if re.match(r"round \d+ failed", r["message"])]
    assert len(failed) == 3 * rounds, server.output
    for record in failed:
        message = record["message"]
        assert message.count("\n") > 80 and message.endswith(
            "ValueError: boom from " + (record["process"].split(".")[1])
        ), message
        logged = ", line by line" not in message
        assert record["level"] == ("error" if logged else "info"), record
    assert not [r for r in records if r["message"].startswith(("  File", "Traceback"))]


def test_a_managers_message_of_several_lines_is_one_record_with_its_level(tmp_path):
    """As the manager reports a bug: `error: ...` and the traceback under it."""
    from corral.manager.output import Output

    output = Output(json_format=True)
    output.open_files(str(tmp_path / "corral.log"), None)
    output.say("error: a bug; its traceback:\nTraceback (most recent call last):\n  File x")
    output.say("plain")
    first, second = (
        json.loads(line) for line in (tmp_path / "corral.log").read_text().split("\n")[:2]
    )
    assert (first["level"], first["message"]) == (
        "error",
        "a bug; its traceback:\nTraceback (most recent call last):\n  File x",
    )
    assert (second["level"], second["message"]) == ("info", "plain")


# -- 7. a stop is honoured whatever becomes of corral's own output ---------------------------


def _manager(cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PYTHON, "-m", "corral", "run", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _end(manager: subprocess.Popen[bytes]) -> None:
    """Kill what is left of `manager`'s tree (the test failed) and wait for it."""
    try:
        root = psutil.Process(manager.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    manager.wait(10)


def test_a_manager_whose_output_pipe_was_closed_stops_on_sigterm(tmp_path):
    """`corral run | head -3`: head exits, corral's next write gets EPIPE."""
    _write(tmp_path, {"corral.toml": '[processes.x]\ncommand = "sleep 60"\n'})
    manager = _manager(tmp_path)
    try:
        assert manager.stdout is not None
        manager.stdout.readline()
        manager.stdout.readline()
        manager.stdout.close()
        manager.send_signal(signal.SIGTERM)
        assert manager.wait(15) == 0
    finally:
        _end(manager)


def _requests(url: str, count: int) -> list[int]:
    with httpx.Client(timeout=5) as client:
        return [client.get(url).status_code for _ in range(count)]


def test_workers_serve_on_when_corrals_output_is_closed(tmp_path):
    """Their access lines used to go straight to that output, and get EPIPE there."""
    manager = _manager(APPS, "plain:app", "--port", "0", "--timeout", "2")
    try:
        assert manager.stdout is not None
        url = ""
        while not url:
            found = re.search(rb"listening on (http://\S+)", manager.stdout.readline())
            url = found[1].decode() if found else ""
        manager.stdout.close()
        pids = {httpx.get(url, timeout=5).text.split()[1]}
        deadline = time.monotonic() + 5  # past --timeout: a worker without heartbeat is killed
        while time.monotonic() < deadline:
            assert _requests(url, 20) == [200] * 20
            pids.add(httpx.get(url, timeout=5).text.split()[1])
        assert len(pids) == 1, f"the worker was replaced: {pids}"
        manager.send_signal(signal.SIGTERM)
        assert manager.wait(15) == 0
    finally:
        _end(manager)


def test_a_manager_whose_output_nobody_reads_serves_and_stops(tmp_path, free_port):
    """`corral run | less`, left on its first page: the pipe fills, and nobody empties it."""
    _write(
        tmp_path,
        {
            "chatty.py": """
                import time
                line = "x" * 200
                for n in range(100_000):
                    print(n, line, flush=True)
                open("done", "w").close()
                time.sleep(60)
            """,
            "corral.toml": f"""
                [web]
                app = "plain:app"
                port = {free_port}

                [processes.chatty]
                command = "{PYTHON} chatty.py"
            """,
            "plain.py": (APPS / "plain.py").read_text(),
        },
    )
    manager = _manager(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "done").exists():  # 20 MB written: far past any pipe's room
            assert time.monotonic() < deadline, "chatty was never done: corral stopped reading"
            time.sleep(0.1)
        status = subprocess.run(
            [PYTHON, "-m", "corral", "status", "--json"],
            cwd=tmp_path,
            capture_output=True,
            timeout=10,
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["corral"]["pid"] == manager.pid
        url = f"http://127.0.0.1:{free_port}/"
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: _requests(url, 10), range(4)))
        assert answers == [[200] * 10] * 4
        manager.send_signal(signal.SIGTERM)
        assert manager.wait(20) == 0
    finally:
        _end(manager)
