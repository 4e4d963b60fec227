"""Rolling reloads, tested on real processes: SIGHUP under load, new code served, broken deploys
that never take the site down, TLS certificates re-read, --reload, a reload refused while one is
under way, slow requests finishing on the old workers, and an old worker that keeps serving
until its replacement is ready.

The apps that change between reloads are written under tmp_path, where corral runs.
"""

from __future__ import annotations

import re
import signal
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
import trustme

from conftest import APPS, load_result, start_load

CLOSE = {"connection": "close"}
# A module rewritten within the same second at the same size would keep its stale .pyc (CPython
# checks the source's mtime in whole seconds and its size); no bytecode cache, no such doubt.
NO_PYC = {"PYTHONDONTWRITEBYTECODE": "1"}
ZYGOTE = "corral: web.zygote"


# -- the app that changes between reloads -------------------------------------------------

APP_BODY = """

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.sleep(STARTUP_DELAY)
                if FAIL_STARTUP:
                    failed = {"type": "lifespan.startup.failed", "message": "no database"}
                    await send(failed)
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/slow":
        query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)
        await asyncio.sleep(float(query.get("seconds", "2")))
    body = f"{VERSION} {os.environ['CORRAL_WORKER_ID']} {os.getpid()}".encode()
    start = {"type": "http.response.start", "status": 200, "headers": []}
    await send(start)
    await send({"type": "http.response.body", "body": body})
"""


def _write_app(
    directory: Path,
    version: str,
    *,
    at_import: str = "",
    startup_delay: float = 0.0,
    fail_startup: bool = False,
) -> None:
    """deployed.py: an app whose every response starts with `version`."""
    header = [
        "import asyncio",
        "import os",
        "",
        f"VERSION = {version!r}",
        f"STARTUP_DELAY = {startup_delay!r}",
        f"FAIL_STARTUP = {fail_startup!r}",
        at_import,
    ]
    (directory / "deployed.py").write_text("\n".join(header) + APP_BODY)


# -- helpers --------------------------------------------------------------------------------


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _count_after(server, pattern: str, after: int) -> int:
    regex = re.compile(pattern)
    return sum(1 for line in server.lines[after:] if regex.search(line))


def _parse(response: httpx.Response) -> tuple[str, str, int]:
    """(version, worker name, pid) from one of deployed.py's responses."""
    version, name, pid = response.text.split()
    return version, name, int(pid)


def _sample(
    url: str,
    names: set[str],
    verify: ssl.SSLContext | bool = True,
    at_least: int = 20,
    seconds: float = 0.0,
    timeout: float = 10,
) -> set[tuple[str, str, int]]:
    """What fresh connections are answered with, for `seconds` at least and until every worker
    in `names` has answered.

    Each request is on a new connection (`Connection: close`), so that any worker accepting
    from the socket may answer it; every response must be a 200.
    """
    seen: set[tuple[str, str, int]] = set()
    sent = 0
    started = time.monotonic()
    with httpx.Client(timeout=5, verify=verify) as client:
        while time.monotonic() < started + timeout:
            response = client.get(url, headers=CLOSE)
            assert response.status_code == 200, response.text
            seen.add(_parse(response))
            sent += 1
            done = sent >= at_least and time.monotonic() >= started + seconds
            if done and names <= {name for _, name, _ in seen}:
                return seen
    raise AssertionError(f"not every one of {sorted(names)} answered within {timeout}s: {seen}")


def _served_only(seen: set[tuple[str, str, int]], version: str, pids: dict[str, int]) -> None:
    """Every response came from one of the workers `pids`, running `version`."""
    expected = f"only {version}, from {sorted(pids.items())}"
    assert {v for v, _, _ in seen} == {version}, f"answered {sorted(seen)}; expected {expected}"
    assert {(name, pid) for _, name, pid in seen} == set(pids.items()), (seen, pids)


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()).strip()
    except psutil.Error:
        return ""


def _zygotes(server) -> list[int]:
    return [p.pid for p in server.alive() if _title(p) == ZYGOTE]


