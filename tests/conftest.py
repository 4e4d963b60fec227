"""Run a real corral in a subprocess and watch its output, its processes and its sockets."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, settings

# The fuzzing tests (test_fuzz_*.py): in CI, a fixed sequence of examples (derandomized), so a
# failure there can be run again as it happened; `--hypothesis-profile long` for the long form.
_FUZZ = {
    "deadline": None,
    # a function-scoped fixture (tmp_path) is shared by a test's examples, which overwrite it
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=150, derandomize=True, database=None, **_FUZZ)
settings.register_profile("long", max_examples=3000, **_FUZZ)
settings.load_profile("ci")


def fuzz_timeout(per_example: float) -> pytest.MarkDecorator:
    """A timeout for a fuzzing test: 30 s plus `per_example` seconds for each example of the
    profile loaded (hypothesis loads `--hypothesis-profile` before the tests are collected)."""
    return pytest.mark.timeout(30 + per_example * settings().max_examples)


APPS = Path(__file__).parent / "apps"


class Corral:
    """A `corral run` process under test: its output lines, its children, its address."""

    def __init__(
        self,
        command: list[str],
        cwd: Path,
        env: dict[str, str | None],
        pass_fds: Sequence[int] = (),
    ) -> None:
        """Run `command`; `env` adds to ours, and a None in it removes that variable."""
        merged = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.env = {name: value for name, value in merged.items() if value is not None}
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=pass_fds,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._known: dict[int, psutil.Process] = {}
        self._tracker = threading.Thread(target=self._track, daemon=True)
        self._tracker.start()

    def _track(self) -> None:
        """Remember every process of the tree while the manager lives (to find orphans later).

        Process titles overwrite /proc/PID/environ, so the tree is the only reliable trace.
        """
        with _gone_ok():
            root = psutil.Process(self.proc.pid)
            while self.proc.poll() is None:
                for child in root.children(recursive=True):
                    self._known.setdefault(child.pid, child)
                time.sleep(0.05)

    def alive(self) -> list[psutil.Process]:
        """The processes of this corral's tree still running (the manager included)."""
        procs = [*self._known.values()]
        with _gone_ok():
            procs.append(psutil.Process(self.proc.pid))
        return [p for p in procs if _running(p)]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 15, after: int = 0) -> re.Match[str]:
        """The first output line from index `after` on matching `pattern`; fails on timeout."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    match = regex.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout}s; output:\n{self.output}"
                    )
                self._changed.wait(min(left, 0.2))

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._changed:
            return sum(1 for line in self.lines if regex.search(line))

    def mark(self) -> int:
        """An index into the output, for waiting on lines that come after now."""
        with self._changed:
            return len(self.lines)

    def line_index(self, pattern: str, after: int = 0, timeout: float = 15) -> int:
        """Wait for a line matching `pattern` from index `after` on; return its index."""
        self.wait_for(pattern, timeout, after)
        regex = re.compile(pattern)
        with self._changed:
            for index in range(after, len(self.lines)):
                if regex.search(self.lines[index]):
                    return index
        raise AssertionError(f"{pattern!r} matched, then vanished?\n{self.output}")

    def wait_accepted(self, port: int, count: int, timeout: float = 5) -> None:
        """Wait until the workers between them hold `count` accepted connections on `port`."""
        deadline = time.monotonic() + timeout
        held = 0
        while time.monotonic() < deadline:
            held = 0
            for pid in self.worker_pids().values():
                try:
                    connections = psutil.Process(pid).net_connections(kind="tcp")
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                held += sum(
                    1
                    for c in connections
                    if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
                )
            if held >= count:
                time.sleep(0.3)  # accepted; give the event loop a moment to dispatch the request
                return
            time.sleep(0.02)
        raise AssertionError(f"the workers hold {held} of {count} connections on port {port}")

    def url(self, timeout: float = 20) -> str:
        return self.wait_for(r"listening on (https?://\S+)", timeout).group(1)

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 40) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def worker_pids(self) -> dict[str, int]:
        """web.N -> pid, from the running process tree (process titles)."""
        return dict(self._worker_titles())

    def control_socket(self, timeout: float = 20) -> Path:
        """The control socket the manager said it listens on (in text or JSON output)."""
        return Path(self.wait_for(r"control socket: ([^\s\"]+)", timeout)[1])

    def control_get(self, path: str) -> httpx.Response:
        """`GET path` on the control API, over its Unix socket (which needs no token)."""
        transport = httpx.HTTPTransport(uds=str(self.control_socket()))
        with httpx.Client(transport=transport, timeout=10) as client:
            return client.get(f"http://corral{path}")

    def status(self) -> dict[str, Any]:
        """What `corral status --json` prints."""
        answer = self.control_get("/status")
        assert answer.status_code == 200, answer.text
        status: dict[str, Any] = answer.json()
        return status

    def worker_states(self) -> list[tuple[str, int | None, str]]:
        """(web.N, pid, state) of each worker the manager knows, as `corral status` lists them."""
        return [
            (row["name"], row["pid"], row["state"])
            for row in self.status()["processes"]
            if row["group"] == "web" and row["kind"] == "worker"
        ]

    def wait_status(
        self, what: str, done: Callable[[dict[str, Any]], bool], timeout: float = 15
    ) -> dict[str, Any]:
        """Ask `corral status` until `done(status)`; return that status. Fails on timeout."""
        deadline = time.monotonic() + timeout
        while not done(status := self.status()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{what}: not within {timeout}s: {status}\n{self.output}")
            time.sleep(0.05)
        return status

    def wait_workers(self, count: int, timeout: float = 20) -> dict[str, int]:
        """Wait until exactly `count` workers are up and ready; return their pids.

        Ready as the manager says it (`corral status`: each worker's state is
        `ready`, none starting or draining), and those same pids are the
        workers in the process tree: nothing else titled `corral: web.N` is left.
        """
        deadline = time.monotonic() + timeout
        seen: object = None
        while time.monotonic() < deadline and self.proc.poll() is None:
            states = self.worker_states()
            ready = {name: pid for name, pid, state in states if state == "ready"}
            tree = sorted(self._worker_titles())
            seen = (states, tree)
            if len(states) == len(ready) == count and tree == sorted(ready.items()):
                return {name: pid for name, pid in ready.items() if pid is not None}
            time.sleep(0.05)
        raise AssertionError(f"expected {count} ready workers, have {seen}:\n{self.output}")

    def _worker_titles(self) -> list[tuple[str, int]]:
        """(web.N, pid) of every live process titled `corral: web.N`, duplicates included."""
        found = []
        for proc in self.alive():
            with _gone_ok():
                match = re.match(r"corral: (web\.\d+)", " ".join(proc.cmdline()))
                if match:
                    found.append((match.group(1), proc.pid))
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        """Send `sig`, wait for the manager to exit, check no process of its tree is left."""
        self.send(sig)
        code = self.wait(timeout)
        left = self.wait_until_gone(5)
        assert not left, f"processes left after the manager exited: {left}\n{self.output}"
        return code

    def cleanup(self) -> None:
        """Kill whatever is left of this corral, manager and descendants."""
        with _gone_ok():
            self.proc.kill()
        for proc in self.alive():
            with _gone_ok():
                proc.kill()
        self.proc.wait(10)
        self._remove_control_socket()

    def _remove_control_socket(self) -> None:
        """A manager that was killed could not remove its control socket: do it for it."""
        for line in self.lines:
            announced = re.search(r"control socket: (\S+)$", line)
            if announced:
                Path(announced[1]).unlink(missing_ok=True)

    def wait_until_gone(self, timeout: float) -> list[psutil.Process]:
        """Wait for every process of the tree to exit; return those still alive."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.alive()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _gone_ok:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, tb: object) -> bool:
        return isinstance(value, (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError))


