"""The manager as the control API sees it: status, metrics, and the verbs that steer it.

`corral.control.api` serves HTTP; this module answers it from the manager's
own records (the web group, the process groups, the job scheduler), and
samples each process's memory and CPU with psutil when asked.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from corral.addresses import TcpAddress, UnixAddress, parse_control, parse_tcp
from corral.control.address import control_path
from corral.control.api import ControlError, make_app, make_probes_app
from corral.control.discovery import running_in
from corral.control.server import ControlServers, serve_control
from corral.control.sessions import Sessions
from corral.control.token import (
    READ_TOKEN_VARIABLE,
    load_or_create_token,
    read_token_path,
    token_path,
    write_token,
)
from corral.manager import dashboard_state
from corral.manager.child import status_row
from corral.manager.group import Refused
from corral.manager.logbuffer import LogBuffer
from corral.manager.metrics import ProcessSample
from corral.manager.output import Output
from corral.manager.series import Sampler
from corral.version import __version__

if TYPE_CHECKING:
    from corral.manager.supervisor import Manager


LOG_NAME = "corral"  # corral's own lines in the logs: the manager's
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # where a browser on this machine reaches them


class ManagerControl:
    """Implements `corral.control.api.Controller` for one running manager."""

    def __init__(self, manager: Manager, logs: LogBuffer) -> None:
        self.manager = manager
        self.logs = logs
        self.started = time.time()
        self.project = os.getcwd()
        self._sampled: dict[int, psutil.Process] = {}  # kept, so cpu_percent measures since last
        self.sampler: Sampler | None = None  # the dashboard's series, once it is served

    # -- observation -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        manager = self.manager
        rows = self._processes()
        for row in rows:
            row["cpu_percent"], row["rss"] = self._sample(row["pid"])
        self._forget_others({row["pid"] for row in rows})
        return {
            "corral": self._about(),
            "processes": rows,
            "jobs": manager.jobs.schedule_status() if manager.jobs is not None else [],
        }

    def _about(self) -> dict[str, Any]:
        manager = self.manager
        return {
            "pid": os.getpid(),
            "version": __version__,
            "project": self.project,
            "started": self.started,
            "reloads": manager.reload_count,
            "app": manager.system.web.app if manager.system.web is not None else None,
            "config": str(manager.system.config) if manager.system.config else None,
            "listening": manager.listening,
        }

    # -- the dashboard (corral.control.dashboard) ----------------------------------

    def start_sampling(self) -> None:
        """Keep the dashboard's series from now on (`close_sampling` ends it)."""
        live = lambda: [(r["name"], r["pid"]) for r in self._processes() if r["pid"] is not None]  # noqa: E731
        self.sampler = Sampler(self.manager.metrics, live)

    def close_sampling(self) -> None:
        if self.sampler is not None:
            self.sampler.close()

    def dashboard_state(self) -> dict[str, Any]:
        assert self.sampler is not None, "the dashboard is served only with its sampler"
        return dashboard_state.state(self.manager, self._about(), self.sampler, self._processes())

    def job_run(self, job: str, number: int) -> dict[str, Any] | None:
        return dashboard_state.job_run(self.manager, job, number)

    def audit(self, line: str) -> None:
        self.manager.output.say(f"control: {line}")

    def readiness(self) -> tuple[bool, str]:
        return self.manager.readiness()

    def log_selector(self, name: str) -> str:
        """`name` if it is corral's, a group's, a process's (as `corral status` lists them, or
        one that printed lines) or a job's; `manager` is corral's own lines. Else a 404."""
        manager = self.manager
        if name == "manager":
            return LOG_NAME
        groups = [LOG_NAME, *manager.groups]
        known = {*groups, *(row["name"] for row in self._processes()), *self.logs.names}
        if manager.jobs is not None:
            known |= {job["name"] for job in manager.jobs.schedule_status()}
        if name not in known:
            raise ControlError(
                404,
                f"no group, process or job named {name!r} (expected {', '.join(groups)}, "
                "or a process or job `corral status` lists)",
            )
        return name

    def metrics(self) -> bytes:
        samples = []
        for row in self._processes():
            process = self._process(row["pid"])
            if process is None:
                continue
            try:
                with process.oneshot():
                    cpu = process.cpu_times()
                    rss = process.memory_info().rss
            except psutil.Error:
                continue
            samples.append(
                ProcessSample(row["name"], row["group"], row["pid"], rss, cpu.user + cpu.system)
            )
        return self.manager.metrics.render(samples)

    def _processes(self) -> list[dict[str, Any]]:
        """Every process's row (without CPU and memory): the manager's, then each group's."""
        manager = self.manager
        state = "stopping" if manager.stopping else "running"
        rows = [status_row("manager", "corral", "manager", os.getpid(), state, self.started)]
        for group in manager.groups.values():
            rows += group.status()
        return rows

    def _process(self, pid: int | None) -> psutil.Process | None:
        """The psutil handle of `pid`, kept between calls (cpu_percent measures since the last)."""
        if pid is None:
            return None
        if pid not in self._sampled:
            try:
                self._sampled[pid] = psutil.Process(pid)
            except psutil.Error:
                return None
        return self._sampled[pid]

    def _sample(self, pid: int | None) -> tuple[float | None, int | None]:
        """CPU % since the previous sample of this pid (0.0 the first time), and RSS."""
        process = self._process(pid)
        if process is None:
            return None, None
        try:
            with process.oneshot():
                return process.cpu_percent(), process.memory_info().rss
        except psutil.Error:
            self._sampled.pop(process.pid, None)
            return None, None

    def _forget_others(self, live: set[int | None]) -> None:
        for pid in [pid for pid in self._sampled if pid not in live]:
            del self._sampled[pid]

    # -- verbs: the manager's own, with its refusals as HTTP errors -------------------

    async def reload(self, group: str | None) -> str:
        return _answer(lambda: self.manager.reload(group))

    async def restart(self, target: str) -> str:
        return _answer(lambda: self.manager.restart(target))

    async def scale(self, counts: dict[str, int]) -> str:
        return _answer(lambda: self.manager.scale(counts))

    async def stop(self) -> str:
        return self.manager.request_stop("stop asked for")

    async def run_job(self, name: str) -> str:
        return _answer(lambda: self.manager.run_job(name))