def _one_zygote(server, timeout: float = 10) -> int:
    """Wait until exactly one zygote is left in the tree (retired ones exit); return its pid."""
    deadline = time.monotonic() + timeout
    while True:
        zygotes = _zygotes(server)
        if len(zygotes) == 1:
            return zygotes[0]
        if time.monotonic() > deadline:
            titles = sorted(_title(p) for p in server.alive())
            raise AssertionError(f"expected one zygote, have {titles}\n{server.output}")
        time.sleep(0.05)


def _expected_tree(workers: int) -> list[str]:
    """Manager, one zygote, web.1..web.N: the titles of a settled tree, sorted."""
    titles = ["corral: launcher", "corral: manager", ZYGOTE]
    return sorted([*titles, *(f"corral: web.{i}" for i in range(1, workers + 1))])


def _tree(server, workers: int, timeout: float = 10) -> list[str]:
    """The titles of the tree, once it has settled to `_expected_tree(workers)` (or timed out)."""
    expected = _expected_tree(workers)
    deadline = time.monotonic() + timeout
    titles: list[str] = []
    while time.monotonic() < deadline:
        titles = sorted(_title(p) for p in server.alive())
        if titles == expected:
            return titles
        time.sleep(0.05)
    return titles


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _retired(server, old: dict[str, int], after: int, timeout: float = 15) -> dict[str, int]:
    """Wait until every old worker has drained and stopped; return the new workers' pids."""
    for name, pid in old.items():
        server.wait_for(rf"{name} stopped \(pid {pid}, exit code 0\): reload", timeout, after)
    new = server.wait_workers(len(old))
    assert not set(new.values()) & set(old.values()), (old, new)
    return new


def _reload(server, outcome: str = r"reload complete", timeout: float = 15) -> int:
    """SIGHUP, then wait for the line saying how the reload ended; return the mark before it."""
    mark = server.mark()
    server.send(signal.SIGHUP)
    server.wait_for(r"SIGHUP: reloading", after=mark, timeout=5)
    server.wait_for(outcome, after=mark, timeout=timeout)
    return mark


# -- 1. SIGHUP under load loses nothing -------------------------------------------------------


@pytest.mark.parametrize("workers", [2, 4])
def test_two_sighup_reloads_under_load_lose_no_request_and_leave_new_workers_one_zygote(
    corral, workers: int
):
    server = corral("run", "plain:app", "--workers", str(workers), "--port", "0", cwd=APPS)
    url = server.url()
    before = server.wait_workers(workers)
    first_zygote = _one_zygote(server)
    seconds = 6

    load = start_load(url, seconds, connections=32)
    started = time.monotonic()
    try:
        marks = []
        for at in (1.5, 3.5):  # both reloads well inside the load
            time.sleep(max(0.0, started + at - time.monotonic()))
            marks.append(_reload(server, rf"reload complete: {workers} workers on the new code"))
        assert load.poll() is None, "the reloads should finish while the load still runs"
    finally:
        result = load_result(load)

    print(f"{workers} workers: {result.requests} requests, {result.failures} failures")
    assert result.failures == 0, result.report
    assert result.requests >= 5000, result.report
    assert server.count(r"reload complete") == 2, server.output
    assert server.count(r"reload failed") == 0, server.output
    after = server.wait_workers(workers)
    assert sorted(after) == [f"web.{i}" for i in range(1, workers + 1)]
    assert not set(after.values()) & set(before.values()), (before, after)
    # The first reload replaced every worker, and so did the second: 2N replacements.
    assert _count_after(server, r"runs the old code: replacing it \(reload\)", marks[0]) == (
        2 * workers
    ), server.output
    # Manager, one zygote, web.1..web.N: no old worker or zygote is left.
    assert _tree(server, workers) == _expected_tree(workers)
    assert _one_zygote(server) != first_zygote
    for pid in before.values():
        assert _gone(pid), f"old worker {pid} still runs\n{server.output}"
    assert server.stop() == 0


# -- 2. a reload serves the new code -----------------------------------------------------------


