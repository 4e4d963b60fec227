"""Several corrals in one directory: each manager has its own control socket; the verbs talk to
the one running there, or list them all and ask which; killed managers' sockets are removed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import APPS, Corral
from corral.control.address import control_path, control_paths
from corral.control.discovery import running_in
from corral.control.token import token_path


@pytest.fixture(autouse=True)
def _no_control_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CORRAL_CONTROL", raising=False)
    monkeypatch.delenv("CORRAL_TOKEN", raising=False)
    yield


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("CORRAL_CONTROL", "CORRAL_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        cwd=cwd,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _status(cwd: Path, *args: str) -> dict:
    done = _cli(cwd, "status", "--json", *args)
    assert (done.returncode, done.stderr) == (0, ""), done
    return json.loads(done.stdout)


def _serve(corral, directory: Path, app: str) -> tuple[Corral, str]:
    """`corral run APP --port 0` in `directory`, once it listens; and its URL."""
    shutil.copy(APPS / "plain.py", directory / f"{app}.py")
    server = corral("run", f"{app}:app", "--port", "0", cwd=directory)
    return server, server.url()


def _socket_of(server: Corral) -> Path:
    return Path(server.wait_for(r"control socket: (\S+)$")[1])


def test_two_corrals_run_from_one_directory_and_a_verb_lists_them_until_one_is_chosen(
    corral, tmp_path
):
    api, api_url = _serve(corral, tmp_path, "api")
    admin, admin_url = _serve(corral, tmp_path, "admin")
    sockets = {api.pid: _socket_of(api), admin.pid: _socket_of(admin)}
    assert sockets == {pid: control_path(tmp_path, pid) for pid in (api.pid, admin.pid)}

    ambiguous = _cli(tmp_path, "status")
    assert (ambiguous.returncode, ambiguous.stdout) == (2, ""), ambiguous
    lines = ambiguous.stderr.splitlines()
    assert lines[0] == (
        f"corral: error: 2 corrals are running in {tmp_path}; "
        "pick one with --control PATH (or CORRAL_CONTROL=PATH):"
    )
    assert re.fullmatch(r"PID +APP +CONFIG +LISTENING +CONTROL", lines[1]), lines
    for server, app, url in ((api, "api:app", api_url), (admin, "admin:app", admin_url)):
        row = rf"{server.pid} +{app} +- +{re.escape(url)} +{re.escape(str(sockets[server.pid]))}"
        assert any(re.fullmatch(row, line) for line in lines[2:]), (row, lines)
    assert len(lines) == 4, lines

    for server in (api, admin):
        chosen = _status(tmp_path, "--control", str(sockets[server.pid]))
        assert chosen["corral"]["pid"] == server.pid

    assert api.stop() == 0
    assert not sockets[api.pid].exists()
    alone = _status(tmp_path)  # one corral left here: no flag needed again
    assert (alone["corral"]["pid"], alone["corral"]["app"]) == (admin.pid, "admin:app")
    assert alone["corral"]["listening"] == [admin_url]
    assert admin.stop() == 0


def test_a_killed_managers_socket_and_token_are_removed_by_the_next_corral_or_a_verb(
    corral, tmp_path
):
    first, _ = _serve(corral, tmp_path, "api")
    left = _socket_of(first)
    token_path(left).write_text("left-behind\n")
    first.send(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    assert not first.wait_until_gone(10)
    assert left.exists()  # nobody removed it: the manager was killed

    second, _ = _serve(corral, tmp_path, "api")
    assert not left.exists() and not token_path(left).exists()
    assert _status(tmp_path)["corral"]["pid"] == second.pid  # one corral runs here again

    second.send(signal.SIGKILL)
    assert second.wait(10) == -signal.SIGKILL
    assert not second.wait_until_gone(10)
    refused = _cli(tmp_path, "status")
    assert refused.returncode == 1, refused
    assert "no corral is running here" in refused.stderr, refused
    assert control_paths(tmp_path) == {}  # the verb removed the leftover


def test_a_socket_whose_pid_is_not_a_corral_is_a_leftover(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead, not_corral = int(finished.stdout), os.getpid()  # gone; this test, not a corral
    made = []
    for pid in (dead, not_corral):
        path = control_path(tmp_path, pid)
        leftover = socket.socket(socket.AF_UNIX)
        leftover.bind(str(path))
        leftover.close()
        token_path(path).write_text("t\n")
        made += [path, token_path(path)]
    assert running_in(tmp_path) == {}
    assert [path for path in made if path.exists()] == []
