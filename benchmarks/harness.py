"""The mechanics behind benchmarks/run.py: start a server's process tree and stop all of it,
probe it over HTTP, run wrk and read its report. Nothing here knows which server it runs.

Every server runs in a session of its own (so a Ctrl-C on the terminal reaches the harness,
which then stops the servers itself), and is stopped by pid: SIGTERM to the process started,
SIGKILL if it lingers, then SIGKILL to whatever is left of its session (orphaned workers).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

HOST = "127.0.0.1"  # the only address load is sent to
MIB = 1 << 20
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / ".peers"
PEER_REQUIREMENTS = (
    *("uvicorn[standard]", "gunicorn", "uvicorn-worker", "granian", "fastapi", "flask"),
)
PEER_PACKAGES = ("uvicorn", "gunicorn", "uvicorn-worker", "granian", "fastapi", "uvloop", "flask")
PROJECT_PACKAGES = (
    *("corral", "uvicorn", "fastapi", "uvloop", "httptools", "zttp", "flask", "a2wsgi"),
)

# Variables that would override the flags we pass (each server reads its own prefix from the
# environment) or make corral serve on inherited sockets.
_OVERRIDING_PREFIXES = ("CORRAL_", "UVICORN_", "GRANIAN_")
_OVERRIDING_NAMES = {
    "GUNICORN_CMD_ARGS",
    "WEB_CONCURRENCY",
    "FORWARDED_ALLOW_IPS",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without what would override a server's flags, plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_OVERRIDING_PREFIXES) and name not in _OVERRIDING_NAMES
    }
    return env | dict(extra)


# --- the peers' environment --------------------------------------------------------------


def ensure_peers(upgrade: bool = False) -> Path:
    """The peers' interpreter, benchmarks/.peers/bin/python, installed on first use."""
    python = PEERS / "bin" / "python"
    stamp = PEERS / "requirements.txt"
    wanted = "\n".join(PEER_REQUIREMENTS) + "\n"
    if not python.exists():
        print(f"creating {PEERS.relative_to(ROOT)}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
    if upgrade or not stamp.exists() or stamp.read_text() != wanted:
        print(f"installing into it: {' '.join(PEER_REQUIREMENTS)}", file=sys.stderr)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--upgrade"]
        subprocess.run([*pip, *PEER_REQUIREMENTS], check=True)
        stamp.write_text(wanted)
    return python


def package_versions(python: Path | str, names: Sequence[str]) -> dict[str, str | None]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "def version(name):\n"
        "    try:\n"
        "        return m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        return None\n"
        "print(json.dumps({name: version(name) for name in sys.argv[1:]}))\n"
    )
    out = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, check=True
    ).stdout
    versions: dict[str, str | None] = json.loads(out)
    return versions


# --- other load on the machine ----------------------------------------------------------


@dataclass(frozen=True)
class CpuReading:
    machine: float  # user + nice + system CPU seconds of every process, from /proc/stat
    own: float  # user + system CPU seconds of this process and its reaped descendants
    wall: float


def cpu_reading() -> CpuReading:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system = (int(n) for n in fields[1:4])
    own = os.times()
    return CpuReading(
        machine=(user + nice + system) / os.sysconf("SC_CLK_TCK"),
        own=own.user + own.system + own.children_user + own.children_system,
        wall=time.monotonic(),
    )


def others_share(start: CpuReading, end: CpuReading) -> float:
    """The share of the machine's CPUs (0 to 1) used between two readings by processes that
    are neither this one nor the servers and wrk it started and reaped: other load."""
    others = (end.machine - start.machine) - (end.own - start.own)
    capacity = (end.wall - start.wall) * (os.cpu_count() or 1)
    return max(0.0, others / capacity) if capacity > 0 else 0.0


