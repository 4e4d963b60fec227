"""Upgrading corral itself with no refused connection: SIGUSR2 on a bare run, and a systemd
socket unit's socket kept across a restart of the service."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from conftest import APPS, load_result, start_load

NEW_MANAGER = r"upgrading: a new manager \(pid (\d+)\) starts from the same sockets"


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop_and_check_nothing_left(pid: int) -> None:
    """SIGTERM the manager `pid` (not the test's child: a successor) and wait for its tree."""
    tree = _tree(pid)
    assert tree, f"manager {pid} is not running"
    os.kill(pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=40)
    assert not alive, f"left after the new manager stopped: {alive}"


def test_sigusr2_hands_over_to_a_new_manager_under_load_without_a_failed_request(corral):
    server = corral("run", "plain:app", "--workers", "2", "--port", "0", "--no-access-log")
    url = server.url()
    server.wait_workers(2)
    load = start_load(url, seconds=6)
    time.sleep(1.5)
    mark = server.mark()
    server.send(signal.SIGUSR2)
    new = int(server.wait_for(NEW_MANAGER, after=mark)[1])
    server.wait_for(rf"upgrade: the new manager \(pid {new}\) serves; stopping", after=mark)
    assert server.proc.wait(40) == 0  # the old manager, drained
    server.wait_for(r"upgrade complete: the old manager \(pid \d+\) has exited", after=mark)
    result = load_result(load)
    assert result.requests > 1000, result.report
    assert result.failures == 0, result.report
    answer = httpx.get(url, headers={"Connection": "close"})
    assert answer.status_code == 200
    assert psutil.Process(new).cmdline()[:1] == ["corral: manager"]
    _stop_and_check_nothing_left(new)


def test_an_upgrade_whose_new_manager_cannot_start_leaves_the_old_one_serving(corral, tmp_path):
    (tmp_path / "deployed.py").write_text((APPS / "plain.py").read_text())
    server = corral("run", "deployed:app", "--port", "0", cwd=tmp_path)
    url = server.url()
    (tmp_path / "deployed.py").write_text("raise RuntimeError('the new release is broken')\n")
    mark = server.mark()
    server.send(signal.SIGUSR2)
    new = int(server.wait_for(NEW_MANAGER, after=mark)[1])
    server.wait_for(
        rf"upgrade: the new manager \(pid {new}\) exited with code 3; this one keeps serving",
        after=mark,
        timeout=30,
    )
    assert httpx.get(url, headers={"Connection": "close"}).status_code == 200
    assert server.stop() == 0


ACTIVATED = """
import os
import sys

os.dup2(int(os.environ.pop("HELD_SOCKET")), 3)  # where socket activation puts it
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "corral", *sys.argv[1:]])
"""


def test_a_socket_held_across_a_restart_of_corral_loses_no_request(tmp_path):
    """What a systemd socket unit does on `systemctl restart`: the socket outlives corral."""
    (tmp_path / "activated.py").write_text(ACTIVATED)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    env = {**os.environ, "LISTEN_FDS": "1", "HELD_SOCKET": str(listener.fileno())}
    command = [sys.executable, str(tmp_path / "activated.py"), "run", "plain:app", "-w", "2"]
    managers: list[subprocess.Popen[bytes]] = []
    try:

        def start() -> subprocess.Popen[bytes]:
            started = subprocess.Popen(
                [*command, "--no-access-log"],
                env=env,
                cwd=APPS,
                pass_fds=[listener.fileno()],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            managers.append(started)
            return started

        first = start()
        _until_it_answers(url)
        load = start_load(url, seconds=5)
        time.sleep(1.5)
        first.send_signal(signal.SIGTERM)  # systemctl restart: stop, then start again
        assert first.wait(40) == 0
        start()
        result = load_result(load)
        assert result.requests > 1000, result.report
        assert result.failures == 0, result.report
    finally:
        listener.close()
        for manager in managers:
            tree = _tree(manager.pid)
            if manager.poll() is None:
                manager.send_signal(signal.SIGTERM)
            _, alive = psutil.wait_procs(tree, timeout=40)
            assert not alive, alive


def _until_it_answers(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers={"Connection": "close"}).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"nothing answered at {url}")


def test_the_pid_file_is_the_new_managers_after_an_upgrade(corral, tmp_path: Path):
    pidfile = tmp_path / "corral.pid"
    server = corral("run", "plain:app", "--port", "0", "--pidfile", str(pidfile))
    server.url()
    mark = server.mark()
    server.send(signal.SIGUSR2)
    new = int(server.wait_for(NEW_MANAGER, after=mark)[1])
    assert server.proc.wait(40) == 0
    server.wait_for(r"upgrade complete", after=mark)
    assert pidfile.read_text().strip() == str(new)
    _stop_and_check_nothing_left(new)
    assert not pidfile.exists()


def test_a_failed_upgrade_leaves_the_pid_file_to_the_manager_that_serves(corral, tmp_path: Path):
    pidfile = tmp_path / "corral.pid"
    (tmp_path / "deployed.py").write_text((APPS / "plain.py").read_text())
    server = corral("run", "deployed:app", "--port", "0", "--pidfile", str(pidfile), cwd=tmp_path)
    server.url()
    (tmp_path / "deployed.py").write_text("raise RuntimeError('the new release is broken')\n")
    mark = server.mark()
    server.send(signal.SIGUSR2)
    server.wait_for(r"upgrade: the new manager \(pid \d+\) exited with code 3", after=mark)
    assert pidfile.read_text().strip() == str(server.pid)
    assert server.stop() == 0
    assert not pidfile.exists()
