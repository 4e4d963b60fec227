"""corral's lifecycle, tested on real processes: deaths and restarts with backoff, an app that
cannot start, stuck workers, graceful and immediate stops, scaling by signal, a killed manager.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from corral.manager.backoff import STABLE_AFTER, Backoff

APPS = Path(__file__).parent / "apps"
CLOSE = {"connection": "close"}


# -- helpers -------------------------------------------------------------------


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _served_by(response: httpx.Response) -> tuple[str, int]:
    """(worker name, pid) from the body of one of plain.py's responses."""
    name, pid = response.text.split()[:2]
    return name, int(pid)


def _request_until_served_by(url: str, name: str, pid: int, timeout: float = 10) -> None:
    """Send fresh requests until one is answered by worker `name` with pid `pid`."""
    deadline = time.monotonic() + timeout
    seen = set()
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            response = client.get(url, headers=CLOSE)
            assert response.status_code == 200
            seen.add(_served_by(response))
            if (name, pid) in seen:
                return
    raise AssertionError(f"no response from {name} (pid {pid}) within {timeout}s; saw {seen}")


def _client_on(url: str, name: str, pid: int, tries: int = 100) -> httpx.Client:
    """An httpx client whose pooled keep-alive connection was accepted by worker `name`."""
    for _ in range(tries):
        client = httpx.Client(timeout=20)
        if _served_by(client.get(url)) == (name, pid):
            return client
        client.close()
    raise AssertionError(f"no connection reached {name} (pid {pid}) in {tries} tries")


def _keep_alive_connection(url: str, worker: str | None = None, tries: int = 100):
    """An HTTP/1.1 connection that has served one request and stays open, idle.

    With `worker`, open connections until one is accepted by that worker.
    """
    parts = urlsplit(url)
    for _ in range(tries):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200
        assert (response.getheader("connection") or "").lower() != "close"
        if worker is None or body.split()[0] == worker:
            return conn, body
        conn.close()
    raise AssertionError(f"no connection reached {worker} in {tries} tries")


def _sees_clean_close(conn: http.client.HTTPConnection, timeout: float) -> bytes:
    """What the idle connection reads next: b"" for a clean close (FIN), else raises."""
    assert conn.sock is not None
    conn.sock.settimeout(timeout)
    return conn.sock.recv(1)


def _exits_on_its_own(server, timeout: float = 10) -> int:
    """The manager's exit code, once it exits by itself; check it left no process behind."""
    code = server.wait(timeout)
    left = server.wait_until_gone(5)
    assert not left, f"processes left after the manager exited: {left}\n{server.output}"
    return code


# -- 1. a worker that dies is replaced under its name -----------------------------


def test_worker_killed_by_signal_is_replaced_under_its_name_and_the_log_names_the_signal(corral):
    server = corral("run", "plain:app", "--workers", "2", "--port", "0")
    url = server.url()
    pids = server.wait_workers(2)
    mark = server.mark()

    os.kill(pids["web.2"], signal.SIGKILL)

    server.wait_for(rf"web\.2 exited \(pid {pids['web.2']}, killed by SIGKILL\)", after=mark)
    new_pid = int(server.wait_for(r"web\.2 started \(pid (\d+)\)", after=mark).group(1))
    assert new_pid != pids["web.2"]
    _request_until_served_by(url, "web.2", new_pid)
    assert server.wait_workers(2) == {"web.1": pids["web.1"], "web.2": new_pid}
    assert server.count(r"web\.\d+ started") == 3  # two at start, one replacement
    assert server.stop() == 0


def test_worker_that_exits_is_replaced_under_its_name_and_the_log_gives_the_exit_code(corral):
    server = corral("run", "plain:app", "--port", "0")
    url = server.url()
    old_pid = server.wait_workers(1)["web.1"]
    mark = server.mark()

    with pytest.raises(httpx.TransportError):  # the worker exits instead of answering
        httpx.get(f"{url}/exit?code=1", timeout=10)

    server.wait_for(rf"web\.1 exited \(pid {old_pid}, exit code 1\)", after=mark)
    new_pid = int(server.wait_for(r"web\.1 started \(pid (\d+)\)", after=mark).group(1))
    assert new_pid != old_pid
    _request_until_served_by(url, "web.1", new_pid)
    assert server.stop() == 0


