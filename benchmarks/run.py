"""corral against its peers, with the same apps, workers and load for every server.

The peers: uvicorn --workers, gunicorn with uvicorn-worker's UvicornWorker, gunicorn's own
`-k asgi` worker (when this gunicorn has it) and granian.

    python benchmarks/run.py            # 3 rounds x 5 s (about 10 minutes)
    python benchmarks/run.py --quick    # 1 round x 3 s, a smoke run

The peers are installed into their own virtual environment, benchmarks/.peers/, on the first
run (--upgrade-peers upgrades them); corral runs from the interpreter running this script.
Load goes to 127.0.0.1 only. Measured, per server:

- throughput: requests/s (median of the rounds) with the access log off and on, and the p99
  latency, with wrk -t2 -c64; the rounds are interleaved (A B C D A B C D ...), so the
  machine's drift hits every server alike; each start also times the first 200;
- memory: PSS summed over the whole process tree with 4 workers, after 1 s of load, with and
  without preload where the server has it;
- reload: failed requests while the server reloads on SIGHUP under load (wrk -c32);
- recovery: after one worker is SIGKILLed, the time until a new worker process has run its
  lifespan startup and has answered a request.

It prints the tables and writes benchmarks/results/latest.json and latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import harness
from harness import MIB, PEER_PACKAGES, PROJECT_PACKAGES, Running, WrkReport

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
SUBJECT = "corral"

# --- what is measured: the apps and the servers, as data --------------------------------


@dataclass(frozen=True)
class App:
    name: str
    target: str  # MODULE:ATTRIBUTE
    directory: Path  # the servers run here, so the module is importable
    path: str  # what the load requests
    ready_env: str  # the variable naming the directory where workers mark their startup


BENCH_APPS = HERE / "apps"
HELLO = App("hello", "hello:app", BENCH_APPS, "/", "BENCH_READY_DIR")
FASTAPI = App("fastapi", "fastapi_app:app", BENCH_APPS, "/items/42", "BENCH_READY_DIR")
FLASK = App("flask", "flask_app:app", BENCH_APPS, "/items/42", "BENCH_READY_DIR")  # WSGI
# FastAPI and a ~65 MB dict built at import: what preload is for.
TABLE = App("table", "table:app", ROOT / "tests" / "apps", "/rows/1234", "TABLE_READY_DIR")


@dataclass(frozen=True)
class Flags:
    """The flags that turn an option on and off, and which applies when neither is given."""

    on: tuple[str, ...]
    off: tuple[str, ...]
    default: bool

    def __call__(self, enabled: bool) -> tuple[str, ...]:
        return self.on if enabled else self.off


@dataclass(frozen=True)
class Hup:
    """SIGHUP goes to the process the harness starts; `target` says which one that is."""

    target: str
    effect: str  # what the server does on it, from its source


@dataclass(frozen=True)
class Server:
    name: str
    interpreter: str  # "project": the one running this script; "peers": benchmarks/.peers
    argv: tuple[str, ...]  # after the interpreter; {app}, {workers} and {port} are filled in
    access_log: Flags
    preload: Flags | None  # None: the server has no preload
    hup: Hup | None  # None: SIGHUP does not reload the server
    notes: tuple[str, ...] = ()
    peer: bool = True  # False: corral itself, or one of its settings
    both_logs: bool = True  # measured with its access log on too (else off only)


CORRAL = Server(
    name=SUBJECT,
    interpreter="project",
    argv=("-m", "corral", "run", "{app}", "--workers", "{workers}", "--port", "{port}"),
    access_log=Flags(("--access-log",), ("--no-access-log",), default=True),
    preload=Flags(("--preload",), ("--no-preload",), default=True),
    hup=Hup(
        "the manager",
        "rolling reload: a new zygote imports the app, then one worker at a time a "
        "replacement starts and the old worker drains once it is ready",
    ),
)


def corral_variant(*flags: str) -> Server:
    """corral with `flags`, measured beside its defaults for throughput only (not a peer)."""
    return Server(
        name=" ".join((SUBJECT, *flags)),
        interpreter="project",
        argv=(*CORRAL.argv, *flags),
        access_log=CORRAL.access_log,
        preload=None,
        hup=None,
        peer=False,
        both_logs=False,
    )


CORRAL_ZTTP = corral_variant("--http", "zttp")
CORRAL_H11 = corral_variant("--http", "h11")  # not in the default run: --servers names it
CORRAL_UNCOUNTED = corral_variant("--no-request-metrics")
UVICORN = Server(
    name="uvicorn --workers",
    interpreter="peers",
    argv=("-m", "uvicorn", "{app}", "--workers", "{workers}", "--port", "{port}"),
    access_log=Flags(("--access-log",), ("--no-access-log",), default=True),
    preload=None,
    hup=Hup(
        "the --workers parent",
        "restarts the workers one at a time: a new process starts, and once it answers the "
        "parent's health ping the old one gets SIGTERM",
    ),
)
GUNICORN_HUP = Hup(
    "the master",
    "reloads its configuration, starts N new workers and stops the old ones gracefully; "
    "with --preload the new workers are forked from the master's old import",
)
GUNICORN_UVICORN_WORKER = Server(
    name="gunicorn + UvicornWorker",
    interpreter="peers",
    argv=(
        *("-m", "gunicorn", "{app}", "-k", "uvicorn_worker.UvicornWorker"),
        *("--workers", "{workers}", "--bind", "127.0.0.1:{port}"),
    ),
    access_log=Flags(("--access-logfile", "-"), (), default=False),
    preload=Flags(("--preload",), (), default=False),
    hup=GUNICORN_HUP,
)
GUNICORN_ASGI = Server(
    name="gunicorn -k asgi",
    interpreter="peers",
    argv=(
        *("-m", "gunicorn", "{app}", "-k", "asgi"),
        *("--workers", "{workers}", "--bind", "127.0.0.1:{port}"),
    ),
    access_log=Flags(("--access-logfile", "-"), (), default=False),
    preload=Flags(("--preload",), (), default=False),
    hup=GUNICORN_HUP,
)
GRANIAN = Server(
    name="granian",
    interpreter="peers",
    argv=(
        *("-m", "granian", "{app}", "--interface", "asgi"),
        *("--workers", "{workers}", "--port", "{port}", "--respawn-failed-workers"),
    ),
    access_log=Flags(("--access-log",), ("--no-access-log",), default=False),
    preload=None,
    hup=Hup(
        "the main process",
        "respawns the workers one at a time, waiting --respawn-interval (3.5 s) between "
        "starting a new one and stopping the old one",
    ),
    notes=("run with --respawn-failed-workers: without it, granian exits when a worker dies",),
)
SERVERS = (
    CORRAL,
    CORRAL_ZTTP,
    CORRAL_H11,
    CORRAL_UNCOUNTED,
    UVICORN,
    GUNICORN_UVICORN_WORKER,
    GUNICORN_ASGI,
    GRANIAN,
)
OTHER_PHASES = (CORRAL, UVICORN, GUNICORN_UVICORN_WORKER, GUNICORN_ASGI, GRANIAN)
"""The servers of the memory, reload and recovery phases (the settings of corral that change
the request path change neither)."""

# The WSGI phase: the Flask app, N workers of T threads each ({threads}: --threads).
CORRAL_WSGI = Server(
    name=SUBJECT,
    interpreter="project",
    argv=(*CORRAL.argv, "--threads", "{threads}"),
    access_log=CORRAL.access_log,
    preload=CORRAL.preload,
    hup=CORRAL.hup,
)
GUNICORN_GTHREAD = Server(
    name="gunicorn gthread",
    interpreter="peers",
    argv=(
        *("-m", "gunicorn", "{app}", "--worker-class", "gthread", "--threads", "{threads}"),
        *("--workers", "{workers}", "--bind", "127.0.0.1:{port}"),
    ),
    access_log=Flags(("--access-logfile", "-"), (), default=False),
    preload=Flags(("--preload",), (), default=False),
    hup=GUNICORN_HUP,
)
WSGI_SERVERS = (CORRAL_WSGI, GUNICORN_GTHREAD)


@dataclass(frozen=True)
class Variant:
    """A server with its access log on or off, and with or without preload."""

    server: Server
    access_log: bool = False
    preload: bool | None = None  # None: the server's default (or it has no preload)

    @property
    def label(self) -> str:
        flags, name = self.server.preload, self.server.name
        if flags is None or self.preload is None:
            return name
        if self.preload == flags.default:
            return f"{name} (preload)" if self.preload else name
        return f"{name} {' '.join(flags(self.preload))}"

    def argv(
        self, pythons: Mapping[str, Path], app: App, workers: int, port: int, threads: int = 1
    ) -> list[str]:
        fill = {"app": app.target, "workers": str(workers), "port": str(port)}
        fill["threads"] = str(threads)
        argv = [str(pythons[self.server.interpreter])]
        argv += [part.format(**fill) for part in self.server.argv]
        argv += self.server.access_log(self.access_log)
        if self.server.preload is not None and self.preload is not None:
            argv += self.server.preload(self.preload)
        return argv


def preload_variants(server: Server) -> list[Variant]:
    """The server as it comes, and with preload toggled when it has the option."""
    if server.preload is None:
        return [Variant(server)]
    return [
        Variant(server, preload=server.preload.default),
        Variant(server, preload=not server.preload.default),
    ]


@contextmanager
def start(
    variant: Variant, app: App, workers: int, pythons: Mapping[str, Path], threads: int = 1
) -> Iterator[Running]:
    port = harness.free_port()
    argv = variant.argv(pythons, app, workers, port, threads)
    with harness.running(argv, app.directory, {}, app.ready_env, port) as run:
        yield run


# --- the peers' environment --------------------------------------------------------------


def compile_project(python: Path | str) -> str:
    """Compile the project's modules to bytecode, as pip does when it installs a wheel; a note.

    An editable install run with PYTHONDONTWRITEBYTECODE=1 (or from a read-only tree) would
    otherwise compile every corral module at every start, while the peers, installed by pip,
    start from bytecode: 0.04-0.05 s more to the first 200 (measured), which an installed
    corral does not pay.
    """
    code = (
        "import compileall, os, corral; "
        "compileall.compile_dir(os.path.dirname(corral.__file__), quiet=1)"
    )
    subprocess.run([str(python), "-c", code], check=True, timeout=300)
    return f"{SUBJECT}'s modules were compiled to bytecode before the run, as pip does at install"


def has_gunicorn_asgi_worker(python: Path) -> bool:
    """Whether this gunicorn has its own ASGI worker (`-k asgi`, gunicorn 24 and later)."""
    code = "import gunicorn.workers as w; print('asgi' in w.SUPPORTED_WORKERS)"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


# --- measurements: one job each ----------------------------------------------------------


def measure_throughput(
    run: Running, app: App, connections: int, seconds: float, warmup: float
) -> tuple[WrkReport, float | None, float | None]:
    """wrk's report on `app.path` after a warm-up (which is not counted), the busiest
    worker's share of the work (its CPU time over the workers' mean; 1.0: perfectly even),
    and the server's CPU microseconds per request: the CPU time of the processes of its tree
    that lived through the measurement, over the requests. Unlike req/s, the last hardly
    moves with the other load on the machine."""
    harness.run_wrk(run.port, app.path, connections, warmup)
    before, tree_before = run.worker_cpu(), harness.tree_cpu_seconds(run)
    report = harness.run_wrk(run.port, app.path, connections, seconds)
    after, tree_after = run.worker_cpu(), harness.tree_cpu_seconds(run)
    used = [after[pid] - before[pid] for pid in after.keys() & before.keys()]
    busiest = max(used) / statistics.mean(used) if used and sum(used) > 0 else None
    tree = sum(tree_after[pid] - tree_before[pid] for pid in tree_before.keys() & tree_after.keys())
    return report, busiest, (tree / report.requests * 1e6 if report.requests else None)


def measure_memory(run: Running, app: App, connections: int) -> list[int]:
    """The PSS of each process of the tree (the one started first), after 1 s of load."""
    harness.run_wrk(run.port, app.path, connections, 1)
    time.sleep(0.5)
    return harness.tree_pss(run)


@dataclass(frozen=True)
class ReloadResult:
    reload_s: float | None  # SIGHUP until no old worker is left and N new ones are ready
    load: WrkReport


def measure_reload(
    run: Running, app: App, workers: int, connections: int, timeout: float
) -> ReloadResult:
    """Failed requests under load while the server reloads on SIGHUP. The load starts 1 s
    before the signal and stops 1 s after the reload is complete (or after `timeout`)."""
    old = run.ready_workers()
    with harness.wrk_in_background(run.port, app.path, connections, timeout + 30) as load:
        time.sleep(1.0)
        sent = time.monotonic()
        os.kill(run.pid, signal.SIGHUP)
        reload_s = wait_replaced(run, old, workers, sent + timeout)
        time.sleep(1.0)
        report = harness.stop_wrk(load)
    return ReloadResult(None if reload_s is None else reload_s - sent, report)


def wait_replaced(run: Running, old: set[int], workers: int, deadline: float) -> float | None:
    """When no worker of `old` is alive and `workers` new ones are ready, or None by `deadline`."""
    while time.monotonic() < deadline:
        run.check_alive()
        ready = run.ready_workers()
        if not ready & old and len(ready - old) >= workers:
            return time.monotonic()
        time.sleep(0.05)
    return None


@dataclass(frozen=True)
class RecoveryResult:
    victim: int
    ready_s: float | None  # SIGKILL until a new worker has run its lifespan startup
    answering_s: float | None  # SIGKILL until a new worker has answered a request


def measure_recovery(run: Running, timeout: float) -> RecoveryResult:
    """SIGKILL one worker of an idle server; time until a new worker process has run its
    lifespan startup, and until it has answered GET /pid (on a fresh connection each try, so
    any worker may take it). Full capacity is the latter: the N-1 survivors kept answering."""
    before = run.markers()
    victim = min(run.ready_workers())
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    ready_s: float | None = None
    while time.monotonic() - killed < timeout:
        pid = harness.answering_pid(run.port)
        elapsed = time.monotonic() - killed
        if ready_s is None and run.markers() - before:
            ready_s = elapsed  # checked after the request, so never later than the answer
        if pid is not None and pid not in before:
            return RecoveryResult(victim, ready_s, elapsed)
        if pid is None:
            time.sleep(0.001)
    return RecoveryResult(victim, ready_s, None)


# --- the phases: which variants, apps and rounds ---------------------------------------


@dataclass
class Settings:
    workers: int
    throughput_workers: tuple[int, ...]
    memory_workers: int
    rounds: int
    seconds: float
    warmup: float
    connections: int
    reload_connections: int
    reload_timeout: float
    recovery_timeout: float
    pythons: dict[str, Path] = field(default_factory=dict)
    threads: int = 4  # per worker, for the WSGI phase


Record = dict[str, Any]


def sample(
    phase: str,
    variant: Variant,
    app: App,
    workers: int,
    settings: Settings,
    measure: Callable[[Running], Record],
    **context: Any,
) -> Record:
    """Start the variant, measure it, stop it; a failure is recorded, not raised."""
    record: Record = {
        "phase": phase,
        "app": app.name,
        "server": variant.server.name,
        "variant": variant.label,
        "access_log": variant.access_log,
        "preload": variant.preload,
        "workers": workers,
        **context,
    }
    before = harness.cpu_reading()
    try:
        with start(variant, app, workers, settings.pythons, settings.threads) as run:
            record |= measure(run)
    except Exception as error:  # one failed sample must not end the run
        record["error"] = f"{type(error).__name__}: {error}"
    record["other_load"] = harness.others_share(before, harness.cpu_reading())
    progress(record)
    return record


def throughput_measure(app: App, workers: int, settings: Settings) -> Callable[[Running], Record]:
    def go(run: Running) -> Record:
        first_200_s = harness.wait_first_200(run, app.path)
        harness.wait_ready(run, workers, app.path)
        report, busiest, cpu_us = measure_throughput(
            run, app, settings.connections, settings.seconds, settings.warmup
        )
        return {
            "first_200_s": first_200_s,
            **asdict(report),
            "failed": report.failed,
            "busiest_share": busiest,
            "cpu_us_per_request": cpu_us,
        }

    return go


def throughput_phase(
    servers: Sequence[Server],
    settings: Settings,
    apps: Sequence[App] = (HELLO, FASTAPI),
    worker_counts: Sequence[int] | None = None,
) -> list[Record]:
    """Each app on each server, with each of `worker_counts` workers (the settings'
    throughput_workers if None), access log off and on, the rounds interleaved."""
    worker_counts = worker_counts or settings.throughput_workers
    records = []
    first = worker_counts[0]
    for round_ in range(1, settings.rounds + 1):
        for workers in worker_counts:
            for app in apps:
                for server in servers:
                    # The access log on: with the first worker count, for the servers as
                    # they come.
                    logs = (False, True) if server.both_logs and workers == first else (False,)
                    for access_log in logs:
                        variant = Variant(server, access_log=access_log)
                        records.append(
                            sample(
                                "throughput", variant, app, workers, settings,
                                throughput_measure(app, workers, settings), round=round_,
                            )
                        )  # fmt: skip
    return records


def memory_phase(servers: Sequence[Server], settings: Settings) -> list[Record]:
    def measure(app: App) -> Callable[[Running], Record]:
        def go(run: Running) -> Record:
            harness.wait_ready(run, settings.memory_workers, app.path)
            each = measure_memory(run, app, settings.connections)
            return {"pss_bytes": sum(each), "processes": len(each), "root_pss_bytes": each[0]}

        return go

    return [
        sample("memory", variant, app, settings.memory_workers, settings, measure(app))
        for app in (HELLO, FASTAPI, TABLE)
        for server in servers
        if server in OTHER_PHASES
        for variant in preload_variants(server)
    ]


def reload_phase(servers: Sequence[Server], settings: Settings, app: App = FASTAPI) -> list[Record]:
    def measure(run: Running) -> Record:
        harness.wait_ready(run, settings.workers, app.path)
        result = measure_reload(
            run, app, settings.workers, settings.reload_connections, settings.reload_timeout
        )
        load = result.load
        return {"reload_s": result.reload_s, **asdict(load), "failed": load.failed}

    return [
        sample("reload", Variant(server), app, settings.workers, settings, measure, round=round_)
        for round_ in range(1, settings.rounds + 1)
        for server in servers
        if server.hup is not None
    ]


def recovery_phase(servers: Sequence[Server], settings: Settings) -> list[Record]:
    app = FASTAPI

    def measure(run: Running) -> Record:
        harness.wait_ready(run, settings.workers, app.path)
        time.sleep(0.5)  # settled: no worker is still starting
        return asdict(measure_recovery(run, settings.recovery_timeout))

    return [
        sample("recovery", variant, app, settings.workers, settings, measure, round=round_)
        for round_ in range(1, settings.rounds + 1)
        for server in servers
        if server in OTHER_PHASES
        for variant in preload_variants(server)
    ]


def wsgi_phase(servers: Sequence[Server], settings: Settings) -> list[Record]:
    """The Flask app on corral and on gunicorn's gthread worker, whatever --servers says:
    throughput (access log off and on) and failed requests on SIGHUP under load."""
    return [
        *throughput_phase(WSGI_SERVERS, settings, (FLASK,), (settings.workers,)),
        *reload_phase(WSGI_SERVERS, settings, app=FLASK),
    ]


PHASES: dict[str, Callable[[Sequence[Server], Settings], list[Record]]] = {
    "throughput": throughput_phase,
    "memory": memory_phase,
    "reload": lambda servers, settings: reload_phase(
        [s for s in servers if s in OTHER_PHASES], settings
    ),
    "recovery": recovery_phase,
    "wsgi": wsgi_phase,
}


def progress(record: Record) -> None:
    head = f"[{record['phase']}"
    head += f" {record['round']}]" if "round" in record else "]"
    log = " access log on" if record["phase"] == "throughput" and record["access_log"] else ""
    what = f"{head} {record['app']}: {record['variant']}{log}"
    if "error" in record:
        detail = f"FAILED: {record['error']}"
    elif record["phase"] == "throughput":
        detail = (
            f"{record['workers']} workers, {record['rps']:.0f} req/s, "
            f"p99 {fmt(record['p99_ms'], '.1f')} ms, "
            f"{fmt(record.get('cpu_us_per_request'), '.0f')} us CPU/req, busiest worker "
            f"x{fmt(record['busiest_share'], '.2f')}, "
            f"first 200 after {record['first_200_s']:.2f} s, {record['failed']} failed"
        )
    elif record["phase"] == "memory":
        detail = f"{record['pss_bytes'] / MIB:.1f} MiB in {record['processes']} processes"
    elif record["phase"] == "reload":
        detail = f"reload {fmt(record['reload_s'], '.2f')} s, {record['failed']} failed"
        detail += f" of {record['requests']}"
    else:
        ready, answering = fmt(record["ready_s"], ".3f"), fmt(record["answering_s"], ".3f")
        detail = f"new worker ready after {ready} s, answering after {answering} s"
    other = f" (other load {record['other_load']:.0%})"
    print(f"{what}: {detail}{other}", file=sys.stderr, flush=True)


# --- the summary -------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ok(records: Sequence[Record], **match: Any) -> list[Record]:
    """The records without an error whose fields equal `match`."""
    return [r for r in records if "error" not in r and all(r.get(k) == v for k, v in match.items())]


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def median_rps(
    records: Sequence[Record], app: App, server: Server, access_log: bool, workers: int
) -> float | None:
    """The median req/s of `server` on `app` with `workers` (throughput and WSGI records)."""
    found = ok(
        records,
        phase="throughput",
        app=app.name,
        server=server.name,
        access_log=access_log,
        workers=workers,
    )
    return median([r["rps"] for r in found])


def best_peer_rps(
    records: Sequence[Record], app: App, servers: Sequence[Server], workers: int
) -> float | None:
    """The highest median req/s among the peers, access log off."""
    rates = [median_rps(records, app, s, False, workers) for s in servers if s.peer]
    return max((r for r in rates if r is not None), default=None)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def throughput_table(
    records: Sequence[Record], app: App, servers: Sequence[Server], workers: int
) -> Table:
    best_peer = best_peer_rps(records, app, servers, workers)
    rows = []
    for server in servers:
        off = median_rps(records, app, server, False, workers)
        on = median_rps(records, app, server, True, workers)
        mine = ok(records, app=app.name, server=server.name, workers=workers)
        p99 = median([r["p99_ms"] for r in mine if not r["access_log"]])
        cpu = median([r.get("cpu_us_per_request") for r in mine if not r["access_log"]])
        busiest = median([r.get("busiest_share") for r in mine if not r["access_log"]])
        first = median([r["first_200_s"] for r in mine])
        failed = sum(r["failed"] for r in mine)
        rows.append(
            [
                server.name,
                fmt(off, ".0f"),
                fmt(ratio(off, best_peer), ".2f"),
                fmt(p99, ".2f"),
                fmt(cpu, ".0f"),
                fmt(busiest, ".2f"),
                fmt(on, ".0f"),
                fmt(ratio(on, off), ".2f"),
                fmt(first, ".2f"),
                str(failed),
            ]
        )
    return Table(
        f"{app.target} GET {app.path}, {workers} workers",
        [
            "server",
            "req/s",
            "x best peer",
            "p99 ms",
            "CPU us/req",
            "busiest worker x fair",
            "req/s, access log",
            "log on/off",
            "first 200 s",
            "failed",
        ],
        rows,
        notes=[
            "CPU us/req: the CPU time of the server's whole tree over the requests it served "
            "(hardly moves with the machine's other load)",
            "busiest worker x fair: the CPU time of the busiest worker over the workers' "
            "mean during the measured run (1.00: the load is spread evenly)",
        ],
    )


def pss_mib(records: Sequence[Record], app: App, variant: Variant) -> float | None:
    found = ok(records, phase="memory", app=app.name, variant=variant.label)
    return found[0]["pss_bytes"] / MIB if found else None


def memory_table(records: Sequence[Record], servers: Sequence[Server], workers: int) -> Table:
    apps = (HELLO, FASTAPI, TABLE)
    uvicorn = pss_mib(records, FASTAPI, Variant(UVICORN))
    rows = []
    for server in (s for s in servers if s in OTHER_PHASES):
        for variant in preload_variants(server):
            fastapi = ok(records, phase="memory", app=FASTAPI.name, variant=variant.label)
            rows.append(
                [
                    variant.label,
                    *(fmt(pss_mib(records, app, variant), ".1f") for app in apps),
                    fmt(ratio(pss_mib(records, FASTAPI, variant), uvicorn), ".2f"),
                    str(fastapi[0]["processes"]) if fastapi else "-",
                    fmt(fastapi[0]["root_pss_bytes"] / MIB, ".1f") if fastapi else "-",
                ]
            )
    return Table(
        f"Whole-tree PSS, MiB, {workers} workers, after 1 s of load",
        [
            "server",
            *(f"{app.name}" for app in apps),
            "fastapi x uvicorn",
            "processes",
            "fastapi: first process",
        ],
        rows,
        notes=[
            "first process: the PSS of the process started (corral's manager, gunicorn's "
            "master, uvicorn's parent, granian's main process), which does not import the app "
            "(but gunicorn's master does with --preload)"
        ],
    )


def reload_table(records: Sequence[Record], servers: Sequence[Server], app: App = FASTAPI) -> Table:
    rows = []
    for server in servers:
        if server.hup is None:
            rows.append([server.name, "-", "no HUP reload", "-", "-"])
            continue
        mine = [r for r in records if r["server"] == server.name and r["app"] == app.name]
        done = ok(mine)
        reload_s = [r["reload_s"] for r in done]
        rows.append(
            [
                server.name,
                server.hup.target,
                " ".join(fmt(s, ".1f") for s in reload_s) or "-",
                str(sum(r["requests"] for r in done)),
                " ".join(str(r["failed"]) for r in done) or "-",
            ]
        )
    return Table(
        f"SIGHUP under load ({app.target.partition(':')[0]}, wrk -c32)",
        ["server", "HUP to", "reload s (each round)", "requests", "failed (each round)"],
        rows,
        notes=[f"{s.name}: {s.hup.effect}" for s in servers if s.hup is not None],
    )


def recovery_table(records: Sequence[Record], servers: Sequence[Server]) -> Table:
    rows = []
    for server in (s for s in servers if s in OTHER_PHASES):
        for variant in preload_variants(server):
            done = ok(records, phase="recovery", variant=variant.label)
            answering = [r["answering_s"] for r in done]
            rows.append(
                [
                    variant.label,
                    fmt(median([r["ready_s"] for r in done]), ".3f"),
                    fmt(median(answering), ".3f"),
                    " ".join(fmt(a, ".3f") for a in answering) or "-",
                ]
            )
    return Table(
        "After SIGKILL of one worker (fastapi_app, idle)",
        ["server", "new worker ready s", "answering s (median)", "answering s (each round)"],
        rows,
    )


@dataclass(frozen=True)
class Target:
    goal: str
    measured: str
    met: bool | None  # None: not measured


def targets(
    records: Sequence[Record], servers: Sequence[Server], settings: Settings
) -> list[Target]:
    """corral, with its defaults, against the issue's targets."""
    found = []
    first = settings.throughput_workers[0]
    for workers in settings.throughput_workers:
        for app in (HELLO, FASTAPI):
            off = median_rps(records, app, CORRAL, False, workers)
            vs_peer = ratio(off, best_peer_rps(records, app, servers, workers))
            found.append(
                Target(
                    f"req/s >= best peer on {app.name}, {workers} workers",
                    f"x{fmt(vs_peer, '.3f')}",
                    _at_least(vs_peer, 1.0),
                )
            )
            if workers == first:
                log = ratio(median_rps(records, app, CORRAL, True, workers), off)
                found.append(
                    Target(
                        f"access log on >= 0.9x off on {app.name}, {workers} workers",
                        f"x{fmt(log, '.3f')}",
                        _at_least(log, 0.9),
                    )
                )
    for workers in settings.throughput_workers:
        counting = ratio(
            median_rps(records, HELLO, CORRAL, False, workers),
            median_rps(records, HELLO, CORRAL_UNCOUNTED, False, workers),
        )
        found.append(
            Target(
                f"counting for /metrics costs <= 2% of hello's req/s, {workers} workers",
                f"x{fmt(counting, '.3f')}",
                _at_least(counting, 0.98),
            )
        )
    largest = max(settings.throughput_workers)
    shares = [
        r["busiest_share"]
        for r in ok(records, phase="throughput", server=SUBJECT, workers=largest)
        if not r["access_log"] and r.get("busiest_share") is not None
    ]
    found.append(
        Target(
            f"busiest worker <= 1.10x its fair share, {largest} workers (each sample)",
            " ".join(fmt(share, ".2f") for share in shares) or "-",
            (max(shares) <= 1.10) if shares else None,
        )
    )
    firsts = {
        server.name: median(
            [r["first_200_s"] for r in ok(records, phase="throughput", server=server.name)]
        )
        for server in servers
        if server.peer or server is CORRAL
    }
    best_first = min((v for k, v in firsts.items() if k != SUBJECT and v is not None), default=None)
    found.append(
        Target(
            "first 200 after start <= the best peer's",
            f"{fmt(firsts.get(SUBJECT), '.2f')} s vs {fmt(best_first, '.2f')} s",
            None
            if firsts.get(SUBJECT) is None or best_first is None
            else firsts[SUBJECT] <= best_first,
        )
    )
    reloads = ok(records, phase="reload", server=SUBJECT)
    failed = [r["failed"] for r in reloads]
    found.append(
        Target(
            "0 failed requests during a HUP reload",
            " ".join(map(str, failed)) or "-",
            (sum(failed) == 0) if failed else None,
        )
    )
    memory = ratio(
        pss_mib(records, FASTAPI, Variant(CORRAL, preload=True)),
        pss_mib(records, FASTAPI, Variant(UVICORN)),
    )
    found.append(
        Target(
            "FastAPI, 4 workers, preload: PSS <= 0.5x uvicorn --workers 4",
            f"x{fmt(memory, '.3f')}",
            _at_most(memory, 0.5),
        )
    )
    recoveries = ok(records, phase="recovery")
    by_variant: dict[str, list[float]] = {}
    for record in recoveries:
        if record["answering_s"] is not None:
            by_variant.setdefault(record["variant"], []).append(record["answering_s"])
    mine = median(by_variant.get(Variant(CORRAL, preload=True).label, []))
    peers = [median(v) for k, v in by_variant.items() if not k.startswith(SUBJECT)]
    best_peer = min((p for p in peers if p is not None), default=None)
    found.append(
        Target(
            "full capacity after SIGKILL <= the best peer's (medians)",
            f"{fmt(mine, '.3f')} s vs {fmt(best_peer, '.3f')} s",
            None if mine is None or best_peer is None else mine <= best_peer,
        )
    )
    preloaded = ok(records, phase="recovery", server=SUBJECT, preload=True)
    answering = [r["answering_s"] for r in preloaded]
    worst = max((a for a in answering if a is not None), default=None)
    all_answered = bool(answering) and None not in answering
    found.append(
        Target(
            "full capacity <= 0.2 s after SIGKILL, with preload (every round)",
            " ".join(fmt(a, ".3f") for a in answering) + " s" if answering else "-",
            (all_answered and worst is not None and worst <= 0.2) if answering else None,
        )
    )
    return found


