"""Replacing live workers without losing a request, tested on real processes under wrk load:
scaling down by TTOU, recycling by --max-requests (with its jitter) and by --max-memory; and
the memory that --preload saves by sharing the app between workers.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import httpx
import psutil

from conftest import load_result, start_load

CLOSE = {"connection": "close"}
MIB = 1 << 20


# -- helpers -------------------------------------------------------------------


def _recycles(server, reason: str) -> list[tuple[int, str, int, float]]:
    """(line index, name, old pid, detail number) of each "replacing it (reason)" line."""
    regex = re.compile(
        rf"(web\.\d+) \(pid (\d+)\) (?:served|uses) ([\d.]+)\S* .*: replacing it \({reason}\)"
    )
    found = []
    for index, line in enumerate(list(server.lines)):
        match = regex.search(line)
        if match:
            found.append((index, match.group(1), int(match.group(2)), float(match.group(3))))
    return found


def _check_replaced_before_stopped(server, reason: str) -> int:
    """Every worker replaced for `reason`: its replacement started (under its name, with a new
    pid) before it stopped, and it stopped cleanly with the reason in the log. Returns how many.
    """
    recycles = _recycles(server, reason)
    for index, name, old_pid, _ in recycles:
        escaped = re.escape(name)
        started = server.line_index(rf"{escaped} started \(pid (\d+)\)", after=index + 1)
        new_pid = int(re.search(r"started \(pid (\d+)\)", server.lines[started]).group(1))
        stopped = server.line_index(
            rf"{escaped} stopped \(pid {old_pid}, exit code 0\): {reason}$", after=index
        )
        assert new_pid != old_pid
        assert started < stopped, (
            f"{name} (pid {old_pid}) stopped before its replacement started\n{server.output}"
        )
    return len(recycles)


def _started_names(server) -> set[str]:
    return set(re.findall(r"(web\.\d+) started \(pid \d+\)", server.output))


def _wait_worker_processes(server, names: set[str], timeout: float = 15) -> dict[str, int]:
    """Wait until the tree runs exactly one worker process per name in `names`."""
    deadline = time.monotonic() + timeout
    titles: list[str] = []
    while time.monotonic() < deadline:
        titles = []
        for proc in server.alive():
            try:
                titles.append(" ".join(proc.cmdline()).strip())
            except psutil.Error:
                continue
        workers = sorted(
            t.removeprefix("corral: ") for t in titles if re.match(r"corral: web\.\d", t)
        )
        if workers == sorted(names):
            return server.worker_pids()
        time.sleep(0.1)
    raise AssertionError(f"expected workers {sorted(names)}, have {titles}\n{server.output}")


def _served_by(response: httpx.Response) -> tuple[str, int, int]:
    """(worker name, pid, MiB leaked) from one of leaky.py's responses."""
    name, pid, leaked = response.text.split()
    return name, int(pid), int(leaked)


def tree_pss(pid: int) -> int:
    """The proportional set size of a process and all its descendants, summed, in bytes.

    PSS divides each shared page between the processes sharing it, so the sum is what the
    tree costs the machine: copy-on-write pages shared by the workers count once.
    """
    root = psutil.Process(pid)
    return sum(proc.memory_full_info().pss for proc in [root, *root.children(recursive=True)])


# -- 1. TTOU under load ------------------------------------------------------------


def test_ttou_twice_under_load_drains_two_workers_without_failing_a_request(corral):
    server = corral("run", "plain:app", "--workers", "3", "--port", "0", "--no-access-log")
    url = server.url()
    pids = server.wait_workers(3)

    load = start_load(url, seconds=5, connections=32)
    time.sleep(1.5)
    mark = server.mark()
    server.send(signal.SIGTTOU)
    server.wait_for(r"scaling web to 2 workers", after=mark)
    time.sleep(1.5)
    mark = server.mark()
    server.send(signal.SIGTTOU)
    server.wait_for(r"scaling web to 1 worker\b", after=mark)
    result = load_result(load)

    print(f"\nTTOU x2 under load: {result.requests} requests, {result.failures} failures")
    assert result.requests > 1000, result.report
    assert result.failures == 0, result.report
    for name in ("web.3", "web.2"):
        server.wait_for(rf"{name} stopped \(pid {pids[name]}, exit code 0\): scale$")
    assert server.count(r"web\.\d+ exited") == 0, server.output
    assert server.count(r"web\.\d+ started") == 3, server.output  # nobody came back
    assert _wait_worker_processes(server, {"web.1"}) == {"web.1": pids["web.1"]}
    assert server.stop() == 0