# -- 2. repeated deaths back off exponentially -------------------------------------


def test_repeated_deaths_of_a_worker_back_off_exponentially(corral):
    server = corral("run", "plain:app", "--port", "0")
    server.url()
    pid = server.wait_workers(1)["web.1"]
    died_at = 0.0
    for _ in range(4):
        mark = server.mark()
        os.kill(pid, signal.SIGKILL)
        server.wait_for(rf"web\.1 exited \(pid {pid}, killed by SIGKILL\)", after=mark)
        died_at = time.monotonic()
        pid = int(server.wait_for(r"web\.1 started \(pid (\d+)\)", after=mark).group(1))
    last_wait = time.monotonic() - died_at

    delays = [float(d) for d in re.findall(r"web\.1 restarts in ([\d.]+)s", server.output)]
    # The first death restarts at once (no delay logged), then 0.5 s, doubling.
    assert delays == [0.5, 1.0, 2.0], server.output
    assert last_wait >= 1.8, f"the 2s delay was not honoured: restarted after {last_wait:.2f}s"
    _request_until_served_by(server.url(), "web.1", pid)
    assert server.stop() == 0


def test_the_backoff_starts_over_after_a_stable_run():
    backoff = Backoff()
    never_ready = [backoff.delay_after_death(None) for _ in range(3)]
    assert never_ready == [0.0, 0.5, 1.0]
    assert backoff.delay_after_death(STABLE_AFTER - 1) == 2.0  # not stable yet: still doubling
    assert backoff.delay_after_death(STABLE_AFTER) == 0.0  # a stable run: at once, as a first
    assert backoff.delay_after_death(1.0) == 0.5  # and the doubling starts over


def test_a_worker_that_dies_after_a_stable_run_restarts_at_once(corral):
    server = corral("run", "plain:app", "--port", "0")
    server.url()
    pid = server.wait_workers(1)["web.1"]
    delays = []
    for stable in (False, False, True, False):
        if stable:
            time.sleep(STABLE_AFTER + 0.5)  # served long enough since it became ready
        mark = server.mark()
        os.kill(pid, signal.SIGKILL)
        exited = server.line_index(rf"web\.1 exited \(pid {pid}, killed by SIGKILL\)", after=mark)
        started = server.line_index(r"web\.1 started \(pid \d+\)", after=exited)
        said = [re.search(r"restarts in ([\d.]+)s", line) for line in server.lines[exited:started]]
        delays.append(next((float(m[1]) for m in said if m), 0.0))
        pid = server.wait_workers(1)["web.1"]

    # At once, then 0.5 s; after a stable run at once again, then 0.5 s (not 1 s, 2 s).
    assert delays == [0.0, 0.5, 0.0, 0.5], server.output
    assert server.stop() == 0


# -- 3. an app that cannot start ----------------------------------------------------

BROKEN_APPS = {
    # case: (file name, its source, app spec, the cause as it must appear exactly once)
    "import_error": (
        "broken.py",
        'raise RuntimeError("boom at import")\n',
        "broken:app",
        r"RuntimeError: boom at import",
    ),
    "syntax_error": ("broken.py", "def app(:\n    pass\n", "broken:app", r"SyntaxError: "),
    "missing_attribute": (
        "broken.py",
        "async def app(scope, receive, send):\n    pass\n",
        "broken:application",
        r"has no attribute 'application'",
    ),
    "module_not_found": (None, None, "nosuchmodule:app", r"no module named 'nosuchmodule'"),
    "lifespan_startup_failure": (None, None, "plain:app", r"database unreachable"),
}

