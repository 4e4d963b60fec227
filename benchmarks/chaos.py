"""Chaos under load: corral (and its peers) under steady wrk load while processes die.

    python benchmarks/chaos.py            # 60 s for corral, 60 s for each peer, 8 manager kills
    python benchmarks/chaos.py --short    # 15 s, corral only, each action once (the tests' form)

For `--seconds` of steady load (wrk on 127.0.0.1, the FastAPI app of benchmarks/apps, 4 web
workers; for corral also a process group of 2 replicas and a job every second), at random
moments (`--seed`): SIGKILL and SIGSTOP of web workers, of the zygote, of the launcher, of
process replicas and of job runs; HUP reloads; scale up and down; restarts through the
control API. A stopped process is continued 0.2 to 3 s later (the web workers' --timeout is
2 s, so some are found stuck and replaced). It reports:

- requests sent and failed (wrk: socket errors, timeouts over 10 s, non-2xx answers), and the
  bound on what could fail: the requests in flight on the web workers that died of a signal,
  counted as the connections each held when it was killed (or stopped, for a stopped worker
  that corral then killed): wrk's connections are keep-alive and do not pipeline;
- restarts by cause (corral's /metrics), and, for each action that takes something away, the
  time until its group was back to full strength (every wanted member ready or running, none
  of the processes it took away among them);
- the ticks of the job that ran twice or not at all (each run writes its CORRAL_JOB_TICK).

It passes when the failed requests are within the bound, every action's group came back to
full strength, and every tick ran once. Then (`--manager-kills N`) the manager is killed with
SIGKILL at random moments (at boot, during a reload, a scale, a job run): no process of its
tree may be left 5 s later. The harness makes itself a subreaper, so every orphan of the
tree is still below it, whatever it became.

The peers (`--peers`, on by default in the long form) get the same load and the parts that
apply to them: SIGKILL and SIGSTOP of workers, HUP, TTIN and TTOU, and the manager kills.
Their interpreter is benchmarks/.peers (see harness.ensure_peers). Exit code 0 when corral
passes; the JSON report goes to `--json`.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import psutil

import harness
from harness import HOST, WrkReport

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
RESULTS = HERE / "results"
APP_PATH = "/items/42"
WORKERS = 4
REPLICAS = 2
CONNECTIONS = 32
WRK_TIMEOUT = 10.0  # seconds: a request slower than this counts as failed
WORKER_TIMEOUT = 2.0  # corral's --timeout: a worker stopped longer than this is replaced
PAUSE = (0.2, 3.0)  # how long a stopped process stays stopped, seconds
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
    at: float  # seconds since the load started
    target: str  # "web.3 (pid 1234)"
    group: str | None = None  # the group that has to come back to full strength
    held: int = 0  # connections on the app's port the target held then
    pid: int | None = None
    resumed_at: float | None = None  # a stopped process: when it was continued
    back_s: float | None = None  # seconds until its group was back to full strength
    gone: list[int] = field(default_factory=list)  # pids that must not serve at full strength


@dataclass
class Member:
    name: str
    pid: int | None
    state: str  # ready, starting, draining... (corral's words); ready/booting for a peer


@dataclass
class Snapshot:
    at: float
    groups: dict[str, list[Member]]


class Subject:
    """A server under chaos: how to start it, see its members, and hurt it."""

    name = ""
    actions: tuple[str, ...] = ()

    def __init__(self, rng: random.Random, scratch: Path) -> None:
        self.rng = rng
        self.scratch = scratch
        self.port = harness.free_port()
        self.wanted: dict[str, int] = {}
        self.run: harness.Running | None = None
        self.events: list[Event] = []
        self.now: Callable[[], float] = time.monotonic

    def argv(self) -> list[str]:
        raise NotImplementedError

    def cwd(self) -> Path:
        return APPS

    def env(self) -> dict[str, str]:
        return {}

    def snapshot(self) -> Snapshot:
        raise NotImplementedError

    def full(self, snap: Snapshot) -> bool:
        """Every wanted member of every group ready (web) or running (the others)."""
        raise NotImplementedError

    def act(self, action: str) -> Event | None:
        raise NotImplementedError

    def finish(self) -> None:
        """Back to the declared sizes, for the final check."""

    def serving(self, snap: Snapshot, group: str) -> set[int]:
        return {
            m.pid
            for m in snap.groups.get(group, [])
            if m.pid is not None and m.state in ("ready", "running")
        }

    def back(self, snap: Snapshot, event: Event) -> bool:
        """Whether `event`'s group is back at full strength without what it took away."""
        if not self.full(snap):
            return False
        if event.group is None:
            return True
        gone = set(event.gone)
        return not any(self.serving(snap, group) & gone for group in snap.groups)

    # -- shared actions: signals to one process -----------------------------------------

    def signal_member(self, action: str, group: str, sig: int, name: str, pid: int) -> Event:
        event = Event(action, 0.0, f"{name} (pid {pid})", group, pid=pid)
        event.held = harness.held_connections(pid, self.port) if group == "web" else 0
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if sig == signal.SIGSTOP:
            pause = self.rng.uniform(*PAUSE)
            threading.Timer(pause, self.resume, (event,)).start()
        else:
            event.gone = [pid]
        return event

    def resume(self, event: Event) -> None:
        assert event.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(event.pid, signal.SIGCONT)
        event.resumed_at = self.now()


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
        self.wanted = {"web": WORKERS, "consumer": REPLICAS}
        self.client: httpx.Client | None = None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "corral", "run", "-c", str(self.config)]

    def env(self) -> dict[str, str]:
        return {"CHAOS_TICKS": str(self.ticks), "PYTHONUNBUFFERED": "1"}

    def api(self) -> httpx.Client:
        if self.client is None:
            transport = httpx.HTTPTransport(uds=str(self.control))
            self.client = httpx.Client(transport=transport, base_url="http://corral", timeout=10)
        return self.client

    def status(self) -> dict[str, Any]:
        answer = self.api().get("/status")
        answer.raise_for_status()
        status: dict[str, Any] = answer.json()
        return status

    def snapshot(self) -> Snapshot:
        groups: dict[str, list[Member]] = {}
        for row in self.status()["processes"]:
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
        """Runs of the job that have written their tick (alive for 0.1 s or more)."""
        found = []
        for proc in psutil.process_iter(["cmdline", "create_time"]):
            with contextlib.suppress(psutil.Error, TypeError):
                if proc.info["cmdline"][:1] == ["corral: tick"] and proc.info["create_time"] < (
                    time.time() - 0.1
                ):
                    if self.run is not None and self.descends(proc):
                        found.append(proc)
        return found

    def descends(self, proc: psutil.Process) -> bool:
        assert self.run is not None
        with contextlib.suppress(psutil.Error):
            return any(p.pid == self.run.pid for p in proc.parents())
        return False

    def pick(self, snap: Snapshot, group: str, states: tuple[str, ...]) -> Member | None:
        members = [m for m in snap.groups.get(group, []) if m.state in states and m.pid]
        return self.rng.choice(members) if members else None

    def pending(self, *actions: str) -> bool:
        return any(e.back_s is None and e.action.startswith(actions) for e in self.events)

    def act(self, action: str) -> Event | None:
        snap = self.snapshot()
        sig = signal.SIGKILL if action.startswith("SIGKILL") else signal.SIGSTOP
        if action.endswith("web worker"):
            member = self.pick(snap, "web", ("ready",))
            if member is None or member.pid is None:
                return None
            return self.signal_member(action, "web", sig, member.name, member.pid)
        if action.endswith("web zygote"):
            member = self.pick(snap, "web.zygote", ("running",))
            if member is None or member.pid is None:
                return None
            event = self.signal_member(action, "web.zygote", sig, member.name, member.pid)
            if sig == signal.SIGKILL:  # its workers drain: new ones take their place
                event.gone += sorted(self.serving(snap, "web"))
            return event
        if action.endswith("launcher"):
            launcher = self.launcher()
            if launcher is None:
                return None
            event = self.signal_member(action, "launcher", sig, "launcher", launcher.pid)
            if sig == signal.SIGKILL:  # the zygotes and their children follow it
                for group in ("web", "web.zygote", "jobs.zygote"):
                    event.gone += sorted(self.serving(snap, group))
            return event
        if action.endswith("replica"):
            member = self.pick(snap, "consumer", ("running",))
            if member is None or member.pid is None:
                return None
            return self.signal_member(action, "consumer", sig, member.name, member.pid)
        if action.endswith("job run"):
            runs = self.job_runs()
            if not runs:
                return None
            run = self.rng.choice(runs)
            event = self.signal_member(action, "jobs", sig, "tick run", run.pid)
            event.group, event.gone = None, []  # a run is not restarted: its tick is accounted
            return event
        if action == "HUP":
            if self.pending("HUP", "restart"):
                return None
            assert self.run is not None
            event = Event(action, 0.0, "the manager", "everything")
            for group in ("web", "web.zygote", "consumer", "jobs.zygote"):
                event.gone += sorted(self.serving(snap, group))
            os.kill(self.run.pid, signal.SIGHUP)
            return event
        if action == "scale":
            group = self.rng.choice(["web", "consumer"])
            sizes = [n for n in ((2, 3, 4, 5, 6) if group == "web" else (1, 2, 3))]
            count = self.rng.choice([n for n in sizes if n != self.wanted[group]])
            return self.scale(group, count)
        if action == "restart":
            if self.pending("HUP", "restart"):
                return None
            group = self.rng.choice(["web", "consumer"])
            member = self.pick(snap, group, ("ready", "running"))
            target = member.name if member is not None and self.rng.random() < 0.5 else group
            answer = self.api().post("/restart", json={"target": target})
            event = Event(f"restart {target}", 0.0, target, group)
            if target == group:
                event.gone = sorted(self.serving(snap, group))
            elif member is not None and member.pid is not None:
                event.gone = [member.pid]
            if answer.status_code != 200 or "already" in answer.text:
                event.target += f" ({answer.text.strip()})"
                event.gone = []
            return event
        raise ValueError(action)

    def scale(self, group: str, count: int) -> Event:
        answer = self.api().post("/scale", json={"counts": {group: count}})
        answer.raise_for_status()
        self.wanted[group] = count
        return Event(f"scale {group}={count}", 0.0, group, group)

    def finish(self) -> None:
        for group, count in (("web", WORKERS), ("consumer", REPLICAS)):
            if self.wanted[group] != count:
                self.events.append(self.scale(group, count))

    def restarts(self) -> dict[str, int]:
        """corral_restarts_total by group and cause, from /metrics."""
        text = self.api().get("/metrics").text
        found = {}
        pattern = r'^corral_restarts_total\{cause="([^"]+)",group="([^"]+)"\} (\S+)'
        for cause, group, value in re.findall(pattern, text, re.MULTILINE):
            found[f"{group}: {cause}"] = int(float(value))
        return found

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