@pytest.mark.parametrize("preload", ["--preload", "--no-preload"])
def test_reload_serves_the_new_code_from_every_worker(corral, tmp_path: Path, preload: str):
    _write_app(tmp_path, "v1")
    server = corral(
        "run", "deployed:app", "--workers", "2", "--port", "0", preload, cwd=tmp_path, env=NO_PYC
    )
    url = server.url()
    old = server.wait_workers(2)
    _served_only(_sample(url, {"web.1", "web.2"}), "v1", old)

    # From the moment a reload is said to be complete, fresh connections get the new code only:
    # a deploy script that waits for this line, then checks the site, sees the new version.
    # Three reloads, each checked for half a second at once, so that a race is seen.
    served = []
    for version in ("v2", "v3", "v4"):
        _write_app(tmp_path, version)
        mark = _reload(server, r"reload complete: 2 workers on the new code")
        seen = _sample(url, {"web.1", "web.2"}, seconds=0.5)
        old = _retired(server, old, mark)
        served.append((seen, version, old))
    assert server.stop() == 0
    for seen, version, pids in served:
        _served_only(seen, version, pids)


def test_a_worker_that_dies_after_a_reload_is_replaced(corral, tmp_path: Path):
    """The replacement a reload started is a worker like any other once it serves."""
    _write_app(tmp_path, "v1")
    server = corral("run", "deployed:app", "--workers", "2", "--port", "0", cwd=tmp_path)
    url = server.url()
    old = server.wait_workers(2)
    _write_app(tmp_path, "v2")
    mark = _reload(server, r"reload complete: 2 workers on the new code")
    new = _retired(server, old, mark)
    mark = server.mark()
    psutil.Process(new["web.2"]).kill()
    server.wait_for(r"web\.2 exited \(pid \d+, killed by SIGKILL\)", after=mark)
    server.wait_for(r"web\.2 started \(pid \d+\)", after=mark)
    replaced = server.wait_workers(2)
    assert replaced["web.2"] != new["web.2"]
    assert {httpx.get(url, headers=CLOSE).text.split()[0] for _ in range(10)} == {"v2"}
    assert server.stop() == 0


# -- 3. a broken deploy never takes the site down ----------------------------------------------

BROKEN_CODE = {
    # case: (what deployed.py runs at import, what its traceback must show)
    "syntax_error": ("def broken(:\n    pass\n", r"SyntaxError"),
    "raises_at_import": ('raise RuntimeError("boom at import")\n', r"RuntimeError: boom at import"),
}


@pytest.mark.parametrize("preload", ["--preload", "--no-preload"])
@pytest.mark.parametrize("case", list(BROKEN_CODE))
def test_reload_to_code_that_cannot_import_keeps_the_old_workers_serving(
    corral, tmp_path: Path, case: str, preload: str
):
    at_import, cause = BROKEN_CODE[case]
    _write_app(tmp_path, "v1")
    server = corral(
        "run", "deployed:app", "--workers", "2", "--port", "0", preload, cwd=tmp_path, env=NO_PYC
    )
    url = server.url()
    old = server.wait_workers(2)
    zygote = _one_zygote(server)

    _write_app(tmp_path, "v2", at_import=at_import)
    mark = _reload(server, r"reload failed")

    server.wait_for(cause, after=mark)
    # With preload the new zygote cannot import it; without, the first new worker cannot.
    assert _count_after(server, r"reload failed", mark) == 1, server.output
    assert _count_after(server, r"reload complete", mark) == 0, server.output
    assert server.worker_pids() == old
    _served_only(_sample(url, {"web.1", "web.2"}), "v1", old)
    assert _one_zygote(server) == zygote, "the old zygote must stay, the new one go"
    assert _tree(server, 2) == _expected_tree(2)

    _write_app(tmp_path, "v3")
    mark = _reload(server, r"reload complete: 2 workers on the new code")
    new = _retired(server, old, mark)
    _served_only(_sample(url, {"web.1", "web.2"}), "v3", new)
    assert _one_zygote(server) != zygote
    assert server.stop() == 0