def _answer(verb: Callable[[], str]) -> str:
    """The verb's message; a refusal as a ControlError: 404 for an unknown name, else 400."""
    try:
        return verb()
    except Refused as refusal:
        raise ControlError(404 if refusal.unknown else 400, str(refusal)) from None


class ControlPlan:
    """Where the control API listens: the Unix socket always, TCP when asked, with its token."""

    def __init__(self, setting: str | None, probes: str | None = None) -> None:
        """Read `--control`: a PATH for the socket, or HOST:PORT for TCP beside the default socket;
        and `--probes` HOST:PORT, a listener of its own for the probes and /metrics.

        The default socket is this manager's own in the folder, whose
        leftovers of killed managers go. Both settings were validated with
        the configuration (`corral.settings.web.ManagerConfig`); a folder that
        cannot hold the socket is a ControlPathError (a UsageError).
        """
        self.probes = parse_tcp(probes) if probes is not None else None
        address = parse_control(setting) if setting is not None else None
        self.tcp = address if isinstance(address, TcpAddress) else None
        if isinstance(address, UnixAddress):
            self.unix_path = address.path
        else:
            running_in(Path.cwd())  # removes what killed managers left here
            self.unix_path = control_path(Path.cwd(), os.getpid())
        self.token: str | None = None
        self.token_generated = False
        self.read_token: str | None = None
        self.read_token_generated = False
        self.sessions: Sessions | None = None  # the dashboard's, served with the TCP API
        self.controller: ManagerControl | None = None
        if self.tcp is not None:
            self.token, self.token_generated = load_or_create_token(os.environ)
            self.read_token, self.read_token_generated = load_or_create_token(
                os.environ, READ_TOKEN_VARIABLE
            )
            self.sessions = Sessions()

    async def open(self, controller: ManagerControl, output: Output) -> ControlServers:
        """Start listening (AlreadyRunning, BindError if it cannot), and say where."""
        self.controller = controller
        tcp = []
        if self.tcp is not None:
            controller.start_sampling()  # before any call can ask the dashboard's state
            app = make_app(controller, self.token, self.read_token, self.sessions)
            tcp.append((self.tcp, app))
        if self.probes is not None:
            tcp.append((self.probes, make_probes_app(controller)))
        local = make_app(controller, None, sessions=self.sessions)
        servers = await serve_control(local, self.unix_path, *tcp)
        output.say(f"control socket: {self.unix_path}")
        if self.probes is not None:
            output.say(f"probes on http://{servers.addresses[-1]}: /livez, /readyz, /metrics")
        if self.token is not None:
            write_token(token_path(self.unix_path), self.token)
            address = servers.addresses[1]
            output.say(
                f"control API on http://{address}: changes need the token"
                + (
                    f" {self.token} (also in {token_path(self.unix_path)})"
                    if self.token_generated
                    else " in CORRAL_TOKEN"
                )
            )
            self._announce_dashboard(output, servers.addresses[1])
        return servers

    def _announce_dashboard(self, output: Output, address: UnixAddress | TcpAddress) -> None:
        """The dashboard is served with the TCP API: say where, write the read-only token."""
        assert self.sessions is not None and self.read_token is not None
        read_path = read_token_path(self.unix_path)
        write_token(read_path, self.read_token)
        url = f"http://{address}/"
        if isinstance(address, TcpAddress) and address.host in WILDCARDS:
            url = f"http://{TcpAddress(WILDCARDS[address.host], address.port)}/"
        self.sessions.base_url = url
        where = read_path if self.read_token_generated else READ_TOKEN_VARIABLE
        output.say(
            f"dashboard on {url}: `corral dashboard` prints a one-time login link; "
            f"the read-only token is in {where}"
        )

    def close(self) -> None:
        if self.controller is not None:
            self.controller.close_sampling()
        if self.token is not None:
            for path in (token_path(self.unix_path), read_token_path(self.unix_path)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