# --- the peers ------------------------------------------------------------------------------


class Peer(Subject):
    """A peer server: its workers are the processes that have run the app's lifespan."""

    actions = ("SIGKILL web worker", "SIGSTOP web worker", "HUP", "scale")

    def __init__(
        self, rng: random.Random, scratch: Path, name: str, python: Path, argv: list[str]
    ) -> None:
        super().__init__(rng, scratch)
        self.name = name
        self.python = python
        self._argv = [a.format(port=self.port, workers=WORKERS) for a in argv]
        self.wanted = {"web": WORKERS}

    def argv(self) -> list[str]:
        return [str(self.python), *self._argv]

    def snapshot(self) -> Snapshot:
        assert self.run is not None
        booted = self.run.ready_workers()
        members = []
        for proc in self.run.tree()[1:]:
            with contextlib.suppress(psutil.Error):
                if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED):
                    continue
                state = "ready" if proc.pid in booted else "booting"
                if proc.pid in booted or proc.ppid() == self.run.pid:
                    members.append(Member(f"pid {proc.pid}", proc.pid, state))
        return Snapshot(self.now(), {"web": members})

    def full(self, snap: Snapshot) -> bool:
        return len(self.serving(snap, "web")) >= self.wanted["web"]

    def act(self, action: str) -> Event | None:
        assert self.run is not None
        snap = self.snapshot()
        if action.endswith("web worker"):
            ready = sorted(self.serving(snap, "web"))
            if not ready:
                return None
            sig = signal.SIGKILL if action.startswith("SIGKILL") else signal.SIGSTOP
            pid = self.rng.choice(ready)
            return self.signal_member(action, "web", sig, "worker", pid)
        if action == "HUP":
            if self.pending("HUP"):
                return None
            event = Event(action, 0.0, "the main process", "web")
            event.gone = sorted(self.serving(snap, "web"))
            os.kill(self.run.pid, signal.SIGHUP)
            return event
        if action == "scale":
            count = self.wanted["web"] + (1 if self.wanted["web"] <= WORKERS else -1)
            return self.scale(count)
        raise ValueError(action)

    def scale(self, count: int) -> Event:
        """TTIN and TTOU, one worker at a time, as both peers take them."""
        assert self.run is not None
        step = signal.SIGTTIN if count > self.wanted["web"] else signal.SIGTTOU
        for _ in range(abs(count - self.wanted["web"])):
            os.kill(self.run.pid, step)
        self.wanted["web"] = count
        return Event(f"scale web={count}", 0.0, "web", "web")

    def pending(self, *actions: str) -> bool:
        return any(e.back_s is None and e.action.startswith(actions) for e in self.events)

    def finish(self) -> None:
        if self.wanted["web"] != WORKERS:
            self.events.append(self.scale(WORKERS))

    def restarts(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


PEERS = {
    "gunicorn + UvicornWorker": [
        *("-m", "gunicorn", "fastapi_app:app", "-k", "uvicorn_worker.UvicornWorker"),
        *("--workers", "{workers}", "--bind", "127.0.0.1:{port}", "--timeout", "2"),
    ],
    "uvicorn --workers": [
        *("-m", "uvicorn", "fastapi_app:app", "--workers", "{workers}"),
        *("--port", "{port}", "--no-access-log", "--timeout-worker-healthcheck", "2"),
    ],
}


# --- the run --------------------------------------------------------------------------------


class Watcher(threading.Thread):
    """Samples the subject's members every 50 ms; notes when each event's group is back."""

    def __init__(self, subject: Subject) -> None:
        super().__init__(daemon=True)
        self.subject = subject
        self.stopping = threading.Event()
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.check()
            time.sleep(0.05)

    def check(self) -> bool:
        """Note the events whose group is back; True when none is waiting."""
        try:
            snap = self.subject.snapshot()
        except (httpx.HTTPError, psutil.Error, OSError) as error:
            self.errors.append(f"{type(error).__name__}: {error}")
            return False
        waiting = False
        with self.lock:
            for event in self.subject.events:
                if event.back_s is not None or event.group is None:
                    continue
                since = event.at if event.resumed_at is None else event.resumed_at
                if event.action.startswith("SIGSTOP") and event.resumed_at is None:
                    waiting = True
                elif self.subject.back(snap, event):
                    event.back_s = max(0.0, snap.at - since)
                else:
                    waiting = True
        return not waiting and self.subject.full(snap)


@dataclass
class Verdict:
    server: str
    seconds: float
    wrk: dict[str, Any]
    failed: int
    bound: int
    events: list[dict[str, Any]]
    not_back: list[str]
    restarts: dict[str, int]
    ticks: dict[str, Any]
    exit_code: int | None
    left: list[str]
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


def chaos(
    subject: Subject,
    seconds: float,
    once_each: bool,
    gap: tuple[float, float],
    skip: frozenset[str] = frozenset(),
) -> Verdict:
    """Start `subject`, load it for `seconds` while acting on it, stop it; the verdict."""
    rng = subject.rng
    problems: list[str] = []
    report: WrkReport | None = None
    exit_code: int | None = None
    with harness.running(
        subject.argv(), subject.cwd(), subject.env(), "BENCH_READY_DIR", subject.port
    ) as run:
        subject.run = run
        wait_full(subject, 60.0, problems, "at start")
        watcher = Watcher(subject)
        actions = [a for a in subject.actions if a not in skip]
        plan = list(actions)
        rng.shuffle(plan)
        with harness.wrk_in_background(run.port, APP_PATH, CONNECTIONS, seconds + 60) as load:
            started = time.monotonic()
            subject.now = lambda: time.monotonic() - started
            watcher.start()
            while time.monotonic() - started < seconds and run.proc.poll() is None:
                time.sleep(rng.uniform(*gap))
                if once_each and not plan:
                    continue
                action = plan.pop() if once_each else rng.choice(actions)
                at = subject.now()
                try:
                    event = subject.act(action)
                except (httpx.HTTPError, OSError, psutil.Error) as error:
                    if run.proc.poll() is not None:
                        break
                    problems.append(f"{action} at {at:.1f}s: the harness failed: {error}")
                    continue
                if event is None and once_each:
                    plan.insert(0, action)  # nothing to act on now: later
                if event is not None:
                    event.at = at
                    with watcher.lock:
                        subject.events.append(event)
                    progress(f"{at:6.1f}s {event.action}: {event.target}")
            report = wrk_report(load, WRK_TIMEOUT)
        for event in subject.events:  # nothing stays stopped
            if event.action.startswith("SIGSTOP") and event.resumed_at is None:
                subject.resume(event)
        if run.proc.poll() is None:
            subject.finish()
            if once_each and plan:
                problems.append(f"not done (nothing to act on): {', '.join(plan)}")
            deadline = time.monotonic() + SETTLE
            while not watcher.check() and time.monotonic() < deadline:
                time.sleep(0.1)
        watcher.stopping.set()
        watcher.join(5)
        restarts = subject.restarts() if run.proc.poll() is None else {}
        subject.close()
        if run.proc.poll() is not None:
            problems.append(
                f"{subject.name} exited (code {run.proc.returncode}) during the chaos; its "
                f"last lines:\n{run.log_tail(15)}"
            )
        else:
            run.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                exit_code = run.proc.wait(60)
        log = run.log.read_text(errors="replace")
    left = [harness.describe(p) for p in harness.wait_orphans_gone(set(), GONE_WITHIN)]
    if left:
        problems.append(f"left after the stop: {', '.join(left)}")
    assert report is not None
    bound = failure_bound(subject.events, log)
    failed = report.failed
    if failed > bound:
        problems.append(f"{failed} requests failed, more than the {bound} in flight on killed ones")
    not_back = [
        f"{e.action} at {e.at:.1f}s ({e.target})"
        for e in subject.events
        if e.group is not None and e.back_s is None
    ]
    if not_back:
        problems.append(f"not back to full strength after: {'; '.join(not_back)}")
    ticks = count_ticks(subject) if isinstance(subject, Corral) else {}
    if ticks.get("twice") or ticks.get("missing"):
        problems.append(f"ticks run twice: {ticks['twice']}, not at all: {ticks['missing']}")
    if isinstance(subject, Corral) and exit_code != 0 and run.proc.returncode is not None:
        problems.append(f"corral's exit code after SIGTERM: {exit_code}")
    return Verdict(
        server=subject.name,
        seconds=seconds,
        wrk={k: v for k, v in asdict(report).items()},
        failed=failed,
        bound=bound,
        events=[{k: v for k, v in asdict(e).items() if k not in ("gone",)} for e in subject.events],
        not_back=not_back,
        restarts=restarts,
        ticks=ticks,
        exit_code=exit_code,
        left=left,
        problems=problems,
    )


def wait_full(subject: Subject, timeout: float, problems: list[str], when: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert subject.run is not None
        subject.run.check_alive()
        with contextlib.suppress(httpx.HTTPError, psutil.Error, OSError):
            if subject.full(subject.snapshot()):
                return
        time.sleep(0.1)
    problems.append(f"not at full strength {when} within {timeout:.0f} s")


def wrk_report(load: subprocess.Popen[str], timeout: float) -> WrkReport:
    return harness.stop_wrk(load)


def failure_bound(events: list[Event], log: str) -> int:
    """The requests in flight on the web workers that died of a signal: those killed by the
    harness, and those it stopped that corral then killed (stuck past --timeout)."""
    bound = 0
    for event in events:
        if event.group != "web" or event.pid is None:
            continue
        if event.action.startswith("SIGKILL"):
            bound += event.held
        elif re.search(rf"\(pid {event.pid}, killed by SIG", log):
            bound += event.held
    return bound


def count_ticks(subject: Corral) -> dict[str, Any]:
    """Each tick's runs, from the job's own lines (its CORRAL_JOB_TICK), on a 1 s grid."""
    if not subject.ticks.exists():
        return {"runs": 0, "ticks": 0, "twice": [], "missing": ["no run at all"]}
    runs = Counter(line.split()[0] for line in subject.ticks.read_text().splitlines() if line)
    ticks = sorted(float(t) for t in runs)
    first = ticks[0]
    by_index = Counter({round(float(t) - first): n for t, n in runs.items()})
    last = max(by_index)
    return {
        "runs": sum(runs.values()),
        "ticks": len(runs),
        "twice": [f"{first + i:.3f} ({n} runs)" for i, n in sorted(by_index.items()) if n > 1],
        "missing": [f"{first + i:.3f}" for i in range(last + 1) if i not in by_index],
    }


# --- SIGKILL of the manager ----------------------------------------------------------------


@dataclass
class Kill:
    server: str
    moment: str
    after_s: float  # since the moment's action (or the start)
    left: list[str]


def kill_manager(subject: Subject, moment: str, rng: random.Random) -> Kill:
    """Start `subject`, SIGKILL its first process at `moment`; what is left 5 s later."""
    proc = subprocess.Popen(
        subject.argv(),
        cwd=subject.cwd(),
        env=harness.server_env(subject.env()) | {"BENCH_READY_DIR": str(subject.scratch)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    run = harness.Running(proc, subject.port, subject.scratch, time.monotonic(), Path(os.devnull))
    subject.run = run
    try:
        delay = 0.0
        if moment == "boot":
            delay = rng.uniform(0.0, 1.5)
        else:
            wait_full(subject, 60.0, [], "")
            if moment == "reload":
                os.kill(proc.pid, signal.SIGHUP)
                delay = rng.uniform(0.0, 0.8)
            elif moment == "scale":
                if isinstance(subject, Corral):
                    subject.scale("web", WORKERS + 2)
                else:
                    assert isinstance(subject, Peer)
                    subject.scale(WORKERS + 2)
                delay = rng.uniform(0.0, 0.5)
            elif moment == "job run" and isinstance(subject, Corral):
                deadline = time.monotonic() + 5
                while not subject.job_runs() and time.monotonic() < deadline:
                    time.sleep(0.02)
        time.sleep(delay)
        proc.kill()
        proc.wait(10)
        left = [harness.describe(p) for p in harness.wait_orphans_gone(set(), GONE_WITHIN)]
    finally:
        for p in harness.orphans(set()):
            with contextlib.suppress(psutil.Error):
                p.kill()
        harness.wait_orphans_gone(set(), 5)
        subject.close()
    return Kill(subject.name, moment, delay, left)


def manager_kills(make: Callable[[Path], Subject], count: int, rng: random.Random) -> list[Kill]:
    moments = ["boot", "reload", "scale"]
    if make is not None and issubclass_corral(make):
        moments.append("job run")
    kills = []
    for index in range(count):
        with tempfile.TemporaryDirectory(prefix="corral-chaos-") as scratch:
            subject = make(Path(scratch))
            moment = moments[index % len(moments)]
            kill = kill_manager(subject, moment, rng)
            progress(
                f"{subject.name}: SIGKILL at {moment} (+{kill.after_s:.2f}s): left {kill.left}"
            )
            kills.append(kill)
    return kills


def issubclass_corral(make: Callable[[Path], Subject]) -> bool:
    return getattr(make, "corral", False)


# --- the command ----------------------------------------------------------------------------


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--short", action="store_true", help="15 s, corral only, each once")
    parser.add_argument("--seconds", type=float, default=60.0, help="of chaos under load")
    parser.add_argument("--seed", type=int, default=None, help="of the random moments")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--manager-kills", type=int, default=None)
    parser.add_argument(
        "--skip", default="", help="comma-separated actions not to take, such as 'SIGKILL launcher'"
    )
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.become_subreaper()
    rng = random.Random(args.seed)
    began = time.monotonic()
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "seed": args.seed,
        "load_before": os.getloadavg(),
        "nproc": os.cpu_count(),
    }
    progress(f"seed {args.seed}")
    once_each = args.short
    gap = (0.6, 1.0) if once_each else (1.0, 2.5)
    verdicts: list[Verdict] = []
    subjects: list[Callable[[Path], Subject]] = []

    def corral(scratch: Path) -> Subject:
        return Corral(rng, scratch)

    corral.corral = True  # type: ignore[attr-defined]
    subjects.append(corral)
    if args.peers:
        python = harness.ensure_peers()
        for name, peer_argv in PEERS.items():

            def peer(scratch: Path, name: str = name, peer_argv: list[str] = peer_argv) -> Subject:
                return Peer(rng, scratch, name, python, peer_argv)

            subjects.append(peer)
    cpu = harness.cpu_reading()
    for make in subjects:
        with tempfile.TemporaryDirectory(prefix="corral-chaos-") as scratch:
            subject = make(Path(scratch))
            progress(f"--- {subject.name}: {args.seconds:g} s of chaos under load")
            skip = frozenset(a.strip() for a in args.skip.split(",") if a.strip())
            verdicts.append(chaos(subject, args.seconds, once_each, gap, skip))
    kills: list[Kill] = []
    for make in subjects:
        kills += manager_kills(make, args.manager_kills, rng)
    meta["other_load"] = harness.others_share(cpu, harness.cpu_reading())
    meta["load_after"] = os.getloadavg()
    meta["elapsed_s"] = round(time.monotonic() - began, 1)
    print(render(meta, verdicts, kills))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "verdicts": [asdict(v) | {"passed": v.passed} for v in verdicts],
        "kills": [asdict(k) for k in kills],
    }
    args.json.write_text(json.dumps(payload, indent=1) + "\n")
    corral_verdict = verdicts[0]
    corral_kills = [k for k in kills if k.server == "corral"]
    return 0 if corral_verdict.passed and not any(k.left for k in corral_kills) else 1


def render(meta: dict[str, Any], verdicts: list[Verdict], kills: list[Kill]) -> str:
    lines = [
        f"{meta['date']}  seed {meta['seed']}  nproc {meta['nproc']}",
        "load average before: {:.2f} {:.2f} {:.2f}".format(*meta["load_before"])
        + ", after: {:.2f} {:.2f} {:.2f}".format(*meta["load_after"]),
        f"other processes used {meta['other_load']:.0%} of the CPUs during the run",
        "",
    ]
    for v in verdicts:
        lines.append(f"{v.server}: {'PASS' if v.passed else 'FAIL'}")
        lines.append(
            f"  requests {v.wrk['requests']}, failed {v.failed} (bound {v.bound}); "
            f"{v.wrk['rps']:.0f} req/s"
        )
        by_action: dict[str, list[float | None]] = {}
        for e in v.events:
            kind = re.sub(r"=\d+| web\.\d+| consumer\.\d+", "", e["action"])
            by_action.setdefault(kind, []).append(e["back_s"])
        for kind, times in sorted(by_action.items()):
            back = [t for t in times if t is not None]
            shown = f"back in max {max(back):.2f} s" if back else ""
            lines.append(f"  {kind}: {len(times)} times {shown}")
        if v.restarts:
            lines.append("  restarts: " + ", ".join(f"{k} {n}" for k, n in v.restarts.items()))
        if v.ticks:
            lines.append(
                f"  ticks: {v.ticks['ticks']} ({v.ticks['runs']} runs); twice: "
                f"{len(v.ticks['twice'])}, not at all: {len(v.ticks['missing'])}"
            )
        lines += [f"  problem: {p}" for p in v.problems]
    for k in kills:
        lines.append(
            f"{k.server}: SIGKILL of the manager at {k.moment} (+{k.after_s:.2f} s): "
            + (f"LEFT {', '.join(k.left)}" if k.left else f"nothing left after {GONE_WITHIN:g} s")
        )
    lines.append(f"{meta['elapsed_s']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