class Started:
    """The corrals a test started; each is killed after the test, which fails if any was left."""

    def __init__(self) -> None:
        self.instances: list[Corral] = []

    def command(
        self,
        command: list[str],
        cwd: Path = APPS,
        env: dict[str, str | None] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Corral:
        instance = Corral(command, cwd, env or {}, pass_fds)
        self.instances.append(instance)
        return instance

    def corral(self, *args: str, **options: Any) -> Corral:
        return self.command([sys.executable, "-m", "corral", *args], **options)

    def cleanup(self) -> None:
        leftovers = []
        for instance in self.instances:
            leftovers += [p.pid for p in instance.alive()]
            instance.cleanup()
        assert not leftovers, f"the test left processes behind: {leftovers}"


@pytest.fixture
def started() -> Iterator[Started]:
    tracker = Started()
    yield tracker
    tracker.cleanup()


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a file that must name its port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def corral(started: Started) -> Callable[..., Corral]:
    """Start `corral ARGS...` (cwd: tests/apps unless given; env=, pass_fds=)."""
    return started.corral


@pytest.fixture
def launch(started: Started) -> Callable[..., Corral]:
    """Start a command of the test's own that becomes a corral manager (a wrapper that execs)."""
    return started.command


class Clock:
    """A wall clock the test sets: what a `Schedule` reads instead of time.time()."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class LoadResult:
    """What wrk saw: requests completed, and every kind of failure it counts."""

    def __init__(self, report: str) -> None:
        self.report = report
        self.requests = int(_find(r"(\d+) requests in", report))
        errors = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report
        )
        self.socket_errors = sum(int(n) for n in errors.groups()) if errors else 0
        self.non_2xx = int(_find(r"Non-2xx or 3xx responses: (\d+)", report, "0"))

    @property
    def failures(self) -> int:
        return self.socket_errors + self.non_2xx


def _find(pattern: str, text: str, default: str | None = None) -> str:
    match = re.search(pattern, text)
    if match is None:
        if default is None:
            raise AssertionError(f"no {pattern!r} in wrk's report:\n{text}")
        return default
    return match.group(1)


def start_load(url: str, seconds: float, connections: int = 32) -> subprocess.Popen[str]:
    """Start wrk against `url` (127.0.0.1 only) for `seconds`; finish it with `load_result`."""
    assert url.startswith(("http://127.0.0.1", "http://[::1]")), url
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: .ci/run installs it (apt-get install wrk)")
    return subprocess.Popen(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def load_result(load: subprocess.Popen[str], timeout: float = 60) -> LoadResult:
    report, _ = load.communicate(timeout=timeout)
    assert load.returncode == 0, report
    return LoadResult(report)


# -- an interpreter another user can run ---------------------------------------------------

SYSTEM_PYTHON = Path("/usr/bin/python3")  # Debian's; the test venv's may sit under /root
REPOSITORY = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def nobody_python() -> Iterator[Path]:
    """A Python with corral installed that the user nobody can run, for tests that drop to it.

    A virtual environment made from the system's python3 in a folder of /tmp
    that everyone can read, with corral installed from a copy of this source
    tree (pip takes the dependencies from its cache when it has them): the
    interpreter of the tests' own environment may sit where nobody cannot
    read it (/root). Skipped where a test cannot change user (not root, or
    no user nobody).
    """
    if os.geteuid() != 0:
        pytest.skip("changing user needs root")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody here")
    if not SYSTEM_PYTHON.is_file():
        pytest.fail(f"{SYSTEM_PYTHON} is missing: the tests of --user need the system's python3")
    base = Path(tempfile.mkdtemp(prefix="corral-nobody-", dir="/tmp"))
    try:
        base.chmod(0o755)
        source = base / "source"
        shutil.copytree(
            REPOSITORY / "src",
            source / "src",
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPOSITORY / name, source / name)
        venv = base / "venv"
        python = venv / "bin" / "python"
        _must_run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], base)
        _must_run([str(python), "-m", "pip", "install", "--quiet", "--no-input", str(source)], base)
        _must_run([str(python), "-c", "import corral.child.worker"], base, user="nobody")
        yield python
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _must_run(command: list[str], cwd: Path, user: str | None = None) -> None:
    done = subprocess.run(command, cwd=cwd, user=user, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder everyone can read and enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="corral-public-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