def _at_least(value: float | None, bound: float) -> bool | None:
    return None if value is None else value >= bound


def _at_most(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


def targets_table(found: Sequence[Target]) -> Table:
    verdict = {True: "met", False: "MISSED", None: "not measured"}
    return Table(
        "corral against the targets",
        ["target", "measured", ""],
        [[t.goal, t.measured, verdict[t.met]] for t in found],
    )


def tables(records: Sequence[Record], servers: Sequence[Server], settings: Settings) -> list[Table]:
    wsgi = [r for r in records if r["app"] == FLASK.name]
    records = [r for r in records if r["app"] != FLASK.name]
    by_phase = {phase: [r for r in records if r["phase"] == phase] for phase in PHASES}
    found: list[Table] = []
    if by_phase["throughput"]:
        for workers in settings.throughput_workers:
            for app in (HELLO, FASTAPI):
                table = throughput_table(by_phase["throughput"], app, servers, workers)
                table.title += f", {settings.rounds} rounds x {settings.seconds:g} s"
                found.append(table)
    if by_phase["memory"]:
        found.append(memory_table(by_phase["memory"], servers, settings.memory_workers))
    if by_phase["reload"]:
        found.append(reload_table(by_phase["reload"], [s for s in servers if s in OTHER_PHASES]))
    if by_phase["recovery"]:
        found.append(recovery_table(by_phase["recovery"], servers))
    if {"throughput", "memory", "reload", "recovery"} <= {r["phase"] for r in records}:
        found.append(targets_table(targets(records, servers, settings)))
    if wsgi:
        throughput = [r for r in wsgi if r["phase"] == "throughput"]
        table = throughput_table(throughput, FLASK, WSGI_SERVERS, settings.workers)
        table.title += (
            f" x {settings.threads} threads, {settings.rounds} rounds x {settings.seconds:g} s"
        )
        reloads = [r for r in wsgi if r["phase"] == "reload"]
        found += [table, reload_table(reloads, WSGI_SERVERS, FLASK)]
    return found


def render_text(table: Table) -> str:
    widths = [
        max(len(row[i]) for row in [table.headers, *table.rows]) for i in range(len(table.headers))
    ]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        out = [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        return "  ".join(out).rstrip()

    lines = [table.title, line(table.headers), *(line(row) for row in table.rows)]
    lines += [f"  {note}" for note in table.notes]
    return "\n".join(lines)


def render_markdown(table: Table) -> str:
    lines = [
        f"**{table.title}**",
        "",
        "| " + " | ".join(table.headers) + " |",
        "| " + " | ".join("---" for _ in table.headers) + " |",
        *("| " + " | ".join(row) + " |" for row in table.rows),
    ]
    if table.notes:
        lines += ["", *(f"- {note}" for note in table.notes)]
    return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with Path("/proc/cpuinfo").open() as cpuinfo:
        for row in cpuinfo:
            if row.startswith("model name"):
                cpu = row.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="1 round x 3 s: a smoke run")
    parser.add_argument(
        "--workers",
        default="2,4",
        help="workers per server for throughput, comma-separated (the first: reload, recovery)",
    )
    parser.add_argument("--memory-workers", type=int, default=4, help="workers for the PSS")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk's run per round")
    parser.add_argument("--connections", type=int, default=64, help="wrk's -c")
    parser.add_argument("--reload-connections", type=int, default=32, help="wrk's -c on HUP")
    parser.add_argument("--threads", type=int, default=4, help="per worker, WSGI phase")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated, among {', '.join(PHASES)}",
    )
    parser.add_argument(
        "--servers",
        default=",".join(s.name for s in SERVERS if s is not CORRAL_H11),
        help="comma-separated server names",
    )
    parser.add_argument("--upgrade-peers", action="store_true", help="pip install --upgrade")
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="measure nothing: print the tables of a saved run again (and rewrite it)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 3.0
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    return args


