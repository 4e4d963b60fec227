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

from corral.control.address import (
    ControlPathError,
    TcpAddress,
    UnixAddress,
    control_path,
    parse_control,
)
from corral.control.api import ControlError, make_app, make_probes_app
from corral.control.discovery import running_in
from corral.control.server import ControlServers, serve_control
from corral.control.token import load_or_create_token, token_path, write_token
from corral.manager.child import status_row
from corral.manager.group import Refused
from corral.manager.logbuffer import LogBuffer
from corral.manager.metrics import ProcessSample
from corral.manager.output import Output
from corral.version import __version__

if TYPE_CHECKING:
    from corral.manager.supervisor import Manager


class ManagerControl:
    """Implements `corral.control.api.Controller` for one running manager."""

    def __init__(self, manager: Manager, logs: LogBuffer) -> None:
        self.manager = manager
        self.logs = logs
        self.started = time.time()
        self.project = os.getcwd()
        self._sampled: dict[int, psutil.Process] = {}  # kept, so cpu_percent measures since last

    # -- observation -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        manager = self.manager
        rows = self._processes()
        for row in rows:
            row["cpu_percent"], row["rss"] = self._sample(row["pid"])
        self._forget_others({row["pid"] for row in rows})
        return {
            "corral": {
                "pid": os.getpid(),
                "version": __version__,
                "project": self.project,
                "started": self.started,
                "reloads": manager.reload_count,
                "app": manager.system.web.app if manager.system.web is not None else None,
                "config": str(manager.system.config) if manager.system.config else None,
                "listening": manager.listening,
            },
            "processes": rows,
            "jobs": manager.jobs.schedule_status() if manager.jobs is not None else [],
        }

    def readiness(self) -> tuple[bool, str]:
        return self.manager.readiness()

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
        leftovers of killed managers go. ControlPathError (a UsageError)
        names a setting that cannot work.
        """
        self.probes = parse_control(probes) if probes is not None else None
        if self.probes is not None and not isinstance(self.probes, TcpAddress):
            raise ControlPathError(f"--probes {probes!r}: expected HOST:PORT, such as 0.0.0.0:9000")
        address = parse_control(setting) if setting is not None else None
        self.tcp = address if isinstance(address, TcpAddress) else None
        if isinstance(address, UnixAddress):
            self.unix_path = address.path
        else:
            running_in(Path.cwd())  # removes what killed managers left here
            self.unix_path = control_path(Path.cwd(), os.getpid())
        self.token: str | None = None
        self.token_generated = False
        if self.tcp is not None:
            self.token, self.token_generated = load_or_create_token(os.environ)

    async def open(self, controller: ManagerControl, output: Output) -> ControlServers:
        """Start listening (AlreadyRunning, BindError if it cannot), and say where."""
        tcp = []
        if self.tcp is not None:
            tcp.append((self.tcp, make_app(controller, self.token)))
        if self.probes is not None:
            tcp.append((self.probes, make_probes_app(controller)))
        servers = await serve_control(make_app(controller, None), self.unix_path, *tcp)
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
        return servers

    def close(self) -> None:
        if self.token is not None:
            with contextlib.suppress(FileNotFoundError):
                token_path(self.unix_path).unlink()