MODES = {
    "preload": [],
    "preload_3_workers": ["--workers", "3"],
    "no_preload_3_workers": ["--no-preload", "--workers", "3"],
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", list(BROKEN_APPS))
def test_app_that_cannot_start_stops_corral_with_code_3_and_its_cause_shown_once(
    corral, tmp_path: Path, case: str, mode: str
):
    file_name, source, spec, cause = BROKEN_APPS[case]
    if case == "lifespan_startup_failure":
        cwd, env = Path(__file__).parent / "apps", {"PLAIN_FAIL_STARTUP": "1"}
    else:
        cwd, env = tmp_path, {}
        if file_name is not None:
            (tmp_path / file_name).write_text(source)
    started = time.monotonic()

    server = corral("run", spec, "--port", "0", *MODES[mode], cwd=cwd, env=env)

    assert _exits_on_its_own(server) == 3, server.output
    assert time.monotonic() - started < 6, f"took {time.monotonic() - started:.1f}s"
    assert server.count(cause) == 1, server.output
    assert server.count(r"the app cannot start") == 1, server.output
    assert server.count(r"listening on") == 0, server.output
    # No restart storm: the app is imported once (by the zygote when preloading, else by web.1)
    # and only web.1 boots; the others were to follow once it was ready.
    loaded_by_zygote = mode != "no_preload_3_workers" and case != "lifespan_startup_failure"
    assert server.count(r"web\.\d+ started") == (0 if loaded_by_zygote else 1), server.output
    assert server.count(r"restarts in") == 0, server.output


# -- 4. a stuck worker is aborted, its stack shown, then replaced ------------------------


def test_worker_stuck_in_a_blocking_call_is_aborted_with_its_stack_logged_then_replaced(corral):
    server = corral("run", "plain:app", "--port", "0", "--timeout", "2", "--graceful-timeout", "3")
    url = server.url()
    old_pid = server.wait_workers(1)["web.1"]
    mark = server.mark()

    with ThreadPoolExecutor(1) as pool:
        sent = time.monotonic()
        blocked = pool.submit(httpx.get, f"{url}/block?seconds=60", timeout=15)
        notice = server.line_index(
            rf"web\.1 \(pid {old_pid}\) has not answered for 2s: "
            r"sending SIGABRT to log its stack, then SIGKILL",
            after=mark,
            timeout=10,
        )
        noticed_after = time.monotonic() - sent
        stack = server.line_index(
            r"^web\.1\s*\|.*plain\.py.* in stuck_in_a_blocking_call$", after=notice
        )
        exited = server.line_index(
            rf"web\.1 exited \(pid {old_pid}, killed by SIG(ABRT|KILL) \(timeout",
            after=stack,
        )
        match = server.wait_for(r"web\.1 started \(pid (\d+)\)", after=exited)
        with pytest.raises(httpx.TransportError):  # its worker died under it
            blocked.result(timeout=10)

    # The clock runs from the last heartbeat (one a second), so 1 to 2 s after the request.
    assert 0.9 <= noticed_after < 6, f"noticed after {noticed_after:.1f}s with --timeout 2"
    new_pid = int(match.group(1))
    assert new_pid != old_pid
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200
    assert _served_by(response) == ("web.1", new_pid)
    assert server.stop() == 0


def test_stuck_worker_that_ignores_sigabrt_is_killed_by_sigkill_then_replaced(corral):
    server = corral("run", "plain:app", "--port", "0", "--timeout", "2", "--graceful-timeout", "3")
    url = server.url()
    old_pid = server.wait_workers(1)["web.1"]
    mark = server.mark()

    with ThreadPoolExecutor(1) as pool:
        sent = time.monotonic()
        blocked = pool.submit(httpx.get, f"{url}/block-ignoring-abort?seconds=30", timeout=40)
        server.wait_for(
            rf"web\.1 \(pid {old_pid}\) has not answered for 2s: sending SIGABRT", after=mark
        )
        exited = server.line_index(
            rf"web\.1 exited \(pid {old_pid}, killed by SIG\w+", after=mark, timeout=10
        )
        killed_after = time.monotonic() - sent
        with pytest.raises(httpx.TransportError):  # its worker died under it
            blocked.result(timeout=10)

    # The clock runs from the last heartbeat, up to 1 s before the request: SIGABRT comes
    # within 2 s (--timeout) of the request, SIGKILL 2 s later.
    print(f"killed by SIGKILL {killed_after:.2f}s after the request")
    assert "killed by SIGKILL (timeout" in server.lines[exited], server.lines[exited]
    assert killed_after < 5.5, f"killed {killed_after:.1f}s after the request\n{server.output}"
    new_pid = int(server.wait_for(r"web\.1 started \(pid (\d+)\)", after=exited)[1])
    assert server.wait_workers(1) == {"web.1": new_pid}
    assert _served_by(httpx.get(url, timeout=5)) == ("web.1", new_pid)
    assert server.stop() == 0


# -- 5. graceful stop --------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_stop_finishes_in_flight_requests_closes_idle_ones_and_runs_shutdown(
    corral, tmp_path: Path, sig: signal.Signals
):
    events = tmp_path / "events"
    server = corral(
        "run",
        "plain:app",
        "--workers",
        "2",
        "--port",
        "0",
        "--graceful-timeout",
        "10",
        env={"PLAIN_EVENTS": str(events)},
    )
    url = server.url()
    port = _port(url)
    pids = server.wait_workers(2)
    idle, _ = _keep_alive_connection(url)

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, f"{url}/slow?seconds=3", timeout=15)
        server.wait_accepted(port, 2)  # the idle connection and the slow request
        server.send(sig)
        server.wait_for(rf"{sig.name}: stopping gracefully")

        assert _sees_clean_close(idle, timeout=5) == b"", "the idle connection was not closed"
        assert not slow.done(), "the idle connection should be closed while requests finish"
        response = slow.result(timeout=15)

    assert response.status_code == 200
    assert response.headers.get("connection") == "close"
    assert _exits_on_its_own(server) == 0, server.output
    for name, pid in pids.items():
        assert server.count(rf"{name} stopped \(pid {pid}, exit code 0\)") == 1, server.output
    recorded = [line.split() for line in events.read_text().splitlines()]
    startups = {int(pid) for event, pid in recorded if event == "startup"}
    shutdowns = {int(pid) for event, pid in recorded if event == "shutdown"}
    assert startups == shutdowns == set(pids.values()), events.read_text()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


