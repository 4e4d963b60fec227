"""The control API and its CLI verbs against a real `corral run`.

Every verb through the real CLI (status, scale, restart, reload, stop, jobs run, logs), what the
CLI says when no corral runs, the control socket's mode, the TCP listener and its token, /readyz
while a worker boots, /metrics summed over the workers (corral's own counters and the app's
prometheus_client ones), and `--log-format json`.

Each test writes a corral.toml, an app (`live.py`) and `tasks.py` into tmp_path and runs corral
there; the CLI, run as a subprocess with that directory as its cwd, finds the corral's default
control socket by itself. The tests read the process tree (process titles) to check what the
CLI and the API report.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Corral
from corral.control.address import control_folder, control_path, control_paths

T = TypeVar("T")

CLI_TIMEOUT = 30  # seconds a CLI call may take
REQUEST_TIMEOUT = 10

LIVE_APP = '''
"""An ASGI app for the control tests: every response is "WORKER_ID PID".

/print?text=T prints T, /log?text=T logs it as a warning; every request counts in the
prometheus_client counter app_hits. LIVE_BOOT_SECONDS delays the lifespan startup.
"""

import asyncio
import logging
import os
from urllib.parse import parse_qs

from prometheus_client import Counter

HITS = Counter("app_hits", "Requests this app served.")
BOOT_SECONDS = float(os.environ.get("LIVE_BOOT_SECONDS", "0"))


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.sleep(BOOT_SECONDS)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    HITS.inc()
    text = parse_qs(scope["query_string"].decode()).get("text", [""])[0]
    if scope["path"] == "/print":
        print(text, flush=True)
    elif scope["path"] == "/log":
        logging.getLogger("live").warning(text)
    body = f"{os.environ['CORRAL_WORKER_ID']} {os.getpid()}".encode()
    headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
'''

TASKS = """
import os
import time


def work():
    print(f"worker {os.environ['CORRAL_REPLICA']} up", flush=True)
    time.sleep(3600)


def nap():
    print("nap started", flush=True)
    time.sleep(2)
    print("nap done", flush=True)
"""

NAP_JOB = """
[jobs.nap]
call = "tasks:nap"
every = "1h"
overlap = "skip"
"""

WORKER_GROUP = """
[processes.worker]
call = "tasks:work"
"""

STATUS_KEYS = {"corral", "processes", "jobs"}
CORRAL_KEYS = {"pid", "version", "project", "started", "reloads"}
PROCESS_KEYS = {
    *("name", "group", "kind", "pid", "state", "started", "restarts"),
    *("last_exit", "requests", "cpu_percent", "rss"),
}
JOB_KEYS = {"name", "schedule", "running", "last_run", "next_run", "runs", "failures"}
JSON_LINE_KEYS = {"time", "process", "pid", "level", "message"}

HTTP_OK = {"method": "GET", "status": "200"}


@pytest.fixture(autouse=True)
def _clean_slate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No control address or token from the environment; no socket file left for tmp_path."""
    monkeypatch.delenv("CORRAL_CONTROL", raising=False)
    monkeypatch.delenv("CORRAL_TOKEN", raising=False)
    yield
    for socket_path in control_paths(tmp_path).values():
        for leftover in (socket_path, socket_path.with_name(socket_path.name + ".token")):
            leftover.unlink(missing_ok=True)


# -- the system under test ------------------------------------------------------------------------


def _web(workers: int, *settings: str) -> str:
    """A [web] table serving live:app on a free port."""
    lines = ["[web]", 'app = "live:app"', "port = 0", f"workers = {workers}", *settings]
    return "\n".join(lines) + "\n"


def _project(directory: Path, toml: str) -> Path:
    """Write corral.toml, live.py and tasks.py into `directory`."""
    files = {"corral.toml": toml, "live.py": LIVE_APP, "tasks.py": TASKS}
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip("\n"))
    return directory


def _start(corral: Callable[..., Corral], directory: Path, *args: str, **options: Any) -> Corral:
    """`corral run ARGS` in `directory`, once it listens and every worker is ready."""
    server = corral("run", *args, cwd=directory, **options)
    workers = int(server.wait_for(r"listening on \S+ \((\d+) workers?\)", timeout=20)[1])
    _until("GET /readyz", lambda: _control_get(server, "/readyz").status_code, 200, server)
    server.wait_workers(workers)  # in the process tree too
    return server


def _until(what: str, probe: Callable[[], T], wanted: Any, server: Corral, timeout=15) -> T:
    """Call `probe` until its value is `wanted` (or satisfies it, if callable); return the value."""
    done = wanted if callable(wanted) else lambda value: value == wanted
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: {value!r} after {timeout}s, wanted {wanted!r}\n{server.output}"
            )
        time.sleep(0.1)


# -- the process tree -----------------------------------------------------------------------------


