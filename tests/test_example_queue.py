"""The example in examples/queue, run by corral against a real redis-server: an API with three
workers, a beat job pushing once a second, two consumers taking the items reliably.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import redis

EXAMPLE = Path(__file__).parent.parent / "examples" / "queue"
PROCESSING = ("queue:processing:1", "queue:processing:2")


@dataclass
class RedisServer:
    url: str
    pid: int
    client: redis.Redis


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(client: redis.Redis, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free port, storing nothing; stopped after."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: .ci/run installs it (apt-get install)")
    log = (tmp_path / "redis.log").open("ab")
    for _ in range(3):  # a free port can be taken between the probe and redis' bind
        port = _free_port()
        proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        if _answers(client, proc, timeout=10):
            break
        client.close()
        _stop(proc)
    else:
        log.close()
        pytest.fail(f"redis-server did not start:\n{(tmp_path / 'redis.log').read_text()}")
    try:
        yield RedisServer(f"redis://127.0.0.1:{port}/0", proc.pid, client)
    finally:
        client.close()
        _stop(proc)
        log.close()
        assert not psutil.pid_exists(proc.pid), "redis-server is still running"


def _run_example(corral, redis_server: RedisServer, **env: str):
    return corral(
        "run",
        "--port",
        "0",
        cwd=EXAMPLE,
        env={"REDIS_URL": redis_server.url, "PYTHONDONTWRITEBYTECODE": "1", **env},
    )


def _pushed(client: redis.Redis) -> list[float]:
    return [float(item) for item in client.lrange("pushed", 0, -1)]


def _taken(client: redis.Redis) -> list[dict[str, str]]:
    return [json.loads(entry) for entry in client.lrange("taken", 0, -1)]


def _wait(condition, what: str, server, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}\n{server.output}")
        time.sleep(0.05)


def _snapshot(client: redis.Redis) -> dict[str, list[str]]:
    """Every list of the example at one instant (one MULTI/EXEC)."""
    keys = ("pushed", "taken", "queue", *PROCESSING)
    with client.pipeline(transaction=True) as pipe:
        for key in keys:
            pipe.lrange(key, 0, -1)
        lists = pipe.execute()
    snapshot = dict(zip(keys, lists, strict=True))
    snapshot["taken"] = [json.loads(entry)["item"] for entry in snapshot["taken"]]
    return snapshot


def _assert_each_item_in_one_place(snapshot: dict[str, list[str]]) -> None:
    """Every pushed item is in exactly one of: taken, the queue, a processing list."""
    places = Counter(snapshot["taken"] + snapshot["queue"])
    for key in PROCESSING:
        places.update(snapshot[key])
    duplicates = {item: n for item, n in places.items() if n > 1}
    assert not duplicates, f"items in two places or taken twice: {duplicates}\n{snapshot}"
    assert set(places) == set(snapshot["pushed"]), snapshot
    assert len(snapshot["pushed"]) == len(set(snapshot["pushed"]))


def _title_pid(server, title: str) -> int:
    for proc in server.alive():
        try:
            if " ".join(proc.cmdline()).strip() == title:
                return proc.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"no process titled {title!r}\n{server.output}")


def test_the_example_pushes_once_a_second_and_both_consumers_take_work(redis_server, corral):
    client = redis_server.client
    server = _run_example(corral, redis_server)
    url = server.url()
    server.wait_workers(3)
    _wait(lambda: client.llen("pushed") >= 1, "a first push", server)
    window_start = time.time()
    time.sleep(5)
    window_end = time.time()
    time.sleep(0.5)

    # One push per tick, with 3 web workers: the beat runs once on the machine, not per worker.
    pushed = _pushed(client)
    in_window = [t for t in pushed if window_start < t <= window_end]
    assert 4 <= len(in_window) <= 6, (in_window, server.output)
    assert len(set(pushed)) == len(pushed)

    # Blocked consumers are served in turn: both replicas take items.
    _wait(
        lambda: {t["replica"] for t in _taken(client)} == {"consumer.1", "consumer.2"},
        "items taken by both consumers",
        server,
    )

    # The API reads the queue's length and the last items taken.
    workers = set()
    with httpx.Client(timeout=10) as http:
        for _ in range(50):
            before = _snapshot(client)
            response = http.get(url, headers={"connection": "close"})
            after = _snapshot(client)
            assert response.status_code == 200, response.text
            body = response.json()
            workers.add(body["worker"])
            if before != after:
                continue  # an item moved meanwhile; ask again
            assert body["queue"] == len(before["queue"])
            assert [entry["item"] for entry in body["taken"]] == before["taken"][:10]
            assert {entry["replica"] for entry in body["taken"]} <= {"consumer.1", "consumer.2"}
            break
        else:
            raise AssertionError("the lists never stood still during a request")
    assert workers <= {"web.1", "web.2", "web.3"}

    assert server.stop() == 0
    _assert_each_item_in_one_place(_snapshot(client))


def test_nothing_is_lost_or_taken_twice_when_a_consumer_is_killed_mid_item(redis_server, corral):
    client = redis_server.client
    # Each item takes 0.5 s of work, so consumer.1 is often caught holding one.
    server = _run_example(corral, redis_server, WORK_SECONDS="0.5")
    server.url()
    _wait(lambda: client.llen("taken") >= 2, "two items taken", server)

    held = None
    mark = 0
    for _attempt in range(5):
        server.wait_for(r"^consumer\.1\s+\| consumer 1 waiting on 'queue'", after=mark)
        pid = _title_pid(server, "corral: consumer.1")
        _wait(lambda: client.llen(PROCESSING[0]) == 1, "consumer.1 holding an item", server)
        mark = server.mark()
        os.kill(pid, signal.SIGKILL)
        server.wait_for(rf"consumer\.1 exited \(pid {pid}, killed by SIGKILL\)", after=mark)
        left = client.lrange(PROCESSING[0], 0, -1)
        if left:  # killed mid-item (else it finished the item just before the kill: again)
            held = left[0]
            break
    assert held is not None, f"consumer.1 was never killed holding an item\n{server.output}"

    # The replacement gives the item back to the queue; one of the consumers takes it.
    server.wait_for(r"consumer\.1 started", after=mark)
    server.wait_for(
        r"^consumer\.1\s+\| re-queued 1 item\(s\) left in queue:processing:1", after=mark
    )
    _wait(lambda: held in _snapshot(client)["taken"], f"{held} taken after the kill", server)
    killed_at = time.time()
    time.sleep(3)  # settle: items pushed meanwhile are taken too

    snapshot = _snapshot(client)
    _assert_each_item_in_one_place(snapshot)
    assert snapshot["taken"].count(held) == 1
    settled = [item for item in snapshot["pushed"] if float(item) < killed_at]
    assert len(settled) >= 3
    not_taken = set(settled) - set(snapshot["taken"])
    assert not not_taken, f"pushed before the settle, never taken: {not_taken}\n{server.output}"

    assert server.stop() == 0
    _assert_each_item_in_one_place(_snapshot(client))
