"""Chaos under load: corral (and its peers) under steady wrk load while processes die.

    python benchmarks/chaos.py            # 60 s for corral and for each peer, 8 manager kills each
    python benchmarks/chaos.py --short    # 15 s, corral only, each action once (the tests' form)

For `--seconds` of steady load (wrk -c32 on 127.0.0.1, the FastAPI app of benchmarks/apps, 4
web workers; for corral also a process group of 2 replicas and a job every second), at random
moments (`--seed`; every 1 to 2.5 s, each action once per round, in a random order):
SIGKILL and SIGSTOP of web workers, of the zygote, of the launcher, of process replicas and of
job runs; HUP reloads; scale up and down; restarts through the control API. A stopped
process is continued 0.2 to 8 s later; the web workers' --timeout is 5 s, so some are found
stuck and replaced. It reports:

- requests sent and failed (wrk's socket errors, timeouts over 10 s and non-2xx answers, and
  those of a probe, one keep-alive client beside wrk that notes when each failure happened),
  and the bound on what could fail: the requests in flight on the web workers that died of
  a signal, counted as the connections each held when it was killed (or stopped, for a
  stopped worker that was then killed): the clients keep their connections alive and do not
  pipeline, so a connection has at most one request in flight;
- restarts by cause (corral's /metrics), and, for each action that takes something away, the
  time until its group was back to full strength (every wanted member ready or running, none
  of the processes it took away among them);
- the ticks of the job that ran twice or not at all (each run writes its CORRAL_JOB_TICK).

It passes when the failed requests are within the bound, every action's group came back to
full strength, and every tick ran once. Then (`--manager-kills N`) the manager is killed with
SIGKILL at moments taken in turn (at boot, during a reload, a scale, a job run): no process
of its tree may be left 5 s later. The harness makes itself a subreaper, so every orphan of
the tree stays below it, whatever it became.

The peers (`--peers`, on by default in the long form): gunicorn with uvicorn-worker's
UvicornWorker and `uvicorn --workers`, from benchmarks/.peers (see harness.ensure_peers), get
the same load and the actions that apply to them: SIGKILL and SIGSTOP of workers, HUP, TTIN
and TTOU, and the manager kills. Exit code 0 when corral passes; the JSON report goes to
`--json`, each server's output beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import harness
import httpx
import psutil
from harness import HOST

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
RESULTS = HERE / "results"
APP_PATH = "/items/42"
WORKERS = 4
REPLICAS = 2
CONNECTIONS = 32
WRK_TIMEOUT = "10s"  # wrk's --timeout: a request slower than this counts as failed
WORKER_TIMEOUT = 5.0  # --timeout: a worker stopped longer than this is replaced
PAUSE = (0.2, 8.0)  # how long a stopped process stays stopped, seconds
SETTLE = 30.0  # after the load, how long the groups have to be back to full strength
GONE_WITHIN = 5.0  # after the manager's SIGKILL, how long its tree has to exit

CORRAL_TOML = """\
[corral]
control = "{control}"

[web]
app = "fastapi_app:app"
port = {port}
workers = {workers}
timeout = {timeout}
access_log = false

[processes.consumer]
call = "chaos_tasks:consume"
replicas = {replicas}
stop_timeout = 5