# -- 2. --max-requests ------------------------------------------------------------------


def test_max_requests_under_load_replaces_workers_first_under_their_names_without_failures(
    corral,
):
    server = corral(
        "run",
        "plain:app",
        "--workers",
        "3",
        "--port",
        "0",
        "--no-access-log",
        "--max-requests",
        "3000",
        "--max-requests-jitter",
        "1500",
    )
    url = server.url()
    server.wait_workers(3)

    result = load_result(start_load(url, seconds=5, connections=32))
    time.sleep(0.5)  # a worker's last 0.1 s check may still ask for its replacement

    recycled = _check_replaced_before_stopped(server, "max-requests")
    print(
        f"\n--max-requests under load: {result.requests} requests, {result.failures} failures, "
        f"{recycled} recycles"
    )
    assert result.failures == 0, result.report
    assert recycled >= 2, f"{result.requests} requests made {recycled} recycles\n{server.output}"
    for _, _, _, served in _recycles(server, "max-requests"):
        assert served >= 3000, server.output
    assert server.count(r"web\.\d+ exited") == 0, server.output  # no crash, no restart
    assert server.count(r"web\.\d+ started") == 3 + recycled, server.output
    names = {"web.1", "web.2", "web.3"}
    assert _started_names(server) == names, server.output
    assert set(_wait_worker_processes(server, names)) == names
    assert server.stop() == 0


def test_max_requests_jitter_gives_each_worker_its_own_limit_within_the_jitter(corral):
    limit, jitter = 10, 400
    # Requests go one at a time, at most one per `interval`. A worker notices its limit at its
    # next check, every 0.1 s: allowing the check to run up to 0.05 s late, a worker serves at
    # most `slack` requests past its limit. So every count lies in [limit, limit+jitter+slack],
    # and counts more than `slack` apart come from different limits, not from the timing.
    interval, window = 0.004, 0.15
    slack = int(window / interval) + 1
    server = corral(
        "run",
        "plain:app",
        "--workers",
        "3",
        "--port",
        "0",
        "--no-access-log",
        "--max-requests",
        str(limit),
        "--max-requests-jitter",
        str(jitter),
    )
    url = server.url()
    server.wait_workers(3)

    statuses = []
    deadline = time.monotonic() + 15
    with httpx.Client(timeout=5, headers=CLOSE) as client:
        while len(_recycles(server, "max-requests")) < 5 and time.monotonic() < deadline:
            sent = time.monotonic()
            statuses.append(client.get(url).status_code)
            time.sleep(max(0.0, sent + interval - time.monotonic()))

    served = [int(n) for _, _, _, n in _recycles(server, "max-requests")]
    print(
        f"\n--max-requests {limit} --max-requests-jitter {jitter}: {len(statuses)} requests, "
        f"recycled after {served}"
    )
    assert len(served) >= 5, (
        f"{len(statuses)} requests made {len(served)} recycles\n{server.output}"
    )
    assert statuses == [200] * len(statuses)
    assert all(limit <= n <= limit + jitter + slack for n in served), served
    # Equal limits would give counts at most `slack` apart; with 5 draws from 0..400, counts
    # this close together happen by chance about once in 1,000 runs.
    assert max(served) - min(served) > slack, f"the workers' limits look alike: {served}"
    assert _check_replaced_before_stopped(server, "max-requests") == len(served)
    assert server.stop() == 0


# -- 3. --max-memory ----------------------------------------------------------------------