def test_reload_to_code_whose_lifespan_startup_fails_keeps_the_old_workers_serving(
    corral, tmp_path: Path
):
    _write_app(tmp_path, "v1")
    server = corral(
        "run", "deployed:app", "--workers", "2", "--port", "0", cwd=tmp_path, env=NO_PYC
    )
    url = server.url()
    old = server.wait_workers(2)
    zygote = _one_zygote(server)

    _write_app(tmp_path, "v2", fail_startup=True)
    mark = _reload(server, r"reload failed: the new code did not start")

    failed = int(server.wait_for(r"web\.1 started \(pid (\d+)\)", after=mark).group(1))
    assert failed not in old.values()
    server.wait_for(r"no database", after=mark)
    assert _count_after(server, r"web\.\d+ started", mark) == 1, "one failure, no retry storm"
    assert _count_after(server, r"reload complete", mark) == 0, server.output
    deadline = time.monotonic() + 5
    while not _gone(failed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(failed), f"the failed new worker {failed} is still there\n{server.output}"
    assert server.worker_pids() == old
    _served_only(_sample(url, {"web.1", "web.2"}), "v1", old)
    assert _one_zygote(server) == zygote, "the old zygote must stay, the new one go"
    assert _tree(server, 2) == _expected_tree(2)

    _write_app(tmp_path, "v3")
    mark = _reload(server, r"reload complete: 2 workers on the new code")
    new = _retired(server, old, mark)
    _served_only(_sample(url, {"web.1", "web.2"}), "v3", new)
    assert _one_zygote(server) != zygote
    assert server.stop() == 0


# -- 4. TLS certificates are re-read on reload -------------------------------------------------


def _install(certificate: trustme.LeafCert, certfile: Path, keyfile: Path) -> None:
    certfile.write_bytes(b"".join(blob.bytes() for blob in certificate.cert_chain_pems))
    keyfile.write_bytes(certificate.private_key_pem.bytes())


def _trusting(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


def test_reload_reads_the_tls_certificate_files_again(corral, tmp_path: Path):
    authority_a, authority_b = trustme.CA(), trustme.CA()
    cert_a = authority_a.issue_cert("127.0.0.1")
    cert_b = authority_b.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    _install(cert_a, certfile, keyfile)
    server = corral(
        "run",
        "plain:app",
        "--workers",
        "2",
        "--port",
        "0",
        "--certfile",
        str(certfile),
        "--keyfile",
        str(keyfile),
        cwd=APPS,
    )
    url = server.url()
    assert url.startswith("https://127.0.0.1:"), url
    old = server.wait_workers(2)
    trusts_a, trusts_b = _trusting(authority_a), _trusting(authority_b)
    assert httpx.get(url, verify=trusts_a, headers=CLOSE, timeout=5).status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url, verify=trusts_b, headers=CLOSE, timeout=5)

    _install(cert_b, certfile, keyfile)
    mark = _reload(server, r"reload complete: 2 workers on the new code")

    new = _retired(server, old, mark)
    seen: set[tuple[str, int]] = set()
    with httpx.Client(verify=trusts_b, timeout=5) as client:
        for _ in range(20):
            response = client.get(url, headers=CLOSE)
            assert response.status_code == 200
            name, pid = response.text.split()[:2]
            seen.add((name, int(pid)))
    assert seen <= set(new.items()), (seen, new)
    for _ in range(10):  # whichever worker accepts, certificate A is no longer served
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url, verify=trusts_a, headers=CLOSE, timeout=5)
    assert server.stop() == 0


# -- 5. --reload, for development --------------------------------------------------------------