# -- 6. immediate stop ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["second_SIGINT", "SIGQUIT"])
def test_immediate_stop_does_not_wait_for_in_flight_requests(corral, how: str):
    server = corral("run", "plain:app", "--port", "0", "--graceful-timeout", "15")
    url = server.url()
    server.wait_workers(1)

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, f"{url}/slow?seconds=30", timeout=20)
        server.wait_accepted(_port(url), 1)
        if how == "second_SIGINT":
            server.send(signal.SIGINT)
            server.wait_for(r"SIGINT: stopping gracefully")
            # The first SIGINT drains, it does not stop at once: the worker is draining.
            server.wait_status(
                "web.1 draining",
                lambda status: (
                    [r["state"] for r in status["processes"] if r["name"] == "web.1"]
                    == ["draining"]
                ),
            )
            assert server.proc.poll() is None, "the first SIGINT should drain, not stop at once"
            stopped_at = time.monotonic()
            server.send(signal.SIGINT)
            server.wait_for(r"SIGINT: stopping at once", timeout=2)
        else:
            stopped_at = time.monotonic()
            server.send(signal.SIGQUIT)
            server.wait_for(r"SIGQUIT: stopping at once", timeout=2)
        code = server.wait(5)
        took = time.monotonic() - stopped_at
        with pytest.raises(httpx.TransportError):
            slow.result(timeout=5)

    assert took < 2.5, f"the manager took {took:.1f}s to stop at once\n{server.output}"
    assert code == 0, server.output
    left = server.wait_until_gone(5)
    assert not left, f"processes left after the manager exited: {left}\n{server.output}"


# -- 7. scaling with TTIN / TTOU ---------------------------------------------------------