# --- HTTP probes -------------------------------------------------------------------------


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes] | None:
    """(status, body) of one GET on a fresh connection, or None if it failed."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    chunks: list[bytes] = []
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if not status or not status[0].isdigit():
        return None
    return int(status[0]), body


def answering_pid(port: int) -> int | None:
    """The pid of the worker that answers GET /pid (an endpoint of the benchmark apps)."""
    answer = http_get(port, "/pid", timeout=2.0)
    if answer is None or answer[0] != 200:
        return None
    try:
        return int(answer[1].strip())
    except ValueError:
        return None


# --- a running server --------------------------------------------------------------------


@dataclass
class Running:
    """A server the harness started, with its port and its workers' ready markers."""

    proc: subprocess.Popen[bytes]
    port: int
    ready_dir: Path  # each worker touches a file named after its pid here at lifespan startup
    started_at: float  # time.monotonic() just before the process was started
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> list[psutil.Process]:
        """The process started and all its live descendants."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def markers(self) -> set[int]:
        """Pids that have ever run their lifespan startup, alive or not."""
        return {int(path.name) for path in self.ready_dir.iterdir() if path.name.isdigit()}

    def ready_workers(self) -> set[int]:
        """Pids of the live workers of the tree that have run their lifespan startup."""
        live = set()
        for proc in self.tree():
            with suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    live.add(proc.pid)
        return self.markers() & live

    def worker_cpu(self) -> dict[int, float]:
        """CPU seconds (user + system) of each live ready worker, by pid."""
        times = {}
        for proc in self.tree():
            if proc.pid in self.markers():
                with suppress(psutil.Error):
                    times[proc.pid] = sum(proc.cpu_times()[:2])
        return times

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {self.proc.returncode}")

    def log_tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@contextmanager
def running(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], ready_env: str, port: int
) -> Iterator[Running]:
    """Start `argv` in its own session, and stop all of it on the way out, whatever happens.

    `ready_env` names the environment variable through which the app learns where to write
    its ready markers.
    """
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as scratch:
        ready_dir = Path(scratch) / "ready"
        ready_dir.mkdir()
        log = Path(scratch) / "server.log"
        with log.open("wb") as sink:
            started_at = time.monotonic()
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=server_env(env) | {ready_env: str(ready_dir)},
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        run = Running(proc, port, ready_dir, started_at, log)
        try:
            yield run
        except Exception:
            sys.stderr.write(f"--- the server's last lines ({' '.join(argv)}):\n")
            sys.stderr.write(run.log_tail() + "\n---\n")
            raise
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM the process we started, SIGKILL it after `grace`, then SIGKILL every process
    left in its session (workers it orphaned), each by pid."""
    session = proc.pid
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    _, alive = psutil.wait_procs(session_members(session), timeout=5)
    for left in alive:
        with suppress(psutil.NoSuchProcess):
            left.kill()
    psutil.wait_procs(alive, timeout=5)