def test_dev_reload_follows_python_file_changes_and_ignores_other_files(corral, tmp_path: Path):
    _write_app(tmp_path, "v1")
    server = corral(
        "run", "deployed:app", "--workers", "2", "--port", "0", "--reload", cwd=tmp_path, env=NO_PYC
    )
    url = server.url()
    server.wait_for(r"watching .* for changes to \.py files \(--reload\)")
    old = server.wait_workers(2)
    _served_only(_sample(url, {"web.1", "web.2"}), "v1", old)

    mark = server.mark()
    _write_app(tmp_path, "v2")
    changed = server.wait_for(r"changed: (.*)$", after=mark, timeout=10).group(1)
    assert changed.split(", ") == ["deployed.py"], changed
    server.wait_for(r"reload complete: 2 workers on the new code", after=mark)
    new = _retired(server, old, mark)
    _served_only(_sample(url, {"web.1", "web.2"}), "v2", new)
    assert _count_after(server, r"changed:", mark) == 1, "one write, one reload"
    assert _count_after(server, r"reloading: loading", mark) == 1, server.output

    # Other files do not reload. A .py file written after them is noticed: by then they were
    # seen and filtered out, not reported in its batch or in one of their own before it.
    mark = server.mark()
    (tmp_path / "notes.txt").write_text("not code\n")
    (tmp_path / "settings.toml").write_text("debug = true\n")
    (tmp_path / "helpers.py").write_text("HELPING = True\n")
    changed = server.wait_for(r"changed: (.*)$", after=mark, timeout=10).group(1)
    assert changed.split(", ") == ["helpers.py"], server.output
    server.wait_for(r"reload complete: 2 workers on the new code", after=mark)
    assert _count_after(server, r"changed:", mark) == 1, server.output
    assert _count_after(server, r"reloading: loading", mark) == 1, server.output
    assert server.stop() == 0


# -- 6. one reload at a time -------------------------------------------------------------------


def test_sighup_during_a_reload_is_not_lost_another_reload_follows_it(corral, tmp_path: Path):
    """A change made while a reload is under way is applied by one more reload after it (as
    gunicorn reloads on every HUP), not ignored; several HUPs meanwhile make one."""
    _write_app(tmp_path, "v1")
    server = corral(
        "run", "deployed:app", "--workers", "2", "--port", "0", cwd=tmp_path, env=NO_PYC
    )
    url = server.url()
    old = server.wait_workers(2)

    _write_app(tmp_path, "v2", startup_delay=1.0)  # each new worker takes a second to start
    mark = server.mark()
    server.send(signal.SIGHUP)
    server.wait_for(r"reloading: loading the current code in a new zygote", after=mark)
    _write_app(tmp_path, "v3")  # changed again while the reload of v2 goes on
    server.send(signal.SIGHUP)
    server.send(signal.SIGHUP)
    queued = server.line_index(r"a reload is under way; another follows it", after=mark)
    first = server.line_index(r"reload complete: 2 workers on the new code", after=mark)
    again = server.line_index(r"reloading again: a reload was asked for", after=mark)
    assert queued < first < again, server.output
    server.wait_for(r"reload complete: 2 workers on the new code", after=again, timeout=20)

    deadline = time.monotonic() + 15
    while _count_after(server, r"\bstopped \(pid \d+, exit code 0\): reload", mark) < 4:
        assert time.monotonic() < deadline, server.output
        time.sleep(0.05)
    new = server.wait_workers(2)
    assert not set(new.values()) & set(old.values()), (old, new)
    _served_only(_sample(url, {"web.1", "web.2"}), "v3", new)
    assert server.stop() == 0
    assert _count_after(server, r"reloading: loading", mark) == 2, server.output
    assert _count_after(server, r"reload complete", mark) == 2, server.output
    assert _count_after(server, r"web\.\d+ started", mark) == 4, server.output


# -- 7. slow requests finish on the old workers ------------------------------------------------


def test_slow_requests_in_flight_on_old_workers_complete_through_a_reload(corral, tmp_path: Path):
    _write_app(tmp_path, "v1")
    server = corral(
        "run", "deployed:app", "--workers", "2", "--port", "0", cwd=tmp_path, env=NO_PYC
    )
    url = server.url()
    old = server.wait_workers(2)

    _write_app(tmp_path, "v2")
    with ThreadPoolExecutor(4) as pool:
        slow = [
            pool.submit(httpx.get, f"{url}/slow?seconds=4", headers=CLOSE, timeout=20)
            for _ in range(4)
        ]
        server.wait_accepted(_port(url), 4)
        mark = _reload(server, r"reload complete: 2 workers on the new code")
        assert not any(f.done() for f in slow), "the reload should end while they are in flight"
        for name, pid in old.items():  # each old worker was replaced, requests in flight
            server.wait_for(rf"{name} \(pid {pid}\) runs the old code: replacing it", after=mark)
        responses = [f.result(timeout=15) for f in slow]

    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    served = [_parse(r) for r in responses]
    assert {version for version, _, _ in served} == {"v1"}, served
    assert {(name, pid) for _, name, pid in served} <= set(old.items()), (served, old)
    new = _retired(server, old, mark)
    _served_only(_sample(url, {"web.1", "web.2"}), "v2", new)
    assert server.stop() == 0