def test_ttin_adds_a_worker_and_ttou_drains_the_highest_one_finishing_its_requests(corral):
    server = corral("run", "plain:app", "--port", "0", "--graceful-timeout", "10")
    url = server.url()
    web1 = server.wait_workers(1)["web.1"]
    mark = server.mark()

    server.send(signal.SIGTTIN)
    server.wait_for(r"scaling web to 2 workers", after=mark)
    web2 = int(server.wait_for(r"web\.2 started \(pid (\d+)\)", after=mark).group(1))
    assert server.wait_workers(2) == {"web.1": web1, "web.2": web2}

    # A client whose keep-alive connection is on web.2, so its slow request surely is too.
    pinned = _client_on(url, "web.2", web2)
    with closing(pinned), ThreadPoolExecutor(8) as pool:
        on_web2 = pool.submit(pinned.get, f"{url}/slow?seconds=2")
        others = [
            pool.submit(httpx.get, f"{url}/slow?seconds=2", headers=CLOSE, timeout=20)
            for _ in range(6)
        ]
        server.wait_accepted(_port(url), 7)
        mark = server.mark()
        server.send(signal.SIGTTOU)
        server.wait_for(r"scaling web to 1 worker\b", after=mark)
        server.wait_for(rf"web\.2 stopped \(pid {web2}, exit code 0\)", after=mark, timeout=15)
        responses = [on_web2.result(timeout=15), *(f.result(timeout=15) for f in others)]

    assert [r.status_code for r in responses] == [200] * 7
    assert _served_by(responses[0]) == ("web.2", web2)
    # web.2 does not come back: its exit was handled (the line above) and a restart would be
    # decided there; the manager, asked after, knows web.1 alone.
    assert server.worker_states() == [("web.1", web1, "ready")]
    assert server.worker_pids() == {"web.1": web1}
    _request_until_served_by(url, "web.1", web1)
    mark = server.mark()
    server.send(signal.SIGTTOU)  # at one worker: refused, and said
    server.wait_for(r"SIGTTOU: nothing changes: web needs at least 1 worker", after=mark)
    assert server.worker_pids() == {"web.1": web1}
    assert server.stop() == 0
    assert server.count(r"web\.2 started") == 1, server.output  # not until the very end


def test_ttou_closes_idle_keep_alive_on_the_drained_worker_cleanly_and_others_serve_on(corral):
    server = corral("run", "plain:app", "--workers", "2", "--port", "0", "--graceful-timeout", "10")
    url = server.url()
    pids = server.wait_workers(2)
    idle, body = _keep_alive_connection(url, worker="web.2")
    assert body.split()[:2] == ["web.2", str(pids["web.2"])]

    # Keep web.2 draining for a while: a slow request on a connection pinned to it.
    pinned = _client_on(url, "web.2", pids["web.2"])
    with closing(pinned), ThreadPoolExecutor(1) as pool:
        slow = pool.submit(pinned.get, f"{url}/slow?seconds=3")
        server.wait_accepted(_port(url), 2)
        mark = server.mark()
        server.send(signal.SIGTTOU)
        server.wait_for(r"scaling web to 1 worker\b", after=mark)

        assert _sees_clean_close(idle, timeout=5) == b""
        assert not slow.done(), "the idle connection should be closed while requests finish"
        # While web.2 drains, a fresh client is served, by web.1.
        fresh = httpx.get(url, headers=CLOSE, timeout=5)
        assert fresh.status_code == 200
        assert _served_by(fresh) == ("web.1", pids["web.1"])
        assert slow.result(timeout=15).status_code == 200

    server.wait_for(rf"web\.2 stopped \(pid {pids['web.2']}, exit code 0\)", after=mark)
    assert server.stop() == 0


def _launchers(server) -> list:
    return [p for p in server.alive() if p.cmdline()[:1] == ["corral: launcher"]]