[jobs.tick]
call = "chaos_tasks:tick"
every = "1s"
overlap = "allow"
timeout = "10s"
"""


# --- what happened ---------------------------------------------------------------------


@dataclass
class Event:
    """One action of the chaos, and what came of it."""

    action: str  # "SIGKILL web worker", "HUP", "scale web=5"...
    target: str  # "web.3 (pid 1234)"
    group: str | None = None  # the group that has to come back to full strength
    at: float = 0.0  # seconds since the load started
    held: int = 0  # connections on the app's port the target held then
    pid: int | None = None
    resumed_at: float | None = None  # a stopped process: when it was continued
    killed_stopped: bool = False  # it was dead when continued: only a SIGKILL ends a stopped one
    back_s: float | None = None  # seconds until its group was back to full strength
    gone: list[int] = field(default_factory=list)  # pids that must not serve at full strength


@dataclass
class Member:
    name: str
    pid: int | None
    state: str  # ready, starting, draining... (corral's words); ready or booting for a peer


@dataclass
class Snapshot:
    at: float
    groups: dict[str, list[Member]]

    def serving(self, group: str) -> set[int]:
        return {
            m.pid
            for m in self.groups.get(group, [])
            if m.pid is not None and m.state in ("ready", "running")
        }


class Subject:
    """A server under chaos: how to start it, see its members, and hurt it."""

    name = ""
    actions: tuple[str, ...] = ()
    kill_moments: tuple[str, ...] = ("boot", "reload", "scale")

    def __init__(self, rng: random.Random, scratch: Path) -> None:
        self.rng = rng
        self.scratch = scratch
        self.port = harness.free_port()
        self.wanted: dict[str, int] = {}
        self.run: harness.Running | None = None
        self.events: list[Event] = []
        self.clock = time.monotonic()  # the events' times count from here

    def now(self) -> float:
        return time.monotonic() - self.clock

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    def snapshot(self) -> Snapshot:
        raise NotImplementedError

    def full(self, snap: Snapshot) -> bool:
        """Every wanted member of every group ready (web) or running (the others)."""
        raise NotImplementedError

    def act(self, action: str) -> Event | None:
        """Do `action` to a member picked at random; None if there is nothing to do it to."""
        raise NotImplementedError

    def scale(self, group: str, count: int) -> Event:
        raise NotImplementedError

    def finish(self) -> None:
        """Back to the declared sizes, for the final check."""
        for group, count in self.declared().items():
            if self.wanted[group] != count:
                self.record(self.scale(group, count))

    def declared(self) -> dict[str, int]:
        raise NotImplementedError

    def restarts(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        """Let go of what the harness holds of the subject (a client)."""

    def record(self, event: Event) -> Event:
        event.at = self.now()
        self.events.append(event)
        return event

    def back(self, snap: Snapshot, event: Event) -> bool:
        """Whether `event`'s group is back at full strength without what it took away."""
        gone = set(event.gone)
        return self.full(snap) and not any(snap.serving(group) & gone for group in snap.groups)

    def pending(self, *actions: str) -> bool:
        """Whether an event of one of these kinds is not over yet."""
        return any(e.back_s is None and e.action.startswith(actions) for e in self.events)

    def signal(self, action: str, group: str, name: str, pid: int) -> Event:
        """SIGKILL or SIGSTOP (continued later) to one process, as `action` says."""
        stop = action.startswith("SIGSTOP")
        event = Event(action, f"{name} (pid {pid})", group, pid=pid)
        event.held = harness.held_connections(pid, self.port)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP if stop else signal.SIGKILL)
        if stop:
            threading.Timer(self.rng.uniform(*PAUSE), self.resume, (event,)).start()
        else:
            event.gone = [pid]
        return event

    def resume(self, event: Event) -> None:
        if event.resumed_at is None and event.pid is not None:
            event.killed_stopped = event.action.startswith("SIGSTOP") and not _alive(event.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(event.pid, signal.SIGCONT)
            event.resumed_at = self.now()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- corral --------------------------------------------------------------------------------


class Corral(Subject):
    name = "corral"
    actions = (
        "SIGKILL web worker",
        "SIGSTOP web worker",
        "SIGKILL web zygote",
        "SIGSTOP web zygote",
        "SIGKILL launcher",
        "SIGSTOP launcher",
        "SIGKILL replica",
        "SIGSTOP replica",
        "SIGKILL job run",
        "SIGSTOP job run",
        "HUP",
        "scale",
        "restart",
    )
    kill_moments = ("boot", "reload", "scale", "job run")

    def __init__(self, rng: random.Random, scratch: Path) -> None:
        super().__init__(rng, scratch)
        self.control = scratch / "control.sock"
        self.ticks = scratch / "ticks.txt"
        self.config = scratch / "corral.toml"
        self.config.write_text(
            CORRAL_TOML.format(
                control=self.control,
                port=self.port,
                workers=WORKERS,
                timeout=WORKER_TIMEOUT,
                replicas=REPLICAS,
            )
        )
        self.wanted = self.declared()
        self.client: httpx.Client | None = None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "corral", "run", "-c", str(self.config)]

    def env(self) -> dict[str, str]:
        return {"CHAOS_TICKS": str(self.ticks)}

    def declared(self) -> dict[str, int]:
        return {"web": WORKERS, "consumer": REPLICAS}

    def api(self) -> httpx.Client:
        """The control API, on its Unix socket (no token needed there)."""
        if self.client is None:
            transport = httpx.HTTPTransport(uds=str(self.control))
            self.client = httpx.Client(transport=transport, base_url="http://corral", timeout=10)
        return self.client

    def snapshot(self) -> Snapshot:
        answer = self.api().get("/status")
        answer.raise_for_status()
        groups: dict[str, list[Member]] = {}
        for row in answer.json()["processes"]:
            key = f"{row['group']}.zygote" if row["kind"] == "zygote" else row["group"]
            groups.setdefault(key, []).append(Member(row["name"], row["pid"], row["state"]))
        return Snapshot(self.now(), groups)

    def full(self, snap: Snapshot) -> bool:
        for group, wanted in self.wanted.items():
            state = "ready" if group == "web" else "running"
            have = {m.name for m in snap.groups.get(group, []) if m.state == state}
            if not {f"{group}.{i}" for i in range(1, wanted + 1)} <= have:
                return False
        zygotes = ("web.zygote", "jobs.zygote")
        return all(any(m.state == "running" for m in snap.groups.get(z, [])) for z in zygotes)

    def launcher(self) -> psutil.Process | None:
        assert self.run is not None
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.run.pid).children():
                if child.cmdline()[:1] == ["corral: launcher"]:
                    return child
        return None

    def job_runs(self) -> list[psutil.Process]:
        """Live runs of the job that have had 0.1 s to write their tick."""
        assert self.run is not None
        found = []
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(self.run.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    old_enough = proc.create_time() < time.time() - 0.1
                    if old_enough and proc.cmdline()[:1] == ["corral: tick"]:
                        found.append(proc)
        return found

    def pick(self, snap: Snapshot, group: str, states: tuple[str, ...]) -> Member | None:
        members = [m for m in snap.groups.get(group, []) if m.state in states and m.pid]
        return self.rng.choice(members) if members else None

    def act(self, action: str) -> Event | None:
        snap = self.snapshot()
        if action.endswith(("web worker", "web zygote", "replica")):
            group, state = {
                "web worker": ("web", "ready"),
                "web zygote": ("web.zygote", "running"),
                "replica": ("consumer", "running"),
            }[action.partition(" ")[2]]
            member = self.pick(snap, group, (state,))
            if member is None or member.pid is None:
                return None
            event = self.signal(action, group, member.name, member.pid)
            if action == "SIGKILL web zygote":  # its workers drain: new ones take their place
                event.gone += sorted(snap.serving("web"))
            return event
        if action.endswith("launcher"):
            launcher = self.launcher()
            if launcher is None:
                return None
            event = self.signal(action, "launcher", "launcher", launcher.pid)
            if action == "SIGKILL launcher":  # its zygotes and their workers go with it
                for group in ("web", "web.zygote", "jobs.zygote"):
                    event.gone += sorted(snap.serving(group))
            return event
        if action.endswith("job run"):
            deadline = time.monotonic() + 1.5  # a run lives 0.4 s of each second
            while not (runs := self.job_runs()) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not runs:
                return None
            event = self.signal(action, "jobs", "tick run", self.rng.choice(runs).pid)
            event.group, event.gone = None, []  # a run is not restarted: its tick is counted
            return event
        if action == "HUP":
            if self.pending("HUP", "restart"):
                return None  # corral would ignore it: a reload is under way
            assert self.run is not None
            event = Event(action, "the manager", "everything")
            for group in ("web", "web.zygote", "consumer", "jobs.zygote"):
                event.gone += sorted(snap.serving(group))
            os.kill(self.run.pid, signal.SIGHUP)
            return event
        if action == "scale":
            group = self.rng.choice(["web", "consumer"])
            sizes = (2, 3, 4, 5, 6) if group == "web" else (1, 2, 3)
            return self.scale(group, self.rng.choice([n for n in sizes if n != self.wanted[group]]))
        if action == "restart":
            if self.pending("HUP", "restart"):
                return None
            group = self.rng.choice(["web", "consumer"])
            member = self.pick(snap, group, ("ready", "running"))
            one = member is not None and member.pid is not None and self.rng.random() < 0.5
            target = member.name if one and member is not None else group
            answer = self.api().post("/restart", json={"target": target})
            answer.raise_for_status()
            event = Event(f"restart {target}", target, group)
            event.gone = [member.pid] if one and member is not None else sorted(snap.serving(group))
            return event
        raise ValueError(f"unknown action {action!r}")

    def scale(self, group: str, count: int) -> Event:
        answer = self.api().post("/scale", json={"counts": {group: count}})
        answer.raise_for_status()
        self.wanted[group] = count
        return Event(f"scale {group}={count}", group, group)

    def restarts(self) -> dict[str, int]:
        """corral_restarts_total by group and cause, from /metrics."""
        text = self.api().get("/metrics").text
        pattern = r'^corral_restarts_total\{cause="([^"]+)",group="([^"]+)"\} (\S+)'
        return {
            f"{group}: {cause}": int(float(value))
            for cause, group, value in re.findall(pattern, text, re.MULTILINE)
        }

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def ticks_run(self) -> dict[str, Any]:
        """Each tick's runs, from the job's own lines (its CORRAL_JOB_TICK), on a 1 s grid."""
        lines = self.ticks.read_text().splitlines() if self.ticks.exists() else []
        runs = Counter(line.split()[0] for line in lines if line)
        if not runs:
            return {"runs": 0, "ticks": 0, "twice": [], "missing": ["no run at all"]}
        first = min(float(tick) for tick in runs)
        places = Counter({round(float(tick) - first): count for tick, count in runs.items()})
        return {
            "runs": sum(runs.values()),
            "ticks": len(runs),
            "twice": [f"{first + i:.3f} ({n} runs)" for i, n in sorted(places.items()) if n > 1],
            "missing": [f"{first + i:.3f}" for i in range(max(places) + 1) if i not in places],
        }


# --- the peers ------------------------------------------------------------------------------


class Peer(Subject):
    """A peer server: its workers are the processes that have run the app's lifespan startup."""

    actions = ("SIGKILL web worker", "SIGSTOP web worker", "HUP", "scale")

    def __init__(
        self, rng: random.Random, scratch: Path, name: str, python: Path, argv: list[str]
    ) -> None:
        super().__init__(rng, scratch)
        self.name = name
        self.python = python
        self._argv = [part.format(port=self.port, workers=WORKERS) for part in argv]
        self.wanted = self.declared()

    def argv(self) -> list[str]:
        return [str(self.python), *self._argv]

    def declared(self) -> dict[str, int]:
        return {"web": WORKERS}

    def snapshot(self) -> Snapshot:
        assert self.run is not None
        booted = self.run.ready_workers()
        members = []
        for proc in self.run.tree()[1:]:
            with contextlib.suppress(psutil.Error):
                if proc.pid in booted and proc.status() != psutil.STATUS_STOPPED:
                    members.append(Member(f"pid {proc.pid}", proc.pid, "ready"))
        return Snapshot(self.now(), {"web": members})

    def full(self, snap: Snapshot) -> bool:
        return len(snap.serving("web")) >= self.wanted["web"]

    def act(self, action: str) -> Event | None:
        assert self.run is not None
        snap = self.snapshot()
        if action.endswith("web worker"):
            ready = sorted(snap.serving("web"))
            return self.signal(action, "web", "worker", self.rng.choice(ready)) if ready else None
        if action == "HUP":
            if self.pending("HUP"):
                return None
            event = Event(action, "the main process", "web", gone=sorted(snap.serving("web")))
            os.kill(self.run.pid, signal.SIGHUP)
            return event
        if action == "scale":
            return self.scale(
                "web", self.rng.choice([n for n in (3, 5) if n != self.wanted["web"]])
            )
        raise ValueError(f"unknown action {action!r}")

    def scale(self, group: str, count: int) -> Event:
        """TTIN and TTOU, one worker each, as both peers take them."""
        assert self.run is not None
        step = signal.SIGTTIN if count > self.wanted[group] else signal.SIGTTOU
        for _ in range(abs(count - self.wanted[group])):
            os.kill(self.run.pid, step)
            time.sleep(0.05)  # one signal at a time: the same signal twice may merge
        self.wanted[group] = count
        return Event(f"scale {group}={count}", group, group)


PEERS = {
    "gunicorn + UvicornWorker": [
        *("-m", "gunicorn", "fastapi_app:app", "-k", "uvicorn_worker.UvicornWorker"),
        *("--workers", "{workers}", "--bind", "127.0.0.1:{port}", "--timeout", "5"),
    ],
    "uvicorn --workers": [
        *("-m", "uvicorn", "fastapi_app:app", "--workers", "{workers}"),
        *("--port", "{port}", "--no-access-log", "--timeout-worker-healthcheck", "5"),
    ],
}


# --- watching ------------------------------------------------------------------------------


class Watcher(threading.Thread):
    """Looks at the subject's members every 50 ms; notes when each event's group is back."""

    def __init__(self, subject: Subject) -> None:
        super().__init__(daemon=True)
        self.subject = subject
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.check()
            time.sleep(0.05)

    def check(self) -> bool:
        """Note the events whose group is back; True when every group is back."""
        try:
            snap = self.subject.snapshot()
        except Exception:  # a process gone while looked at, a call refused: look again
            return False
        waiting = False
        with self.lock:
            for event in self.subject.events:
                if event.back_s is not None or event.group is None:
                    continue
                if event.action.startswith("SIGSTOP") and event.resumed_at is None:
                    waiting = True
                elif self.subject.back(snap, event):
                    since = event.at if event.resumed_at is None else event.resumed_at
                    event.back_s = max(0.0, snap.at - since)
                else:
                    waiting = True
        return not waiting and self.subject.full(snap)


class Probe(threading.Thread):
    """One keep-alive client beside wrk, request after request: wrk counts the failures, the
    probe also says when they happened."""

    def __init__(self, subject: Subject) -> None:
        super().__init__(daemon=True)
        self.subject = subject
        self.stopping = threading.Event()
        self.requests = 0
        self.failures: list[tuple[float, str]] = []

    def run(self) -> None:
        connection: http.client.HTTPConnection | None = None
        while not self.stopping.is_set():
            at = self.subject.now()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(HOST, self.subject.port, timeout=10)
                connection.request("GET", APP_PATH)
                response = connection.getresponse()
                response.read()
                self.requests += 1
                if response.status != 200:
                    self.failures.append((at, f"status {response.status}"))
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as error:
                self.requests += 1
                self.failures.append((at, type(error).__name__))
                if connection is not None:
                    connection.close()
                connection = None
            time.sleep(0.002)
        if connection is not None:
            connection.close()


# --- the chaos -----------------------------------------------------------------------------


@dataclass
class Verdict:
    server: str
    seconds: float
    requests: int
    failed: int
    bound: int
    wrk: dict[str, Any]
    probe_failures: list[tuple[float, str]]
    events: list[dict[str, Any]]
    restarts: dict[str, int]
    ticks: dict[str, Any]
    exit_code: int | None
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


def chaos(
    subject: Subject,
    seconds: float,
    once_each: bool,
    gap: tuple[float, float],
    log_to: Path,
    skip: frozenset[str] = frozenset(),
) -> Verdict:
    """Start `subject`, load it for `seconds` while acting on it, stop it; the verdict.

    Every `gap` seconds an action, taken from the actions in a random order, each once per
    round; `once_each`: one round (then nothing until `seconds` are over).
    """
    rng = subject.rng
    problems: list[str] = []
    actions = [a for a in subject.actions if a not in skip]
    plan = rng.sample(actions, len(actions))
    exit_code: int | None = None
    with harness.running(
        subject.argv(), APPS, subject.env(), "BENCH_READY_DIR", subject.port
    ) as run:
        subject.run = run
        if not wait_full(subject, 60.0):
            problems.append("not at full strength within 60 s of the start")
        watcher, probe = Watcher(subject), Probe(subject)
        with harness.wrk_in_background(
            run.port, APP_PATH, CONNECTIONS, seconds + 60, timeout=WRK_TIMEOUT
        ) as load:
            subject.clock = time.monotonic()
            watcher.start()
            probe.start()
            while subject.now() < seconds and run.proc.poll() is None:
                time.sleep(rng.uniform(*gap))
                if not plan and not once_each:
                    plan = rng.sample(actions, len(actions))  # the next round
                if not plan:
                    continue
                action = plan.pop()
                try:
                    event = subject.act(action)
                except (httpx.HTTPError, OSError, psutil.Error) as error:
                    if run.proc.poll() is not None:
                        break
                    problems.append(
                        f"{action} at {subject.now():.1f}s: the harness failed: {error}"
                    )
                    continue
                if event is None:
                    if once_each:
                        plan.insert(0, action)  # nothing to act on now: later
                    continue  # in the long form, it waits for the next round
                with watcher.lock:
                    subject.record(event)
                progress(f"{event.at:6.1f}s {event.action}: {event.target}")
            probe.stopping.set()
            report = harness.stop_wrk(load)
        probe.join(15)
        for event in subject.events:  # nothing stays stopped
            subject.resume(event)
        if once_each and plan:
            problems.append(f"not done (nothing to act on): {', '.join(plan)}")
        restarts: dict[str, int] = {}
        if run.proc.poll() is None:
            with watcher.lock:
                subject.finish()
            deadline = time.monotonic() + SETTLE
            while not watcher.check() and time.monotonic() < deadline:
                time.sleep(0.1)
            watcher.stopping.set()
            restarts = subject.restarts()
            subject.close()
            run.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                exit_code = run.proc.wait(60)
        else:
            watcher.stopping.set()
            problems.append(f"{subject.name} exited (code {run.proc.returncode}) under chaos")
        watcher.join(5)
        log = run.log.read_text(errors="replace")
    log_to.write_text(log)
    left = [harness.describe(p) for p in harness.wait_orphans_gone(set(), GONE_WITHIN)]
    if left:
        problems.append(f"left after the stop: {', '.join(left)}")
    if isinstance(subject, Corral) and exit_code not in (0, None):
        problems.append(f"exit code {exit_code} after SIGTERM")
    failed = report.failed + len(probe.failures)
    bound = failure_bound(subject.events, log)
    if failed > bound:
        problems.append(f"{failed} requests failed, more than the {bound} in flight on killed ones")
    not_back = [
        f"{e.action} at {e.at:.1f}s ({e.target})"
        for e in subject.events
        if e.group is not None and e.back_s is None
    ]
    if not_back:
        problems.append(f"not back to full strength after: {'; '.join(not_back)}")
    ticks = subject.ticks_run() if isinstance(subject, Corral) else {}
    if ticks and (ticks["twice"] or ticks["missing"]):
        problems.append(f"ticks run twice: {ticks['twice']}; not at all: {ticks['missing']}")
    return Verdict(
        server=subject.name,
        seconds=seconds,
        requests=report.requests + probe.requests,
        failed=failed,
        bound=bound,
        wrk=asdict(report),
        probe_failures=probe.failures,
        events=[{k: v for k, v in asdict(e).items() if k != "gone"} for e in subject.events],
        restarts=restarts,
        ticks=ticks,
        exit_code=exit_code,
        problems=problems,
    )


def wait_full(subject: Subject, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert subject.run is not None
        subject.run.check_alive()
        with contextlib.suppress(httpx.HTTPError, psutil.Error, OSError):
            if subject.full(subject.snapshot()):
                return True
        time.sleep(0.1)
    return False


def failure_bound(events: list[Event], log: str) -> int:
    """The requests in flight on the web workers that died of a signal: those the harness
    killed, and those it stopped that the server then killed (found stuck past its
    timeout): dead when continued, or, for corral, killed as its log says. Each worker
    counts once, with the most it held."""
    held: dict[int, int] = {}
    for event in events:
        if event.group != "web" or event.pid is None:
            continue
        killed = (
            event.action.startswith("SIGKILL")
            or event.killed_stopped
            or re.search(
                rf"\(pid {event.pid}, killed by SIG|\(pid {event.pid}\) has not answered", log
            )
        )
        if killed:
            held[event.pid] = max(held.get(event.pid, 0), event.held)
    return sum(held.values())


# --- SIGKILL of the manager ----------------------------------------------------------------


@dataclass
class Kill:
    server: str
    moment: str
    after_s: float  # from the moment's action (or the start) to the SIGKILL
    left: list[str]


def kill_manager(subject: Subject, moment: str) -> Kill:
    """Start `subject`, SIGKILL its first process at `moment`; what is left 5 s later."""
    rng = subject.rng
    log = subject.scratch / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            subject.argv(),
            cwd=APPS,
            env=harness.server_env(subject.env()) | {"BENCH_READY_DIR": str(subject.scratch)},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    subject.run = harness.Running(proc, subject.port, subject.scratch, time.monotonic(), log)
    try:
        delay = rng.uniform(0.0, 1.5)
        if moment != "boot":
            wait_full(subject, 60.0)
            if moment == "reload":
                os.kill(proc.pid, signal.SIGHUP)
                delay = rng.uniform(0.0, 0.8)
            elif moment == "scale":
                subject.scale("web", WORKERS + 2)
                delay = rng.uniform(0.0, 0.5)
            elif moment == "job run" and isinstance(subject, Corral):
                deadline = time.monotonic() + 5
                while not subject.job_runs() and time.monotonic() < deadline:
                    time.sleep(0.02)
                delay = 0.0
        time.sleep(delay)
        proc.kill()
        proc.wait(10)
        left = [harness.describe(p) for p in harness.wait_orphans_gone(set(), GONE_WITHIN)]
    finally:
        subject.close()
        for orphan in harness.orphans(set()):
            with contextlib.suppress(psutil.Error):
                orphan.kill()
        harness.wait_orphans_gone(set(), 5)
    return Kill(subject.name, moment, delay, left)


# --- the command ----------------------------------------------------------------------------


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--short", action="store_true", help="15 s, corral only, each action once")
    parser.add_argument("--seconds", type=float, default=60.0, help="of chaos under load")
    parser.add_argument("--seed", type=int, help="of the random moments (default: random)")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, help="default: long")
    parser.add_argument("--manager-kills", type=int, help="per server (default: 4 short, 8)")
    parser.add_argument("--skip", default="", help="comma-separated actions not to take")
    parser.add_argument("--json", type=Path, default=RESULTS / "chaos.json")
    args = parser.parse_args(argv)
    if args.short:
        args.seconds = min(args.seconds, 15.0)
    if args.peers is None:
        args.peers = not args.short
    if args.manager_kills is None:
        args.manager_kills = 4 if args.short else 8
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    return args


def subjects(args: argparse.Namespace, rng: random.Random) -> list[Callable[[Path], Subject]]:
    """Makers of the servers to run, corral first, each in a scratch directory."""
    makers: list[Callable[[Path], Subject]] = [lambda scratch: Corral(rng, scratch)]
    if args.peers:
        python = harness.ensure_peers()
        for name, argv in PEERS.items():
            makers.append(
                lambda scratch, name=name, argv=argv: Peer(rng, scratch, name, python, argv)
            )
    return makers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.become_subreaper()
    rng = random.Random(args.seed)
    began = time.monotonic()
    meta: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "seed": args.seed,
        "nproc": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
    progress(f"seed {args.seed}")
    skip = frozenset(a.strip() for a in args.skip.split(",") if a.strip())
    gap = (0.6, 1.0) if args.short else (1.0, 2.5)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    cpu = harness.cpu_reading()
    verdicts: list[Verdict] = []
    kills: list[Kill] = []
    for make in subjects(args, rng):
        with tempfile.TemporaryDirectory(prefix="corral-chaos-") as scratch:
            subject = make(Path(scratch))
            progress(f"--- {subject.name}: {args.seconds:g} s of chaos under load")
            log_to = args.json.with_name(f"{args.json.stem}-{slug(subject.name)}.log")
            verdicts.append(chaos(subject, args.seconds, args.short, gap, log_to, skip))
        for index in range(args.manager_kills):
            with tempfile.TemporaryDirectory(prefix="corral-chaos-") as scratch:
                subject = make(Path(scratch))
                moment = subject.kill_moments[index % len(subject.kill_moments)]
                kills.append(kill_manager(subject, moment))
                progress(f"{subject.name}: SIGKILL at {moment}: left {kills[-1].left or 'nothing'}")
    meta["other_load"] = harness.others_share(cpu, harness.cpu_reading())
    meta["load_after"] = os.getloadavg()
    meta["elapsed_s"] = round(time.monotonic() - began, 1)
    print(render(meta, verdicts, kills))
    payload = {
        "meta": meta,
        "verdicts": [asdict(v) | {"passed": v.passed} for v in verdicts],
        "kills": [asdict(k) for k in kills],
    }
    args.json.write_text(json.dumps(payload, indent=1) + "\n")
    corral_kills = [k for k in kills if k.server == Corral.name]
    return 0 if verdicts[0].passed and not any(k.left for k in corral_kills) else 1


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def render(meta: dict[str, Any], verdicts: list[Verdict], kills: list[Kill]) -> str:
    lines = [
        f"{meta['date']}  seed {meta['seed']}  nproc {meta['nproc']}",
        "load average before: {:.2f} {:.2f} {:.2f}".format(*meta["load_before"])
        + ", after: {:.2f} {:.2f} {:.2f}".format(*meta["load_after"]),
        f"other processes used {meta['other_load']:.0%} of the CPUs during the run",
    ]
    for v in verdicts:
        lines += ["", f"{v.server}: {'PASS' if v.passed else 'FAIL'}"]
        lines.append(
            f"  requests {v.requests}, failed {v.failed} (bound {v.bound}), "
            f"{v.wrk['rps']:.0f} req/s"
        )
        if v.probe_failures:
            shown = ", ".join(f"{at:.1f}s {what}" for at, what in v.probe_failures[:10])
            lines.append(f"  the probe's failures: {shown}")
        by_action: dict[str, list[float | None]] = {}
        for event in v.events:
            kind = re.sub(r"=\d+|\.\d+", "", event["action"])
            by_action.setdefault(kind, []).append(event["back_s"])
        for kind, times in sorted(by_action.items()):
            line = f"  {kind}: {len(times)}"
            back = sorted(t for t in times if t is not None)
            if back:
                line += f", back to full strength in {back[len(back) // 2]:.2f} s (median), "
                line += f"{back[-1]:.2f} s (max)"
            lines.append(line)
        if v.restarts:
            lines.append("  restarts: " + ", ".join(f"{k} {n}" for k, n in v.restarts.items()))
        if v.ticks:
            lines.append(
                f"  ticks: {v.ticks['ticks']} ({v.ticks['runs']} runs); run twice: "
                f"{len(v.ticks['twice'])}, not at all: {len(v.ticks['missing'])}"
            )
        lines += [f"  problem: {p}" for p in v.problems]
    lines.append("")
    for k in kills:
        left = f"nothing left after {GONE_WITHIN:g} s"
        if k.left:
            left = f"{len(k.left)} processes LEFT after {GONE_WITHIN:g} s, such as {k.left[0]}"
        lines.append(f"{k.server}: SIGKILL of the manager at {k.moment}: {left}")
    lines.append(f"{meta['elapsed_s']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