def _pids(server: Corral, pattern: str) -> dict[str, int] | None:
    """NAME -> pid of the live processes titled `corral: NAME` with NAME matching `pattern`.

    None while two of them share a name (a process and its replacement, briefly).
    """
    regex = re.compile(pattern)
    found: dict[str, int] = {}
    for proc in server.alive():
        try:
            title = " ".join(proc.cmdline()).strip()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        name = title.removeprefix("corral: ")
        if name != title and regex.fullmatch(name):
            if name in found:
                return None
            found[name] = proc.pid
    return found


def _replaced(
    server: Corral, pattern: str, before: dict[str, int], names: set[str], changed: set[str]
) -> dict[str, int]:
    """Wait until exactly `names` run, those in `changed` with a pid other than `before`'s.

    The others keep their pid from `before`. Returns the new NAME -> pid.
    """

    def settled(now: dict[str, int] | None) -> bool:
        return (
            now is not None
            and set(now) == names
            and all((now[name] != before.get(name)) == (name in changed) for name in names)
        )

    return _until(
        f"{pattern} pids (were {before})", lambda: _pids(server, pattern), settled, server
    )


def _reaped(pid: int) -> bool:
    """The process is gone and its parent has collected its exit status."""
    return not psutil.pid_exists(pid)


# -- the CLI --------------------------------------------------------------------------------------


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def _ok(cwd: Path, *args: str) -> str:
    """What `corral ARGS` printed; it must exit 0 and print nothing on stderr."""
    done = _cli(cwd, *args)
    assert (done.returncode, done.stderr) == (0, ""), (
        f"corral {' '.join(args)}: exit {done.returncode}\n"
        f"stderr: {done.stderr}\nstdout: {done.stdout}"
    )
    return done.stdout


def _refused(cwd: Path, *args: str) -> str:
    """The one stderr line of `corral ARGS`, which must exit 1 and print nothing on stdout."""
    done = _cli(cwd, *args)
    assert done.returncode == 1, f"corral {' '.join(args)}: exit {done.returncode}\n{done}"
    assert done.stdout == "", done
    lines = done.stderr.splitlines()
    assert len(lines) == 1, f"corral {' '.join(args)} said:\n{done.stderr}"
    return lines[0]


def _status(cwd: Path) -> dict[str, Any]:
    return json.loads(_ok(cwd, "status", "--json"))


def _status_pids(status: dict[str, Any], group: str) -> dict[str, int]:
    """NAME -> pid of the group's rows in `corral status --json` (its zygote aside)."""
    return {
        row["name"]: row["pid"]
        for row in status["processes"]
        if row["group"] == group and row["kind"] != "zygote"
    }


def _table_pids(table: str) -> dict[str, int]:
    """NAME -> PID from the processes table `corral status` prints."""
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["NAME", "PID"])
    rows = {}
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        name, pid, *_ = line.split()
        rows[name] = int(pid)
    return rows


# -- the control API over its Unix socket ---------------------------------------------------------


def _socket_path(server: Corral) -> Path:
    """The socket the manager said it listens on (in text or JSON output)."""
    return Path(server.wait_for(r"control socket: ([^\s\"]+)")[1])


def _control_get(server: Corral, path: str) -> httpx.Response:
    transport = httpx.HTTPTransport(uds=str(_socket_path(server)))
    with httpx.Client(transport=transport, timeout=REQUEST_TIMEOUT) as client:
        return client.get(f"http://corral{path}")