def test_a_killed_launcher_is_replaced_and_web_serves_again_from_new_workers(corral, tmp_path):
    """Its zygotes and their workers go with it; a new launcher forks new ones, and the jobs
    zygote too: the schedule goes on."""
    (tmp_path / "corral.toml").write_text(
        """
        [web]
        app = "plain:app"
        port = 0
        workers = 2

        [jobs.tick]
        call = "ticks:tick"
        every = "0.5s"
        """.replace("\n        ", "\n")
    )
    (tmp_path / "ticks.py").write_text(
        "import time\n\n\ndef tick():\n"
        "    with open('ticks.txt', 'a') as f:\n        f.write(f'{time.time()}\\n')\n"
    )
    shutil.copy(APPS / "plain.py", tmp_path / "plain.py")
    server = corral("run", "--graceful-timeout", "5", cwd=tmp_path)
    url = server.url()
    old = set(server.wait_workers(2).values())
    (launcher,) = _launchers(server)
    zygotes = {row["pid"] for row in server.status()["processes"] if row["kind"] == "zygote"}
    assert len(zygotes) == 2, server.status()

    launcher.kill()
    killed = time.time()
    server.wait_for(r"the launcher exited \(killed by SIGKILL\): starting a new one$")
    new = server.wait_status(
        "two new workers ready",
        lambda status: (
            {
                row["pid"]
                for row in status["processes"]
                if row["kind"] == "worker" and row["state"] == "ready"
            }.isdisjoint(old)
            and sum(row["state"] == "ready" for row in status["processes"]) == 2
        ),
        timeout=20,
    )
    for row in new["processes"]:
        if row["kind"] == "worker":
            _request_until_served_by(url, row["name"], row["pid"])
    server.wait_status(
        "two new zygotes running",
        lambda status: (
            {row["pid"] for row in status["processes"] if row["kind"] == "zygote"}.isdisjoint(
                zygotes
            )
            and sum(row["kind"] == "zygote" for row in status["processes"]) == 2
        ),
    )
    (replacement,) = _launchers(server)
    assert replacement.pid != launcher.pid
    assert replacement.ppid() == server.pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the job's runs come from the new jobs zygote
        written = tmp_path / "ticks.txt"
        ticks = [float(t) for t in written.read_text().split()] if written.exists() else []
        if any(t > killed + 1 for t in ticks):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"no run of the job since the kill:\n{server.output}")
    assert server.stop() == 0


def test_a_zygote_killed_while_it_loads_is_started_again_not_taken_for_a_broken_app(
    corral, tmp_path
):
    """The web zygote dies; its replacement, still importing the app, dies with the launcher.
    That is not an app that cannot load: another zygote loads it, and web serves again."""
    shutil.copy(APPS / "plain.py", tmp_path / "plain.py")
    (tmp_path / "slow.py").write_text("import time\n\ntime.sleep(1.5)\nfrom plain import app\n")
    server = corral("run", "slow:app", "--port", "0", "--workers", "2", cwd=tmp_path)
    url = server.url()
    old = set(server.wait_workers(2).values())
    (zygote,) = [row["pid"] for row in server.status()["processes"] if row["kind"] == "zygote"]
    os.kill(zygote, signal.SIGKILL)
    server.wait_for(r"web\.zygote exited unexpectedly \(killed by SIGKILL\)")
    deadline = time.monotonic() + 5
    while not [p for p in server.alive() if " ".join(p.cmdline()).strip() == "corral: web.zygote"]:
        assert time.monotonic() < deadline, server.output
        time.sleep(0.01)
    (launcher,) = _launchers(server)  # while the new zygote imports the app (1.5 s)
    launcher.kill()
    new = server.wait_status(
        "two new workers ready",
        lambda status: (
            sum(row["state"] == "ready" and row["pid"] not in old for row in status["processes"])
            == 2
        ),
        timeout=30,
    )
    for row in new["processes"]:
        if row["kind"] == "worker":
            _request_until_served_by(url, row["name"], row["pid"])
    assert "cannot" not in server.output
    assert server.stop() == 0