# -- 8. the old worker serves until its replacement is ready ------------------------------------


def _replace_web_1(server, how: str, cwd: Path) -> None:
    """Have web.1 replaced: by SIGHUP (a reload), or by `corral restart web.1`."""
    if how == "SIGHUP":
        server.send(signal.SIGHUP)
        return
    done = subprocess.run(
        [sys.executable, "-m", "corral", "restart", "web.1"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "restarting web.1"), done


@pytest.mark.parametrize("how", ["SIGHUP", "corral restart web.1"])
def test_the_old_worker_serves_at_once_while_its_replacement_is_still_starting(
    corral, tmp_path: Path, how: str
):
    """Capacity never drops: the old worker drains only once its replacement is ready.

    The replacement runs v2, whose lifespan startup takes 2 s; 0.7 s into it, a fresh
    connection is answered at once, by the old worker, running v1. (Without --preload
    a restarted worker imports the current code too, so both ways start v2.)
    """
    _write_app(tmp_path, "v1")
    server = corral("run", "deployed:app", "--port", "0", "--no-preload", cwd=tmp_path, env=NO_PYC)
    url = server.url()
    old = server.wait_workers(1)["web.1"]
    assert _parse(httpx.get(url, headers=CLOSE, timeout=5)) == ("v1", "web.1", old)

    _write_app(tmp_path, "v2", startup_delay=2.0)
    mark = server.mark()
    _replace_web_1(server, how, tmp_path)
    server.wait_for(rf"web\.1 \(pid {old}\) .*: replacing it", after=mark, timeout=10)
    new = int(server.wait_for(r"web\.1 started \(pid (\d+)\)", after=mark, timeout=10)[1])
    time.sleep(0.7)  # into the replacement's 2 s startup: it cannot answer yet
    sent = time.monotonic()
    response = httpx.get(url, headers=CLOSE, timeout=5)
    took = time.monotonic() - sent

    assert response.status_code == 200, response.text
    assert _parse(response) == ("v1", "web.1", old), f"{response.text}\n{server.output}"
    assert took < 0.5, f"answered after {took:.2f}s: the old worker no longer accepted"
    server.wait_for(rf"web\.1 stopped \(pid {old}, exit code 0\)", after=mark, timeout=15)
    assert server.wait_workers(1) == {"web.1": new}
    assert _parse(httpx.get(url, headers=CLOSE, timeout=5)) == ("v2", "web.1", new)
    assert server.stop() == 0


def test_corral_restart_web_replaces_every_worker_with_the_same_code(corral, tmp_path: Path):
    """`corral restart web` is not a reload: each worker is replaced (replacement first) from
    the zygote that runs now, so new code on disk is not loaded, and the cause is `restart`."""
    _write_app(tmp_path, "v1")
    server = corral(
        "run", "deployed:app", "--port", "0", "--workers", "2", cwd=tmp_path, env=NO_PYC
    )
    url = server.url()
    old = server.wait_workers(2)
    _served_only(_sample(url, {"web.1", "web.2"}), "v1", old)
    _write_app(tmp_path, "v2")  # on disk, not loaded by a restart
    mark = server.mark()
    done = subprocess.run(
        [sys.executable, "-m", "corral", "restart", "web"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done
    assert done.stdout.strip() == "restarting web (one worker at a time, each replacement first)"
    server.wait_for(r"restart of web complete: 2 workers replaced", after=mark, timeout=20)
    for name, pid in old.items():
        server.wait_for(rf"{name} stopped \(pid {pid}, exit code 0\): restart", 15, mark)
    new = server.wait_workers(2)
    assert not set(new.values()) & set(old.values()), (old, new)
    _served_only(_sample(url, {"web.1", "web.2"}), "v1", new)
    assert not [line for line in server.lines[mark:] if "reload" in line], server.output
    assert server.stop() == 0
