"""The manager: binds the sockets, supervises the groups, answers signals. Never imports the app.

Its life: fork the launcher (`corral.child.launcher`) -> bind (exit 2 if an
address is taken) -> write the pidfile -> run prestart -> start
the web group, whose processes run as --user/--group (exit 3 if the app cannot
start) -> wait for a signal -> stop: web first, gracefully unless told otherwise -> clean up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from typing import Any

from corral import posix
from corral.child.launcher import fork_launcher
from corral.control.server import AlreadyRunning
from corral.exit_codes import APP_FAILED, FAILURE, OK, PRESTART_FAILED, USAGE
from corral.manager import listeners
from corral.manager.background import Background
from corral.manager.control import ControlPlan, ManagerControl
from corral.manager.job_scheduler import JobScheduler
from corral.manager.launcher_handle import LauncherHandle
from corral.manager.metrics import Metrics, prepare_multiprocess_dir, remove_multiprocess_dir
from corral.manager.output import Output
from corral.manager.prestart import run_prestart
from corral.manager.process_group import ProcessGroup
from corral.manager.web_group import AppFailed, WebGroup
from corral.settings import System


class Manager:
    def __init__(self, declared: System) -> None:
        self.system = declared
        self.output = Output(json_format=declared.manager.log_format == "json")
        self.web: WebGroup | None = None
        self.groups: list[ProcessGroup] = []
        self.jobs: JobScheduler | None = None
        self.reloads = Background()
        self.reload_count = 0
        self.metrics = Metrics(None)
        self.finished: asyncio.Future[int] | None = None
        self.stopping = False

    def run(self) -> int:
        """Run everything declared until stopped; return the exit code."""
        posix.set_title("corral: manager")
        web = self.system.web
        try:
            identity = posix.identity(web.user, web.group) if web is not None else {}
            control = ControlPlan(self.system.manager.control)
        except ValueError as error:
            self.output.say(f"error: {error}")
            return USAGE
        metrics_dir, owned = prepare_multiprocess_dir(os.environ, posix.owner(identity))
        # Before anything imports prometheus_client, so the app's metrics are per-process files.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        self.metrics = Metrics(metrics_dir)
        try:
            return self._run(identity, control)
        finally:
            remove_multiprocess_dir(metrics_dir, owned)

    def _run(self, identity: dict[str, Any], control: ControlPlan) -> int:
        needs_zygotes = self.system.web is not None or any(
            job.call is not None for job in self.system.jobs.values()
        )
        launcher = fork_launcher() if needs_zygotes else None
        web = self.system.web
        addresses: list[listeners.Address] = []
        sockets: list[socket.socket] = []
        if web is not None:
            try:
                unix_file = listeners.UnixSocketFile(web.uds_permissions, posix.owner(identity))
                addresses, sockets = listeners.listen(
                    web.bind, web.uds, web.host, web.port, web.backlog, unix_file
                )
            except listeners.BindError as error:
                self.output.say(f"error: {error}")
                return USAGE
        pidfile = web.pidfile if web is not None else None
        try:
            if pidfile is not None:
                pidfile.write_text(f"{os.getpid()}\n")
            return asyncio.run(self._serve(launcher, control, sockets, identity))
        except (ValueError, PermissionError) as error:
            self.output.say(f"error: {error}")
            return USAGE
        finally:
            listeners.close(sockets, addresses)
            if pidfile is not None:
                with contextlib.suppress(OSError):
                    pidfile.unlink()

    async def _serve(
        self,
        forked: tuple[int, socket.socket] | None,
        control: ControlPlan,
        sockets: list[socket.socket],
        identity: dict[str, Any],
    ) -> int:
        loop = asyncio.get_running_loop()
        self.finished = loop.create_future()
        launcher = None if forked is None else LauncherHandle(*forked, self._on_launcher_lost)
        try:
            try:
                servers = await control.open(ManagerControl(self, self.output.logs), self.output)
            except (AlreadyRunning, listeners.BindError) as error:
                self.output.say(f"error: {error}")
                return USAGE
            try:
                return await self._supervise(launcher, sockets, identity)
            finally:
                await servers.close()
                control.close()
        finally:
            if launcher is not None:
                launcher.close()

    async def _supervise(
        self,
        launcher: LauncherHandle | None,
        sockets: list[socket.socket],
        identity: dict[str, Any],
    ) -> int:
        assert self.finished is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        loop.add_signal_handler(signal.SIGTTIN, self._on_scale_signal, +1)
        loop.add_signal_handler(signal.SIGTTOU, self._on_scale_signal, -1)
        if not await run_prestart(self.system.prestart, self.system.env, self.output):
            return PRESTART_FAILED
        if self.finished.done():
            return self.finished.result()
        web = self.system.web
        if web is not None:
            assert launcher is not None
            env = {**self.system.env, **web.env}
            self.web = WebGroup(
                web,
                sockets,
                launcher,
                identity,
                env,
                self.output,
                self.metrics,
                on_fatal=self._finish,
            )
            try:
                await self.web.start()
            except AppFailed:
                self.output.say("error: the app cannot start; see web.zygote's output above")
                await self.web.stop()
                return APP_FAILED
        for name, config in self.system.processes.items():
            group = ProcessGroup(name, config, self.system.env, self.output, self.metrics)
            self.groups.append(group)
            await group.start()
        if self.system.jobs:
            self.jobs = JobScheduler(
                self.system.jobs, launcher, self.system.env, self.output, self.metrics
            )
            await self.jobs.start()
        reloading = web is not None and web.reload
        watching = loop.create_task(self._reload_on_change()) if reloading else None
        code = await self.finished
        if watching is not None:
            watching.cancel()
        await self._stop()
        self.output.say("stopped")
        return code

    async def _stop(self) -> None:
        """Web first (so a load balancer drains), then the processes, then running jobs.

        No job run starts once the stop has begun.
        """
        if self.jobs is not None:
            self.jobs.stop_ticking()
        if self.web is not None:
            await self.web.stop()
        await asyncio.gather(*(group.stop() for group in self.groups))
        if self.jobs is not None:
            await self.jobs.stop()

    async def _reload_on_change(self) -> None:
        """--reload: a rolling reload whenever a .py file under the current directory changes."""
        from watchfiles import PythonFilter, awatch

        self.output.say(f"watching {os.getcwd()} for changes to .py files (--reload)")
        async for changes in awatch(os.getcwd(), watch_filter=PythonFilter()):
            changed = sorted({os.path.relpath(path) for _, path in changes})
            self.output.say(f"changed: {', '.join(changed)}")
            self.reload()

    def _finish(self, code: int) -> None:
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(code)

    def _on_launcher_lost(self, cause: str) -> None:
        self.output.say(f"error: the launcher exited ({cause}); stopping")
        self.stopping = True
        self._finish(FAILURE)

    def _on_stop_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        immediate = sig == signal.SIGQUIT or (self.stopping and sig == signal.SIGINT)
        if immediate:
            self.output.say(f"{name}: stopping at once")
            if self.web is not None:
                self.web.kill()
        elif not self.stopping:
            web = self.system.web
            bound = f"up to {web.graceful_timeout:g}s; " if web is not None else ""
            self.output.say(f"{name}: stopping gracefully ({bound}Ctrl-C again to stop at once)")
        self.stopping = True
        self._finish(OK)

    def _on_reload_signal(self) -> None:
        if not self.stopping:
            self.output.say("SIGHUP: reloading")
            self.reload()

    def request_stop(self, why: str) -> None:
        """A graceful stop, as on SIGTERM (`corral stop`)."""
        if not self.stopping:
            self.output.say(f"{why}: stopping gracefully")
        self.stopping = True
        self._finish(OK)

    def reload(self) -> None:
        """Web workers roll over to a new zygote; replicas restart one at a time; jobs reload."""
        if self.stopping:
            return
        self.reload_count += 1
        if self.web is not None:
            self.web.reload()
        for group in self.groups:
            self.reloads.start(group.reload())
        if self.jobs is not None:
            self.reloads.start(self.jobs.reload())

    def _on_scale_signal(self, change: int) -> None:
        if self.web is not None and not self.stopping:
            self.web.scale(self.web.wanted + change)
