"""The cause of each process's last restart, as `corral status` (and the dashboard) show it.

Every cause the dashboard names is recorded: an exit code, a signal, a
heartbeat timeout, max-requests, max-memory, a reload, a scale, a restart
asked for (an OOM kill: tests/test_oom.py). Each is checked right after
the event that causes it, on the restarted process's row.
"""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
import threading
from typing import Any

import httpx

from conftest import Corral


def _post(server: Corral, path: str, body: dict[str, Any]) -> str:
    """POST to the control API over its Unix socket; the answer's message."""
    transport = httpx.HTTPTransport(uds=str(server.control_socket()))
    with httpx.Client(transport=transport, timeout=10) as client:
        answer = client.post(f"http://corral{path}", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["message"]


def _row(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(row for row in status["processes"] if row["name"] == name)


def _restarted_for(server: Corral, name: str, cause: str, timeout: float = 20) -> dict[str, Any]:
    """The row of `name` once it runs again and its last restart's cause is `cause`."""

    def done(status: dict[str, Any]) -> bool:
        rows = [r for r in status["processes"] if r["name"] == name]
        return any(r["last_cause"] == cause and r["state"] in ("ready", "running") for r in rows)

    status = server.wait_status(f"{name} restarted for {cause!r}", done, timeout)
    return next(r for r in status["processes"] if r["name"] == name and r["last_cause"] == cause)


def _any_worker(server: Corral, cause: str) -> str:
    """The web worker whose last restart was for `cause`, once there is one."""

    def found(status: dict[str, Any]) -> bool:
        return any(r["kind"] == "worker" and r["last_cause"] == cause for r in status["processes"])

    status = server.wait_status(f"a worker restarted for {cause!r}", found, 20)
    return next(r["name"] for r in status["processes"] if r["last_cause"] == cause)


def test_a_web_workers_restarts_say_why(corral):
    server = corral(
        *("run", "plain:app", "--port", "0", "--workers", "2", "--timeout", "2"),
        "--no-access-log",
    )
    url = server.url()
    server.wait_workers(2)

    # The worker exits instead of answering.
    with httpx.Client(timeout=10) as client, contextlib.suppress(httpx.HTTPError):
        client.get(f"{url}/exit?code=3")
    _restarted_for(server, _any_worker(server, "exit code 3"), "exit code 3")

    pids = server.wait_workers(2)
    os.kill(pids["web.1"], signal.SIGKILL)
    assert _restarted_for(server, "web.1", "killed by SIGKILL")["restarts"] >= 1

    server.wait_workers(2)
    blocked = threading.Thread(target=_get_quietly, args=(f"{url}/block?seconds=30",))
    blocked.start()
    _restarted_for(server, _any_worker(server, "heartbeat timeout"), "heartbeat timeout")
    blocked.join(15)

    server.wait_workers(2)
    assert _post(server, "/restart", {"target": "web.2"}) == "restarting web.2"
    _restarted_for(server, "web.2", "restart")

    server.wait_workers(2)
    _post(server, "/reload", {"group": "web"})
    for name in ("web.1", "web.2"):
        _restarted_for(server, name, "reload")

    server.wait_workers(2)
    _post(server, "/scale", {"counts": {"web": 1}})
    server.wait_workers(1)
    _post(server, "/scale", {"counts": {"web": 2}})
    assert _restarted_for(server, "web.2", "scale")["restarts"] >= 1
    assert server.stop() == 0


def _get_quietly(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):  # its worker was killed: no answer, as expected
        httpx.get(url, timeout=20)


def test_max_requests_and_max_memory_are_causes(corral):
    server = corral(
        *("run", "plain:app", "--port", "0", "--workers", "1", "--no-access-log"),
        *("--max-requests", "5", "--max-requests-jitter", "0"),
    )
    url = server.url()
    server.wait_workers(1)
    with httpx.Client(timeout=10) as client:
        for _ in range(8):
            client.get(url)
    _restarted_for(server, "web.1", "max-requests")
    assert server.stop() == 0

    server = corral(
        *("run", "plain:app", "--port", "0", "--workers", "1", "--no-access-log"),
        *("--max-memory", "1MiB"),  # every worker is past it: each is replaced, in turn
    )
    server.url()
    _restarted_for(server, "web.1", "max-memory")
    assert server.stop() == 0


def test_a_replicas_restarts_say_why(corral, tmp_path):
    (tmp_path / "corral.toml").write_text(
        textwrap.dedent(
            """
            [processes.worker]
            command = "sleep 3600"
            replicas = 2
            stop_timeout = "2s"

            [processes.quitter]
            command = "sh -c 'sleep 0.3; exit 3'"
            """
        )
    )
    server = corral("run", cwd=tmp_path)
    assert _restarted_for(server, "quitter.1", "exit code 3")["restarts"] >= 1

    worker = _row(server.wait_status("workers up", _workers_up), "worker.1")
    os.kill(worker["pid"], signal.SIGTERM)
    _restarted_for(server, "worker.1", "killed by SIGTERM")

    server.wait_status("workers up", _workers_up)
    assert _post(server, "/restart", {"target": "worker.1"}) == "restarting worker.1"
    _restarted_for(server, "worker.1", "restart")

    server.wait_status("workers up", _workers_up)
    _post(server, "/reload", {"group": "worker"})
    for name in ("worker.1", "worker.2"):
        _restarted_for(server, name, "reload")

    server.wait_status("workers up", _workers_up)
    _post(server, "/scale", {"counts": {"worker": 1}})
    server.wait_status("one worker", lambda s: all(r["name"] != "worker.2" for r in s["processes"]))
    _post(server, "/scale", {"counts": {"worker": 2}})
    assert _restarted_for(server, "worker.2", "scale")["restarts"] >= 1
    assert server.stop() == 0


def _workers_up(status: dict[str, Any]) -> bool:
    rows = [r for r in status["processes"] if r["group"] == "worker"]
    return len(rows) == 2 and all(r["state"] == "running" for r in rows)


DEAF_BOOT = """
import asyncio
import signal


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Deaf to SIGTERM while it boots: it says "ready" after the manager asked it
                # to stop, as any worker can when the two cross on the way.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                print("booting, deaf", flush=True)
                await asyncio.sleep(2)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def test_a_worker_ready_after_it_was_asked_to_stop_is_drained_not_a_bug(corral, tmp_path):
    (tmp_path / "deaf.py").write_text(DEAF_BOOT)
    server = corral("run", "deaf:app", "--port", "0", "--graceful-timeout", "3", cwd=tmp_path)
    server.wait_for(r"web\.1 +\| booting, deaf")
    server.send(signal.SIGTERM)  # while web.1 boots
    assert server.wait(30) == 0, server.output
    assert "a bug in corral" not in server.output
    assert server.wait_until_gone(5) == []