def select_servers(names: str, peers: Path) -> tuple[list[Server], list[str]]:
    """The servers asked for, and notes about those left out."""
    wanted = [n.strip() for n in names.split(",")]
    by_name = {s.name: s for s in SERVERS}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown servers: {', '.join(unknown)}; known: {', '.join(by_name)}")
    notes = []
    servers = [by_name[n] for n in wanted]
    if GUNICORN_ASGI in servers and not has_gunicorn_asgi_worker(peers):
        servers.remove(GUNICORN_ASGI)
        notes.append("this gunicorn has no `-k asgi` worker: gunicorn -k asgi is not measured")
    return servers, notes


def stop_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C does: through the `finally`s that stop the servers."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        report_again(args.report)
        return
    stop_on_sigterm()
    began = time.monotonic()
    peers = harness.ensure_peers(args.upgrade_peers)
    servers, notes = select_servers(args.servers, peers)
    notes.append(compile_project(sys.executable))
    for note in notes:
        print(note, file=sys.stderr)
    settings = Settings(
        workers=int(args.workers.split(",")[0]),
        throughput_workers=tuple(int(n) for n in args.workers.split(",")),
        memory_workers=args.memory_workers,
        rounds=args.rounds,
        seconds=args.seconds,
        warmup=1.0,
        connections=args.connections,
        reload_connections=args.reload_connections,
        reload_timeout=60.0,
        recovery_timeout=30.0,
        pythons={"project": Path(sys.executable), "peers": peers},
        threads=args.threads,
    )
    meta: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else None,
        "machine": machine(),
        "load_before": os.getloadavg(),
        "versions": {
            "project": harness.package_versions(sys.executable, PROJECT_PACKAGES),
            "peers": harness.package_versions(peers, PEER_PACKAGES),
        },
        "settings": asdict(settings)
        | {"pythons": {k: str(v) for k, v in settings.pythons.items()}},
        "notes": [*notes, *(n for s in servers for n in s.notes)],
    }
    records: list[Record] = []
    cpu = harness.cpu_reading()
    for phase in args.phases.split(","):
        records += PHASES[phase](servers, settings)
    meta["other_load"] = harness.others_share(cpu, harness.cpu_reading())
    meta["load_after"] = os.getloadavg()
    meta["elapsed_s"] = round(time.monotonic() - began, 1)
    report(meta, servers, settings, records, args.json)


