"""corral run serves an ASGI app with N workers on one socket."""

from __future__ import annotations

import httpx


def test_serves_with_n_workers_each_named_and_titled(corral):
    server = corral("run", "plain:app", "--workers", "3", "--port", "0")
    url = server.url()
    pids = server.wait_workers(3)
    assert sorted(pids) == ["web.1", "web.2", "web.3"]
    seen = set()
    with httpx.Client() as client:
        for _ in range(60):
            worker_id, pid = client.get(url, headers={"connection": "close"}).text.split()[:2]
            assert pids[worker_id] == int(pid)
            seen.add(worker_id)
    assert len(seen) >= 2, f"one accept queue should reach several workers, saw {seen}"
    assert server.stop() == 0