def test_a_dead_zygote_whose_replacement_cannot_load_the_app_stops_corral_saying_why(
    corral, tmp_path
):
    shutil.copy(APPS / "plain.py", tmp_path / "plain.py")
    server = corral("run", "plain:app", "--port", "0", "--workers", "2", cwd=tmp_path)
    server.url()
    server.wait_workers(2)
    (tmp_path / "plain.py").write_text("def app(:\n")  # a deploy broke the code meanwhile
    (zygote,) = [row["pid"] for row in server.status()["processes"] if row["kind"] == "zygote"]
    os.kill(zygote, signal.SIGKILL)
    assert _exits_on_its_own(server) == 1
    assert server.count(r"SyntaxError") >= 1
    assert server.count(r"^corral +\| error: web\.zygote's replacement cannot load the app") == 1


# -- 8. a manager killed with SIGKILL leaves nothing behind -------------------------------


def test_manager_killed_with_sigkill_takes_zygote_and_workers_down_and_frees_the_port(corral):
    server = corral("run", "plain:app", "--workers", "2", "--port", "0")
    url = server.url()
    port = _port(url)
    server.wait_workers(2)
    assert httpx.get(url, timeout=5).status_code == 200
    deadline = time.monotonic() + 5
    while len(server.alive()) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    titles = sorted(" ".join(p.cmdline()).strip() for p in server.alive())
    assert titles == [
        "corral: launcher",
        "corral: manager",
        "corral: web.1",
        "corral: web.2",
        "corral: web.zygote",
    ]

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, f"{url}/slow?seconds=1", timeout=10)
        server.wait_accepted(port, 1)
        # stop() waits for the manager, then checks every process of its tree is gone within 5 s.
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        response = slow.result(timeout=10)

    assert response.status_code == 200, "the orphaned workers drain: in-flight requests finish"

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))  # raises EADDRINUSE if anything still listens there
        probe.listen()


def test_full_stop_answers_the_connections_waiting_in_the_backlog(corral):
    """Nobody else will accept them: a stopping worker takes the queue before it drains."""
    server = corral("run", "plain:app", "--port", "0", "--workers", "1")
    url = server.url()
    server.wait_workers(1)
    with ThreadPoolExecutor(6) as pool:
        blocking = pool.submit(httpx.get, f"{url}/block?seconds=1.5", timeout=10)
        time.sleep(0.3)  # the only worker's loop is blocked: new connections wait in the backlog
        queued = [
            pool.submit(httpx.get, f"{url}/", headers={"connection": "close"}, timeout=10)
            for _ in range(5)
        ]
        time.sleep(0.3)
        server.send(signal.SIGTERM)
        statuses = [future.result(15).status_code for future in queued]
        assert blocking.result(15).status_code == 200
    assert statuses == [200] * 5
    assert server.wait(20) == 0
    assert not server.wait_until_gone(5)


def test_a_first_worker_that_dies_before_serving_stops_corral_once_whatever_its_exit(
    corral, tmp_path
):
    """Not a restart storm: an app that cannot start is said once, exit 3 (the design)."""
    (tmp_path / "dies.py").write_text("import os\n\nos._exit(7)\n")
    server = corral("run", "dies:app", "--port", "0", "--no-preload", cwd=tmp_path)
    assert server.wait(30) == 3, server.output
    assert server.count(r"the app cannot start") == 1, server.output
    assert server.count(r"restarts in") == 0, server.output


def _scale(server, count: int) -> subprocess.CompletedProcess[str]:
    control = str(server.control_socket())
    return subprocess.run(
        [sys.executable, "-m", "corral", "scale", f"web={count}", "--control", control],
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_sigquit_while_many_workers_start_stops_at_once_and_leaves_nothing(corral):
    server = corral("run", "plain:app", "--port", "0", "--workers", "2")
    server.wait_workers(2)
    assert _scale(server, 40).returncode == 0
    started = time.monotonic()
    server.send(signal.SIGQUIT)
    assert server.wait(30) == 0, server.output
    assert time.monotonic() - started < 10, server.output
    assert not server.wait_until_gone(5), server.output


def test_a_scale_past_what_corral_runs_is_refused(corral):
    server = corral("run", "plain:app", "--port", "0")
    server.wait_workers(1)
    refused = _scale(server, 100_000)
    assert refused.returncode == 1, refused
    assert "100000 workers is more than corral runs (1024)" in refused.stderr, refused.stderr
    assert server.stop() == 0