def report(
    meta: Mapping[str, Any],
    servers: Sequence[Server],
    settings: Settings,
    records: Sequence[Record],
    json_path: Path,
) -> None:
    found = tables(records, servers, settings)
    head = [
        f"{meta['date']}  {meta['machine']['nproc']} x {meta['machine']['cpu']}, "
        f"Python {meta['machine']['python']}",
        f"command: {meta['command']}",
        "load average before: {:.2f} {:.2f} {:.2f}".format(*meta["load_before"])
        + ", after: {:.2f} {:.2f} {:.2f}".format(*meta["load_after"]),
        f"other processes used {meta['other_load']:.0%} of the CPUs during the run "
        "(/proc/stat less the CPU time of the harness, its servers and wrk)",
        *meta["notes"],
    ]
    print("\n" + "\n".join(head))
    for table in found:
        print("\n" + render_text(table))
    print(f"\n{meta['elapsed_s']:.0f} s")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "servers": {s.name: asdict(s) for s in servers},
        "tables": [asdict(t) for t in found],
        "records": list(records),
    }
    json_path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    markdown = json_path.with_suffix(".md")
    markdown_head = "\n".join(f"- {line}" for line in head)
    markdown_tables = "\n\n".join(render_markdown(t) for t in found)
    markdown.write_text(f"{markdown_head}\n\n{markdown_tables}\n")
    print(f"wrote {json_path} and {markdown}")


def report_again(json_path: Path) -> None:
    """The tables of a saved run, computed again from its records."""
    payload = json.loads(json_path.read_text())
    by_name = {s.name: s for s in SERVERS}
    servers = [by_name[name] for name in payload["servers"]]
    saved = payload["meta"]["settings"]
    settings = Settings(
        **{k: v for k, v in saved.items() if k != "pythons"},
        pythons={k: Path(v) for k, v in saved["pythons"].items()},
    )
    report(payload["meta"], servers, settings, payload["records"], json_path)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; every server started has been stopped", file=sys.stderr)
        sys.exit(130)
