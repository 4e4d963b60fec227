"""Log files (issue 11, item 6): `--log-file` (corral's whole output) and `--access-logfile`
(the access lines), `-` for stdout, reopened on SIGUSR1 the way logrotate rotates them: the
file is renamed, USR1 is sent, and the lines go on in a new file, none lost and none split.
"""

from __future__ import annotations

import re
import signal
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from conftest import APPS

PYTHON = sys.executable
ACCESS = re.compile(r'^web\.1\s+\| 127\.0\.0\.1:\d+ - "GET /\?n=(\d+) HTTP/1\.1" 200 \d+\.\dms$')
COUNTED = re.compile(r"^counter\.1\s+\| count (\d+)$")

COUNTER = """
    import itertools
    import sys
    import time

    for n in itertools.count():
        sys.stdout.write(f"count {n}\\n")  # one write: a stop cannot cut it (print makes four)
        time.sleep(0.002)
"""


def _project(directory: Path, port: int) -> None:
    (directory / "plain.py").write_text((APPS / "plain.py").read_text())
    (directory / "counter.py").write_text(textwrap.dedent(COUNTER))
    (directory / "corral.toml").write_text(
        textwrap.dedent(f"""
            [web]
            app = "plain:app"
            port = {port}

            [processes.counter]
            command = "{PYTHON} counter.py"
        """)
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_in(path: Path, pattern: str, timeout: float = 20) -> None:
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while not any(regex.search(line) for line in _lines(path)):
        assert time.monotonic() < deadline, f"no {pattern!r} in {path}:\n{path.read_text()}"
        time.sleep(0.05)


class Load:
    """Requests `/?n=0`, `/?n=1`... one after another until stopped; remembers which were 200."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answered: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            n = 0
            while not self._stop.is_set():
                if client.get(self.url, params={"n": n}).status_code == 200:
                    self.answered.append(n)
                n += 1

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(10)
        return self.answered


def test_log_file_takes_corrals_whole_output_and_stdout_nothing(corral, tmp_path, free_port):
    _project(tmp_path, free_port)
    log = tmp_path / "corral.log"
    server = corral("run", "--log-file", str(log), cwd=tmp_path)
    _wait_in(log, r"^corral\s+\| listening on http://127\.0\.0\.1:")
    assert httpx.get(f"http://127.0.0.1:{free_port}/", params={"n": 7}).status_code == 200
    _wait_in(log, r'^web\.1\s+\| 127\.0\.0\.1:\d+ - "GET /\?n=7 HTTP/1\.1" 200')
    _wait_in(log, r"^counter\.1\s+\| count \d+$")
    assert server.stop() == 0
    assert _lines(log)[-1] == f"{'corral':<10} | stopped"
    assert server.output == "", server.output


def test_access_logfile_takes_the_access_lines_and_dash_is_stdout(corral, tmp_path, free_port):
    _project(tmp_path, free_port)
    log, access = tmp_path / "corral.log", tmp_path / "access.log"
    server = corral("run", "--log-file", str(log), "--access-logfile", str(access), cwd=tmp_path)
    _wait_in(log, r"listening on")
    assert httpx.get(f"http://127.0.0.1:{free_port}/", params={"n": 1}).status_code == 200
    _wait_in(access, r"GET /\?n=1 ")
    assert server.stop() == 0
    assert all(ACCESS.match(line) for line in _lines(access)), _lines(access)
    assert not [line for line in _lines(log) if "GET /" in line]

    (tmp_path / "corral.log").unlink()
    server = corral("run", "--log-file", str(log), "--access-logfile", "-", cwd=tmp_path)
    _wait_in(log, r"listening on")
    assert httpx.get(f"http://127.0.0.1:{free_port}/", params={"n": 2}).status_code == 200
    server.wait_for(r'^web\.1\s+\| 127\.0\.0\.1:\d+ - "GET /\?n=2 HTTP/1\.1" 200')
    assert server.stop() == 0
    assert all(ACCESS.match(line) for line in server.lines), server.output  # nothing else
    assert not [line for line in _lines(log) if "GET /" in line]


def test_sigusr1_after_a_rename_goes_on_in_new_files_losing_and_splitting_no_line(
    corral, tmp_path, free_port
):
    """As logrotate does it (without copytruncate), under a steady flow of both kinds of line."""
    _project(tmp_path, free_port)
    log, access = tmp_path / "corral.log", tmp_path / "access.log"
    server = corral("run", "--log-file", str(log), "--access-logfile", str(access), cwd=tmp_path)
    _wait_in(log, r"listening on")
    load = Load(f"http://127.0.0.1:{free_port}/")
    _wait_in(access, r"GET /\?n=50 ")
    for path in (log, access):
        path.rename(path.with_suffix(".log.1"))
    server.send(signal.SIGUSR1)
    _wait_in(log, r"^corral\s+\| SIGUSR1: log files reopened \(.*corral\.log, .*access\.log\)")
    _wait_in(access, r"GET /")
    _wait_in(log, r"^counter\.1\s+\| count")
    time.sleep(0.5)
    answered = load.stop()
    assert server.stop() == 0

    old_log, old_access = _lines(tmp_path / "corral.log.1"), _lines(tmp_path / "access.log.1")
    new_log, new_access = _lines(log), _lines(access)
    assert old_log and old_access and new_log and new_access
    assert not [line for line in old_log if "reopened" in line]
    # Every access line whole, every request once, in one file or the other.
    for line in old_access + new_access:
        assert ACCESS.match(line), f"not a whole access line: {line!r}"
    logged = [int(ACCESS.match(line)[1]) for line in old_access + new_access]
    assert sorted(logged) == answered, (len(logged), len(answered))
    # The counter's lines: each number once, in order, across the two files.
    lines = [line for line in old_log + new_log if line.startswith("counter.1")]
    assert [line for line in lines if not COUNTED.match(line)] == []
    counted = [COUNTED.match(line) for line in lines]
    numbers = [int(match[1]) for match in counted if match]
    assert numbers == list(range(len(numbers))), Counter(numbers).most_common(3)
    assert new_log[-1] == f"{'corral':<10} | stopped"


def test_a_log_file_that_cannot_be_opened_is_a_usage_error(corral, tmp_path):
    (tmp_path / "corral.toml").write_text('[processes.p]\ncommand = "sleep 60"\n')
    missing = tmp_path / "no" / "such" / "corral.log"
    server = corral("run", "--log-file", str(missing), cwd=tmp_path)
    assert server.wait(15) == 2
    refusal = f"error: --log-file: cannot create '{missing}': no such folder '{missing.parent}'"
    assert server.count(re.escape(refusal)) == 1, server.output
    assert server.count(r"p\.1 started") == 0