def _metrics(server: Corral) -> str:
    answer = _control_get(server, "/metrics")
    assert answer.status_code == 200, answer.text
    return answer.text


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples `name` whose labels include `labels` (0 when there is none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def _wait_metric(server: Corral, name: str, expected: float, **labels: str) -> str:
    """Scrape until the sample (summed) is `expected`, as heartbeats bring counts in; the text."""
    _until(
        f"{name}{labels or ''}",
        lambda: _metric(_metrics(server), name, **labels),
        expected,
        server,
        timeout=10,
    )
    return _metrics(server)


# -- the app --------------------------------------------------------------------------------------


def _hit(url: str, path: str = "/") -> tuple[str, int]:
    """GET `path` on a new connection; the worker name and pid that served it."""
    answer = httpx.get(url + path, headers={"Connection": "close"}, timeout=REQUEST_TIMEOUT)
    assert answer.status_code == 200, f"GET {path}: {answer.status_code} {answer.text}"
    name, pid = answer.text.split()
    return name, int(pid)


def _spread(url: str, at_least: int, workers: int) -> Counter[int]:
    """Requests (each on its own connection) until `at_least` are sent and `workers` pids served.

    Returns how many each pid served; their sum is the number of requests sent.
    """
    served: Counter[int] = Counter()
    while sum(served.values()) < at_least or len(served) < workers:
        assert sum(served.values()) < 20 * at_least, f"only {dict(served)} served"
        served[_hit(url)[1]] += 1
    return served


def _served_by(url: str, pid: int, tries: int = 300) -> int:
    """Send requests until `pid` serves one; how many it took."""
    for attempt in range(1, tries + 1):
        if _hit(url)[1] == pid:
            return attempt
    raise AssertionError(f"pid {pid} served none of {tries} requests")


class Traffic:
    """Requests one after another from a thread, each on a new connection, while in the block."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.served: Counter[int] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.served[_hit(self.url)[1]] += 1
            except (httpx.HTTPError, AssertionError) as error:
                self.failures.append(repr(error))


# -- 1. every verb through the CLI ----------------------------------------------------------------


def test_status_lists_the_manager_the_zygote_and_each_worker_with_their_real_pids(corral, tmp_path):
    _project(tmp_path, _web(2) + NAP_JOB)
    server = _start(corral, tmp_path)
    tree = _pids(server, r"manager|web\.zygote|web\.\d+")
    assert tree is not None and set(tree) == {"manager", "web.zygote", "web.1", "web.2"}, tree
    assert tree["manager"] == server.pid

    table = _ok(tmp_path, "status")
    summary = table.splitlines()[0]
    assert summary.startswith("corral ") and f"pid {server.pid}," in summary, table
    assert summary.endswith(f"in {os.path.realpath(tmp_path)}"), table
    listed = _table_pids(table)
    assert {name: listed.get(name) for name in tree} == tree, table
    every_pid = {proc.pid for proc in server.alive()}
    assert set(listed.values()) <= every_pid, f"{table}\nthe tree: {every_pid}"
    assert re.search(r"^nap\s+every 3600s\s", table, re.MULTILINE), table

    status = json.loads(_ok(tmp_path, "status", "--json"))
    assert set(status) >= STATUS_KEYS, status
    assert set(status["corral"]) >= CORRAL_KEYS, status["corral"]
    assert status["corral"]["pid"] == server.pid
    assert status["corral"]["project"] == os.path.realpath(tmp_path)
    assert status["corral"]["reloads"] == 0
    for row in status["processes"]:
        assert set(row) >= PROCESS_KEYS, row
    assert {row["name"]: row["pid"] for row in status["processes"]} == listed
    workers = [row for row in status["processes"] if row["kind"] == "worker"]
    assert [(row["name"], row["state"]) for row in workers] == [
        ("web.1", "ready"),
        ("web.2", "ready"),
    ]
    (job,) = status["jobs"]
    assert set(job) >= JOB_KEYS, job
    assert (job["name"], job["runs"], job["running"]) == ("nap", 0, False)
    assert server.stop() == 0


def test_scale_web_to_3_starts_a_third_worker_that_serves(corral, tmp_path):
    _project(tmp_path, _web(2))
    server = _start(corral, tmp_path)
    before = server.wait_workers(2)

    assert _ok(tmp_path, "scale", "web=3") == "scaling web to 3\n"

    after = _replaced(server, r"web\.\d+", before, {"web.1", "web.2", "web.3"}, {"web.3"})
    _until("web pids in status", lambda: _status_pids(_status(tmp_path), "web"), after, server)
    _served_by(server.url(), after["web.3"])
    assert server.stop() == 0


def test_restart_web_1_replaces_it_while_requests_keep_succeeding(corral, tmp_path):
    _project(tmp_path, _web(2))
    server = _start(corral, tmp_path)
    before = server.wait_workers(2)

    with Traffic(server.url()) as traffic:
        _until("requests served", lambda: sum(traffic.served.values()) >= 5, True, server)
        assert _ok(tmp_path, "restart", "web.1") == "restarting web.1\n"
        after = _replaced(server, r"web\.\d+", before, {"web.1", "web.2"}, {"web.1"})
        _until("the old web.1 reaped", lambda: _reaped(before["web.1"]), True, server)
        _until("the new web.1 serving", lambda: traffic.served[after["web.1"]] > 0, True, server)

    assert traffic.failures == [], traffic.failures
    rows = {row["name"]: row for row in _status(tmp_path)["processes"]}
    assert (rows["web.1"]["pid"], rows["web.1"]["restarts"]) == (after["web.1"], 1)
    assert (rows["web.2"]["pid"], rows["web.2"]["restarts"]) == (before["web.2"], 0)
    assert server.stop() == 0


def test_reload_gives_every_worker_and_the_zygote_a_new_pid(corral, tmp_path):
    _project(tmp_path, _web(2))
    server = _start(corral, tmp_path)
    before = _pids(server, r"web\.zygote|web\.\d+")
    assert before is not None and len(before) == 3, before
    mark = server.mark()

    assert _ok(tmp_path, "reload") == "reloading everything\n"

    server.wait_for(r"reload complete", after=mark)
    names = {"web.zygote", "web.1", "web.2"}
    _replaced(server, r"web\.zygote|web\.\d+", before, names, names)
    assert _status(tmp_path)["corral"]["reloads"] == 1
    assert server.stop() == 0


def test_stop_stops_the_corral_with_exit_code_0_and_leaves_nothing(corral, tmp_path):
    _project(tmp_path, _web(2) + WORKER_GROUP)
    server = _start(corral, tmp_path)
    socket_path = _socket_path(server)

    assert _ok(tmp_path, "stop") == "stopping gracefully\n"

    server.wait_for(r"stop asked for: stopping gracefully")
    assert server.wait(30) == 0, server.output
    assert server.wait_until_gone(5) == [], server.output
    assert not socket_path.exists()
    assert "no corral is running" in _refused(tmp_path, "status")


def test_jobs_run_starts_an_hourly_job_now_and_skips_a_second_run_while_it_runs(corral, tmp_path):
    _project(tmp_path, _web(1) + NAP_JOB)
    server = _start(corral, tmp_path)
    started = r"^nap\s+\| nap started$"
    assert server.count(started) == 0, server.output

    assert _ok(tmp_path, "jobs", "run", "nap") == "nap: run started\n"
    server.wait_for(started, timeout=10)
    second = _ok(tmp_path, "jobs", "run", "nap")
    assert "skipped" in second, second
    server.wait_for(r"nap: run now skipped, the previous run is still going")
    server.wait_for(r"^nap\s+\| nap done$", timeout=10)

    assert server.count(started) == 1, server.output
    (job,) = _until(
        "the nap job's runs", lambda: _status(tmp_path)["jobs"], lambda j: j[0]["runs"] == 1, server
    )
    assert (job["running"], job["failures"], job["last_run"]["result"]) == (False, 0, "ok")
    metrics = _metrics(server)
    assert _metric(metrics, "corral_job_runs_total", job="nap", result="ok") == 1, metrics
    assert _metric(metrics, "corral_job_runs_total", job="nap", result="skipped") == 1, metrics

    # Once the run is over, the next one starts again.
    mark = server.mark()
    assert _ok(tmp_path, "jobs", "run", "nap") == "nap: run started\n"
    server.wait_for(started, after=mark, timeout=10)
    assert server.stop() == 0


def test_logs_shows_the_last_lines_each_after_its_process_name(corral, tmp_path):
    _project(tmp_path, _web(1, "access_log = false"))
    server = _start(corral, tmp_path)
    url = server.url()
    for index in range(30):
        _hit(url, f"/print?text=line-{index}")
    server.wait_for(r"^web\.1\s+\| line-29$")
    time.sleep(0.3)  # nothing more is coming

    shown = _ok(tmp_path, "logs", "-n", "20").splitlines()

    assert shown == server.lines[-20:], "\n".join(shown)
    assert shown[-1] == "web.1      | line-29"
    assert "web.1      | line-0" not in shown
    assert server.stop() == 0


def test_logs_follow_shows_a_line_written_after_it_started(corral, launch, tmp_path):
    _project(tmp_path, _web(1, "access_log = false") + WORKER_GROUP)
    server = _start(corral, tmp_path)
    url = server.url()
    _hit(url, "/print?text=before-follow")
    server.wait_for(r"^web\.1\s+\| before-follow$")

    follower = launch([sys.executable, "-m", "corral", "logs", "-f", "-n", "0", "web"], tmp_path)
    # The follower may not be connected yet: print new lines until one shows up.
    for attempt in range(40):
        _hit(url, f"/print?text=after-follow-{attempt}")
        try:
            follower.wait_for(rf"^web\.1\s+\| after-follow-{attempt}$", timeout=0.5)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError(f"`corral logs -f web` showed no new line:\n{follower.output}")

    assert "before-follow" not in follower.output
    assert all(re.match(r"web\.(1|zygote)\s+\| ", line) for line in follower.lines), follower.output
    follower.send(signal.SIGINT)
    assert follower.wait(10) == 0, follower.output
    assert server.stop() == 0


def test_scale_restart_and_reload_a_process_group(corral, tmp_path):
    _project(tmp_path, _web(1) + WORKER_GROUP)
    server = _start(corral, tmp_path)
    web = server.wait_workers(1)
    replicas = r"worker\.\d+"
    both = {"worker.1", "worker.2"}

    def in_status() -> dict[str, int]:
        return _status_pids(_status(tmp_path), "worker")

    first = _replaced(server, replicas, {}, {"worker.1"}, {"worker.1"})

    assert _ok(tmp_path, "scale", "worker=2") == "scaling worker to 2\n"
    scaled = _replaced(server, replicas, first, both, {"worker.2"})
    server.wait_for(r"^worker\.2\s+\| worker 2 up$")
    _until("worker pids in status", in_status, scaled, server)

    assert _ok(tmp_path, "restart", "worker.1") == "restarting worker.1\n"
    restarted = _replaced(server, replicas, scaled, both, {"worker.1"})

    assert _ok(tmp_path, "reload", "worker") == "reloading worker\n"
    reloaded = _replaced(server, replicas, restarted, both, both)

    assert _ok(tmp_path, "restart", "worker") == "restarting worker (one replica at a time)\n"
    _replaced(server, replicas, reloaded, both, both)

    assert _ok(tmp_path, "scale", "worker=1") == "scaling worker to 1\n"
    one = _until(
        "worker pids",
        lambda: _pids(server, replicas),
        lambda p: p and set(p) == {"worker.1"},
        server,
    )
    _until("worker pids in status", in_status, one, server)
    assert server.worker_pids() == web, "the web workers were not to change"
    assert server.stop() == 0


def test_unknown_names_are_refused_with_one_line_and_exit_1(corral, tmp_path):
    _project(tmp_path, _web(1) + NAP_JOB)
    server = _start(corral, tmp_path)
    web = server.wait_workers(1)

    assert "no group named 'nosuch'" in _refused(tmp_path, "scale", "nosuch=2")
    assert "no group named 'nosuch'" in _refused(tmp_path, "restart", "nosuch")
    assert "no job named 'nosuch'" in _refused(tmp_path, "jobs", "run", "nosuch")
    assert "at least 1" in _refused(tmp_path, "scale", "web=0")
    unknown = "no group, process or job named 'nosuch'"
    assert unknown in _refused(tmp_path, "logs", "nosuch")
    assert unknown in _refused(tmp_path, "logs", "-f", "nosuch")  # not a wait for ever
    assert "the dashboard is off" in _refused(tmp_path, "dashboard", "--no-browser")
    assert server.worker_pids() == web
    assert server.proc.poll() is None
    assert server.stop() == 0


def test_logs_take_every_name_status_lists_and_the_api_refuses_others_with_404(corral, tmp_path):
    _project(tmp_path, _web(1, "access_log = false") + NAP_JOB + WORKER_GROUP)
    server = _start(corral, tmp_path)
    server.wait_workers(1)
    server.wait_for(r"^worker\.1\s+\| worker 1 up$")
    _ok(tmp_path, "jobs", "run", "nap")
    server.wait_for(r"^nap\s+\| nap started$")

    listed = {row["name"] for row in server.status()["processes"]} | {"nap"}
    for name in sorted(listed | {"web", "worker", "jobs", "corral"}):
        _ok(tmp_path, "logs", "-n", "5", name)  # exit 0, nothing on stderr
    assert _ok(tmp_path, "logs", "-n", "50", "nap").splitlines()[0] == "nap        | nap started"
    manager = _ok(tmp_path, "logs", "-n", "50", "manager").splitlines()
    assert manager and all(line.startswith("corral ") for line in manager), manager
    refused = server.control_get("/logs?group=nosuch")
    assert refused.status_code == 404
    assert "no group, process or job named 'nosuch'" in refused.json()["error"]
    assert server.control_get("/logs?group=worker.1&lines=1").status_code == 200
    assert server.stop() == 0


# -- 2. no corral running -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "verb",
    [
        ["status"],
        ["status", "--json"],
        ["reload"],
        ["reload", "web"],
        ["restart", "web.1"],
        ["scale", "web=2"],
        ["stop"],
        ["jobs", "run", "nap"],
        ["logs"],
        ["logs", "-f", "web"],
    ],
    ids=" ".join,
)
def test_with_no_corral_running_each_verb_says_so_in_one_line_and_exits_1(tmp_path, verb):
    line = _refused(tmp_path, *verb)
    assert "no corral is running here" in line, line
    assert f"no control socket for {tmp_path} in {control_folder()}" in line, line


# -- 3. the control socket ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["default", "--control PATH"])
def test_the_control_socket_is_mode_0600_and_gone_after_a_stop(corral, tmp_path, where):
    _project(tmp_path, _web(1))
    given = tmp_path / "control.sock"
    args = ("--control", str(given)) if where != "default" else ()
    server = _start(corral, tmp_path, *args)
    path = _socket_path(server)

    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600, oct(info.st_mode)
    assert info.st_uid == os.geteuid()
    if where == "default":
        assert path == control_path(tmp_path, server.pid)
        folder = path.parent.stat()
        assert stat.S_IMODE(folder.st_mode) == 0o700, oct(folder.st_mode)
        assert _status(tmp_path)["corral"]["pid"] == server.pid
    else:
        assert path == given
        assert "no corral is running" in _refused(tmp_path, "status")  # not the default socket
        assert json.loads(_ok(tmp_path, "status", "--json", "--control", str(path)))

    assert server.stop() == 0
    assert not path.exists()


# -- 4. the TCP listener and its token ------------------------------------------------------------


def _tcp_url(server: Corral) -> str:
    return server.wait_for(r"control API on (http://\S+?): changes need the token")[1]


def _scale_web(base: str, count: int, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{base}/scale", json={"counts": {"web": count}}, headers=headers, timeout=REQUEST_TIMEOUT
    )


def test_tcp_calls_need_the_token_from_corral_token_but_probes_and_metrics_do_not(corral, tmp_path):
    _project(tmp_path, _web(2))
    server = _start(corral, tmp_path, "--control", "127.0.0.1:0", env={"CORRAL_TOKEN": "secret"})
    assert server.wait_for(r"control API on http://127\.0\.0\.1:\d+: .*(in CORRAL_TOKEN)$")
    assert "secret" not in server.output  # a token given is never printed
    base = _tcp_url(server)
    before = server.wait_workers(2)

    refusals = {
        "no token": _scale_web(base, 3),
        "a wrong token": _scale_web(base, 3, Authorization="Bearer wrong"),
        "a prefix of the token": _scale_web(base, 3, Authorization="Bearer secre"),
        "an empty credential": _scale_web(base, 3, Authorization="Bearer"),
        "another scheme": _scale_web(base, 3, Authorization="Basic secret"),
        "GET /status": httpx.get(f"{base}/status", timeout=REQUEST_TIMEOUT),
        "POST /stop": httpx.post(f"{base}/stop", timeout=REQUEST_TIMEOUT),
    }
    for what, answer in refusals.items():
        assert answer.status_code == 401, f"{what}: {answer.status_code} {answer.text}"
        assert answer.headers["www-authenticate"] == "Bearer", what
    # A scale that got through would have added web.3 before answering: the status, asked
    # after the refusals, would list it (starting) already.
    assert _status_pids(_status(tmp_path), "web") == before
    assert server.worker_pids() == before
    assert server.proc.poll() is None

    for probe in ("/livez", "/readyz", "/metrics"):
        answer = httpx.get(base + probe, timeout=REQUEST_TIMEOUT)
        assert answer.status_code == 200, f"{probe}: {answer.status_code} {answer.text}"
    assert (
        "corral_http_requests_in_flight"
        in httpx.get(f"{base}/metrics", timeout=REQUEST_TIMEOUT).text
    )

    allowed = _scale_web(base, 3, Authorization="Bearer secret")
    assert (allowed.status_code, allowed.json()) == (200, {"message": "scaling web to 3"})
    server.wait_workers(3)
    # The CLI over TCP takes --token; a wrong one is one line and exit 1.
    address = base.removeprefix("http://")
    assert "token" in _refused(tmp_path, "status", "--control", address, "--token", "wrong")
    assert _ok(tmp_path, "status", "--control", address, "--token", "secret")
    assert server.stop() == 0


def test_a_generated_token_is_printed_written_mode_0600_and_removed_at_stop(corral, tmp_path):
    _project(tmp_path, _web(1))
    server = _start(corral, tmp_path, "--control", "127.0.0.1:0")
    found = server.wait_for(
        r"control API on (http://\S+?): changes need the token (\S+) \(also in (\S+)\)$"
    )
    base, token, token_file = found[1], found[2], Path(found[3])
    assert len(token) >= 32, token
    socket_path = control_path(tmp_path, server.pid)
    assert token_file == socket_path.with_name(socket_path.name + ".token")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600, oct(token_file.stat().st_mode)
    assert token_file.read_text().strip() == token

    assert httpx.get(f"{base}/status", timeout=REQUEST_TIMEOUT).status_code == 401
    bearer = {"Authorization": f"Bearer {token}"}
    authorized = httpx.get(f"{base}/status", headers=bearer, timeout=REQUEST_TIMEOUT)
    assert authorized.status_code == 200 and authorized.json()["corral"]["pid"] == server.pid
    # With no --token, the CLI takes the one beside this directory's socket.
    address = base.removeprefix("http://")
    assert json.loads(_ok(tmp_path, "status", "--json", "--control", address))

    assert server.stop() == 0
    assert not token_file.exists()


# -- 5. /readyz -----------------------------------------------------------------------------------


def test_readyz_is_503_with_a_reason_while_a_new_worker_boots_then_200(corral, tmp_path):
    _project(tmp_path, _web(2))
    server = _start(corral, tmp_path, env={"LIVE_BOOT_SECONDS": "2"})

    scaled_at = time.monotonic()
    _ok(tmp_path, "scale", "web=3")
    answer = _control_get(server, "/readyz")
    assert (answer.status_code, answer.text) == (503, "not ready: web: 2 of 3 workers ready\n")
    assert _control_get(server, "/livez").status_code == 200

    _until("GET /readyz", lambda: _control_get(server, "/readyz").status_code, 200, server)
    took = time.monotonic() - scaled_at
    assert took >= 1.5, f"ready {took:.2f}s after the scale, but web.3 boots for 2s"
    assert _control_get(server, "/readyz").text == "ready\n"
    states = {row["name"]: row["state"] for row in _status(tmp_path)["processes"]}
    assert states["web.3"] == "ready", states
    assert server.stop() == 0


# -- 6. and 7. /metrics over several workers ------------------------------------------------------


@pytest.mark.parametrize("counted", [True, False], ids=["counted", "request-metrics-off"])
def test_without_the_access_log_requests_are_counted_unless_turned_off(corral, tmp_path, counted):
    settings = ["access_log = false", f"request_metrics = {str(counted).lower()}"]
    _project(tmp_path, _web(1, *settings))
    server = _start(corral, tmp_path)
    for _ in range(7):
        _hit(server.url())
    if counted:
        _wait_metric(server, "corral_http_requests_total", 7, **HTTP_OK)
    else:

        def served() -> list[int]:
            return [r["requests"] for r in _status(tmp_path)["processes"] if r["kind"] == "worker"]

        _until("requests in status", served, [7], server)  # the heartbeat still comes
        text = _metrics(server)
        assert _metric(text, "corral_http_requests_total") == 0, text
        assert _metric(text, "corral_process_resident_memory_bytes", process="web.1") > 0, text
    assert server.stop() == 0


def test_request_metrics_add_up_every_workers_requests_and_survive_a_restart(corral, tmp_path):
    _project(tmp_path, _web(2))
    server = _start(corral, tmp_path)
    workers = server.wait_workers(2)

    served = _spread(server.url(), at_least=40, workers=2)
    sent = sum(served.values())
    assert set(served) == set(workers.values()), (served, workers)

    text = _wait_metric(server, "corral_http_requests_total", sent, **HTTP_OK)
    assert _metric(text, "corral_http_requests_total") == sent, text  # no other method or status
    assert _metric(text, "corral_http_request_duration_seconds_count") == sent, text
    assert _metric(text, "corral_http_request_duration_seconds_bucket", le="+Inf") == sent, text
    assert _metric(text, "corral_http_request_duration_seconds_sum") > 0, text
    assert _metric(text, "corral_http_requests_in_flight") == 0, text

    def requests_by_pid() -> dict[int, int]:
        rows = _status(tmp_path)["processes"]
        return {row["pid"]: row["requests"] for row in rows if row["kind"] == "worker"}

    _until("requests in status", requests_by_pid, dict(served), server)

    # The counters do not go down when a worker is replaced: its last counts stay in the totals.
    _ok(tmp_path, "restart", "web.1")
    _replaced(server, r"web\.\d+", workers, {"web.1", "web.2"}, {"web.1"})
    _until("the old web.1 reaped", lambda: _reaped(workers["web.1"]), True, server)
    for _ in range(3):
        text = _metrics(server)
        assert _metric(text, "corral_http_requests_total", **HTTP_OK) == sent, text
        time.sleep(0.6)
    assert server.stop() == 0


def _get_on(conn: http.client.HTTPConnection, close: bool = False) -> tuple[str, int]:
    """GET / on the keep-alive connection `conn`; the worker name and pid that served it."""
    conn.request("GET", "/", headers={"Connection": "close"} if close else {})
    answer = conn.getresponse()
    body = answer.read().decode()
    assert answer.status == 200, body
    name, pid = body.split()
    return name, int(pid)


def test_a_worker_scaled_away_brings_its_last_requests_into_the_totals(corral, tmp_path):
    """A worker's last heartbeat, sent as it exits, carries what it served since the one before.

    Read right after its exit is logged, the totals have every request: they never go down,
    and nothing is waited for to catch up.
    """
    _project(tmp_path, _web(2))
    server = _start(corral, tmp_path, "--control", "127.0.0.1:0")
    base = _tcp_url(server)  # /metrics needs no token
    workers = server.wait_workers(2)

    def total() -> float:
        text = httpx.get(f"{base}/metrics", timeout=REQUEST_TIMEOUT).text
        return _metric(text, "corral_http_requests_total")

    def until_total(wanted: int) -> float:
        """Scrape until the total is `wanted`; return when it was seen (time.monotonic())."""
        deadline = time.monotonic() + 10
        while (seen := total()) != wanted:
            assert time.monotonic() < deadline, f"total {seen}, wanted {wanted}\n{server.output}"
            time.sleep(0.01)
        return time.monotonic()

    # A keep-alive connection that web.2 accepted (requests that reached web.1 count too).
    parts = urlsplit(server.url())
    sent = 0
    while True:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=REQUEST_TIMEOUT)
        served_by = _get_on(conn)
        sent += 1
        if served_by == ("web.2", workers["web.2"]):
            break
        conn.close()
    until_total(sent)
    # Right after one of web.2's heartbeats (one a second), so that it sends no other before
    # it exits: the requests below reach the totals by its last heartbeat only.
    _get_on(conn)
    sent += 1
    synced_at = until_total(sent)
    for number in range(48):
        assert _get_on(conn, close=number == 47) == ("web.2", workers["web.2"])
        sent += 1
    conn.close()  # 50 requests on it
    mark = server.mark()
    server.send(signal.SIGTTOU)
    server.wait_for(rf"web\.2 stopped \(pid {workers['web.2']}, exit code 0\)", after=mark)
    stopped_in = time.monotonic() - synced_at

    text = httpx.get(f"{base}/metrics", timeout=REQUEST_TIMEOUT).text
    print(f"web.2 stopped {stopped_in:.2f}s after its heartbeat; {sent} requests sent")
    assert _metric(text, "corral_http_requests_total") == sent, text
    assert _metric(text, "corral_http_requests_total", **HTTP_OK) == sent, text
    assert server.stop() == 0


def test_restarts_and_reloads_are_counted_by_cause(corral, tmp_path):
    _project(tmp_path, _web(2))
    server = _start(corral, tmp_path)
    before = server.wait_workers(2)

    _ok(tmp_path, "restart", "web.1")
    _replaced(server, r"web\.\d+", before, {"web.1", "web.2"}, {"web.1"})
    _wait_metric(server, "corral_restarts_total", 1, group="web", cause="restart")

    _ok(tmp_path, "scale", "web=3")
    three = server.wait_workers(3)
    _ok(tmp_path, "scale", "web=2")
    _until("web.3 gone", lambda: _reaped(three["web.3"]), True, server)
    _wait_metric(server, "corral_restarts_total", 1, group="web", cause="scale")

    mark = server.mark()
    _ok(tmp_path, "reload", "web")
    server.wait_for(r"reload complete", after=mark)
    text = _wait_metric(server, "corral_reloads_total", 1, result="ok")
    assert _metric(text, "corral_restarts_total", group="web", cause="reload") == 2, text
    assert _metric(text, "corral_restarts_total", group="web", cause="restart") == 1, text
    assert _metric(text, "corral_restarts_total", group="web", cause="scale") == 1, text
    assert _metric(text, "corral_restarts_total", cause="crash") == 0, text
    assert _metric(text, "corral_reloads_total", result="failed") == 0, text
    assert server.stop() == 0


def test_an_apps_prometheus_counter_is_summed_over_workers_and_survives_a_sigkill(corral, tmp_path):
    _project(tmp_path, _web(2))
    server = _start(corral, tmp_path)
    url = server.url()
    workers = server.wait_workers(2)

    served = _spread(url, at_least=40, workers=2)
    sent = sum(served.values())
    assert set(served) == set(workers.values()), (served, workers)
    _wait_metric(server, "app_hits_total", sent)

    os.kill(workers["web.1"], signal.SIGKILL)
    _replaced(server, r"web\.\d+", workers, {"web.1", "web.2"}, {"web.1"})
    _until("the killed web.1 reaped", lambda: _reaped(workers["web.1"]), True, server)
    _until("GET /readyz", lambda: _control_get(server, "/readyz").status_code, 200, server)
    text = _metrics(server)
    assert _metric(text, "app_hits_total") == sent, text
    assert _metric(text, "corral_restarts_total", group="web", cause="crash") == 1, text

    more = _spread(url, at_least=10, workers=1)
    _wait_metric(server, "app_hits_total", sent + sum(more.values()))
    assert server.stop() == 0


# -- 8. --log-format json -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--log-format json", '[corral] log_format = "json"'])
def test_json_log_format_makes_every_output_line_a_json_object(corral, tmp_path, how):
    toml = _web(1)
    args: tuple[str, ...] = ("--log-format", "json")
    if how.startswith("[corral]"):
        toml, args = '[corral]\nlog_format = "json"\n\n' + toml, ()
    _project(tmp_path, toml)
    server = _start(corral, tmp_path, *args)
    (web_1,) = server.wait_workers(1).values()
    url = server.url()
    _hit(url, "/print?text=printed-by-the-app")
    _hit(url, "/log?text=logged-by-the-app")
    server.wait_for(r'"level": "warning", "message": "logged-by-the-app"')
    time.sleep(0.3)  # the access log's lines are written in blocks, every 0.1s
    assert server.stop() == 0

    records = []
    for line in server.lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        assert isinstance(record, dict), f"not a JSON object: {line!r}\n{server.output}"
        assert set(record) >= JSON_LINE_KEYS, record
        datetime.fromisoformat(record["time"])
        records.append(record)

    def the(**fields: Any) -> list[dict[str, Any]]:
        return [r for r in records if fields.items() <= r.items()]

    assert the(process="corral", message="stopped", pid=server.pid), server.output
    assert the(process="web.1", pid=web_1, level="info", message="printed-by-the-app")
    assert the(process="web.1", pid=web_1, level="warning", message="logged-by-the-app")
    access = [
        r for r in the(process="web.1") if "GET /print?text=printed-by-the-app" in r["message"]
    ]
    assert access, f"no access line for GET /print:\n{server.output}"
    fields = {"method": "GET", "path": "/print", "query": "text=printed-by-the-app", "status": 200}
    assert fields.items() <= access[0].items(), access[0]
    assert access[0]["duration_ms"] >= 0