def session_members(session: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        with suppress(OSError, psutil.Error):
            if proc.pid != os.getpid() and os.getsid(proc.pid) == session:
                members.append(proc)
    return members


def wait_first_200(run: Running, path: str, timeout: float = 60.0) -> float:
    """Seconds from the start of the process to the first 200 on `path`."""
    deadline = run.started_at + timeout
    while time.monotonic() < deadline:
        run.check_alive()
        answer = http_get(run.port, path)
        if answer is not None and answer[0] == 200:
            return time.monotonic() - run.started_at
        time.sleep(0.01)
    raise RuntimeError(f"no 200 on {path} within {timeout:.0f} s")


def wait_ready(run: Running, workers: int, path: str, timeout: float = 60.0) -> None:
    """Wait until `workers` live workers have run their lifespan startup and `path` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.check_alive()
        if len(run.ready_workers()) >= workers:
            answer = http_get(run.port, path)
            if answer is not None and answer[0] == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{workers} workers were not ready within {timeout:.0f} s")


def tree_pss(run: Running) -> list[int]:
    """The PSS of each process of the tree in bytes, the process started first. PSS divides
    each shared page between the processes that share it, so summed, copy-on-write pages
    count once."""
    found = []
    for proc in run.tree():
        with suppress(psutil.NoSuchProcess):
            found.append(proc.memory_full_info().pss)
    return found


def tree_cpu_seconds(run: Running) -> dict[int, float]:
    """User + system CPU seconds used so far by each live process of the tree, by pid."""
    found = {}
    for proc in run.tree():
        with suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            found[proc.pid] = times.user + times.system
    return found


# --- processes that outlive their parent -------------------------------------------------

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make this process the parent of every orphan below it (Linux 3.4 and later).

    A server killed with SIGKILL leaves its children to their grandparent, this process,
    instead of init: every process of its tree is then still below us, to be seen and waited
    for, however it was started (forked, exec'ed, in a session of its own).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def orphans(owned: Collection[int]) -> list[psutil.Process]:
    """The live processes below this one, but those in `owned` (ours: wrk, a server we run)
    and their descendants. Zombies among our direct children that are not `owned` (orphans
    given to us as subreaper, then exited) are reaped here."""
    me = psutil.Process()
    found = []
    for child in me.children():
        if child.pid in owned:
            continue
        with suppress(psutil.Error):
            if child.status() == psutil.STATUS_ZOMBIE:
                with suppress(ChildProcessError):
                    os.waitpid(child.pid, os.WNOHANG)
                continue
            found.append(child)
            found += [p for p in child.children(recursive=True) if _alive(p)]
    return found


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_orphans_gone(owned: Collection[int], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` seconds for the processes `orphans` finds to end; those left."""
    deadline = time.monotonic() + timeout
    while True:
        left = orphans(owned)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def describe(proc: psutil.Process) -> str:
    """ "pid 123 (corral: web.2)" for a report."""
    try:
        return f"pid {proc.pid} ({' '.join(proc.cmdline())[:60]})"
    except psutil.Error:
        return f"pid {proc.pid}"


def held_connections(pid: int, port: int) -> int:
    """How many established TCP connections on `port` process `pid` holds (0 if it is gone):
    with keep-alive clients that do not pipeline, the most requests it can have in flight."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return 0
    return sum(
        1
        for c in connections
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
    )


# --- wrk ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkReport:
    requests: int
    seconds: float
    rps: float
    p99_ms: float | None
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    non_2xx: int

    @property
    def failed(self) -> int:
        """Requests that did not get a 2xx/3xx answer (or connections that never got one)."""
        errors = self.connect_errors + self.read_errors + self.write_errors + self.timeouts
        return errors + self.non_2xx


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(text: str) -> WrkReport:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", text)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if done is None or rate is None:
        raise RuntimeError(f"unreadable wrk report:\n{text}")
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\b", text, re.MULTILINE)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    connect, read, write, timeouts = (int(n) for n in errors.groups()) if errors else (0, 0, 0, 0)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkReport(
        requests=int(done.group(1)),
        seconds=float(done.group(2)) * _UNITS[done.group(3)] / 1e3,
        rps=float(rate.group(1)),
        p99_ms=float(p99.group(1)) * _UNITS[p99.group(2)] if p99 else None,
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeouts=timeouts,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def wrk_argv(
    port: int, path: str, connections: int, seconds: float, timeout: str | None = None
) -> list[str]:
    """wrk's command; `timeout` ("10s") is its --timeout (2 s by default): a slower answer
    counts as failed."""
    url = f"http://{HOST}:{port}{path}"
    limit = ["--timeout", timeout] if timeout is not None else []
    return ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", *limit, url]


def run_wrk(
    port: int, path: str, connections: int, seconds: float, timeout: str | None = None
) -> WrkReport:
    result = subprocess.run(
        wrk_argv(port, path, connections, seconds, timeout),
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    )
    return parse_wrk(result.stdout)


@contextmanager
def wrk_in_background(
    port: int, path: str, connections: int, max_seconds: float, timeout: str | None = None
) -> Iterator[subprocess.Popen[str]]:
    """wrk running for at most `max_seconds`; stop it early with `stop_wrk`. It is killed on
    the way out if still running."""
    proc = subprocess.Popen(
        wrk_argv(port, path, connections, max_seconds, timeout),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:  # not stopped with stop_wrk
            proc.kill()
            proc.communicate()


def stop_wrk(proc: subprocess.Popen[str]) -> WrkReport:
    """SIGINT makes wrk stop and print its report for the time it ran."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return parse_wrk(out)