def test_worker_over_max_memory_is_replaced_and_its_replacement_serves(corral):
    server = corral("run", "leaky:app", "--port", "0", "--max-memory", "120MiB")
    url = server.url()
    old_pid = server.wait_workers(1)["web.1"]
    rss = psutil.Process(old_pid).memory_info().rss
    assert rss < 100 * MIB, f"the worker starts at {rss / MIB:.0f} MiB, too close to the limit"
    mark = server.mark()

    leak = (120 * MIB - rss) // MIB + 10  # MiB, to pass the limit by about 10 MiB
    response = httpx.get(f"{url}/leak?mib={leak}", timeout=10)
    assert response.status_code == 200
    assert _served_by(response) == ("web.1", old_pid, leak)

    replacing = server.line_index(
        rf"web\.1 \(pid {old_pid}\) uses [\d.]+MiB, over --max-memory 120\.0MiB: "
        r"replacing it \(max-memory\)",
        after=mark,
    )
    started = server.line_index(r"web\.1 started \(pid (\d+)\)", after=replacing)
    new_pid = int(re.search(r"pid (\d+)", server.lines[started]).group(1))
    stopped = server.line_index(
        rf"web\.1 stopped \(pid {old_pid}, exit code 0\): max-memory$", after=replacing
    )
    assert started < stopped
    assert new_pid != old_pid
    response = httpx.get(url, headers=CLOSE, timeout=5)
    assert _served_by(response) == ("web.1", new_pid, 0)
    time.sleep(1.5)  # a memory check or more: the fresh worker is under the limit
    assert server.count(r"replacing it \(max-memory\)") == 1, server.output
    assert server.worker_pids() == {"web.1": new_pid}
    assert server.stop() == 0


def test_leaking_workers_are_replaced_under_load_without_failing_a_request(corral):
    server = corral(
        "run",
        "leaky:app",
        "--workers",
        "2",
        "--port",
        "0",
        "--no-access-log",
        "--max-memory",
        "120MiB",
    )
    url = server.url()
    server.wait_workers(2)

    # 8 connections, 0.1 s per request, 2 MiB each: about 80 MiB/s per worker, so each passes
    # 120 MiB after a second or two, and none grows without bound between 1 s memory checks.
    load = start_load(f"{url}/leak?mib=2&delay=0.1", seconds=5, connections=8)
    result = load_result(load)
    time.sleep(1.5)  # the last 1 s memory check may still replace a worker

    recycled = _check_replaced_before_stopped(server, "max-memory")
    print(
        f"\n--max-memory under load: {result.requests} requests, {result.failures} failures, "
        f"{recycled} recycles"
    )
    assert result.failures == 0, result.report
    assert recycled >= 1, f"{result.requests} requests made no recycle\n{server.output}"
    assert server.count(r"web\.\d+ exited") == 0, server.output
    names = {"web.1", "web.2"}
    assert _started_names(server) == names, server.output
    assert set(_wait_worker_processes(server, names)) == names
    assert server.stop() == 0


# -- 4. --preload shares the app's memory ---------------------------------------------------


def _table_tree_pss(corral, ready_dir: Path, *flags: str) -> int:
    """The PSS of a corral tree running table.py on 4 workers, once all 4 have booted."""
    ready_dir.mkdir()
    server = corral(
        "run",
        "table:app",
        "--workers",
        "4",
        "--port",
        "0",
        "--no-access-log",
        *flags,
        env={"TABLE_READY_DIR": str(ready_dir)},
    )
    url = server.url(timeout=30)
    deadline = time.monotonic() + 20
    while True:
        pids = set(server.worker_pids().values())
        booted = {int(path.name) for path in ready_dir.iterdir()}
        if len(pids) == 4 and pids <= booted:
            break
        assert time.monotonic() < deadline, f"workers {pids}, booted {booted}\n{server.output}"
        time.sleep(0.1)
    time.sleep(0.5)  # from lifespan startup to serving
    assert httpx.get(f"{url}/rows/1234", timeout=5).json()["name"] == "customer-0001234"
    assert len(server.alive()) == 7  # manager, launcher, zygote, 4 workers
    pss = tree_pss(server.pid)
    assert server.stop() == 0
    return pss


def test_preload_shares_the_apps_memory_between_workers(corral, tmp_path: Path):
    preloaded = _table_tree_pss(corral, tmp_path / "preload")
    separate = _table_tree_pss(corral, tmp_path / "no-preload", "--no-preload")

    ratio = preloaded / separate
    print(
        f"\ntable.py, 4 workers, PSS of the whole tree: --preload {preloaded / MIB:.0f} MiB, "
        f"--no-preload {separate / MIB:.0f} MiB, ratio {ratio:.2f}"
    )
    assert ratio < 0.6
