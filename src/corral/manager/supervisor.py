"""The manager: binds the sockets, supervises the groups, answers signals. Never imports the app.

Its life: fork the launcher (`corral.child.launcher`) -> bind (exit 2 if an
address is taken) -> write the pidfile -> run prestart -> start
the web group (exit 3 if the app cannot start), the processes and the jobs,
every child as --user/--group -> wait for a signal -> stop: web first,
gracefully unless told otherwise -> clean up.

A mistake of the user's (`corral.errors.UsageError`) is one message and exit
2. Any other exception, raised or left in a callback, is a bug in corral:
everything started is stopped in order, the traceback is printed, exit 1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import traceback
from typing import Any

from corral import posix
from corral.child.launcher import fork_launcher
from corral.errors import UsageError
from corral.exit_codes import APP_FAILED, FAILURE, OK, PRESTART_FAILED, USAGE
from corral.manager import listeners
from corral.manager.background import Background
from corral.manager.control import ControlPlan, ManagerControl
from corral.manager.job_scheduler import JobScheduler
from corral.manager.launcher_handle import LauncherHandle
from corral.manager.metrics import (
    Metrics,
    prepare_multiprocess_dir,
    remove_dead_managers_dirs,
    remove_multiprocess_dir,
)
from corral.manager.output import Output
from corral.manager.pidfile import pidfile
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
        self.bug = False  # an exception went uncaught: whatever happens next, exit 1
        self.listening: list[str] = []  # the web app's addresses, as URLs

    def run(self) -> int:
        """Run everything declared until stopped; return the exit code."""
        posix.set_title(posix.MANAGER_TITLE)
        try:
            return self._run_everything()
        except Exception as error:
            return self._fail(error)

    def _run_everything(self) -> int:
        manager, web = self.system.manager, self.system.web
        # Computed once: every child runs as [corral]'s user, web as [web]'s where it has one.
        identity = posix.identity(manager.user, manager.group)
        web_identity = identity
        if web is not None and (web.user or web.group):
            web_identity = posix.identity(web.user or manager.user, web.group or manager.group)
        control = ControlPlan(manager.control)
        remove_dead_managers_dirs()
        owner = web_identity if web is not None else identity
        metrics_dir, owned = prepare_multiprocess_dir(
            os.environ, (owner.get("user", -1), owner.get("group", -1)) if owner else None
        )
        # Before anything imports prometheus_client, so the app's metrics are per-process files.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        self.metrics = Metrics(metrics_dir)
        try:
            return self._run((identity, web_identity), control)
        finally:
            remove_multiprocess_dir(metrics_dir, owned)

    def _fail(self, error: Exception) -> int:
        """Report `error`: a UsageError's messages (exit 2), else a bug's traceback (exit 1)."""
        if isinstance(error, UsageError):
            for message in error.messages:
                self.output.say(f"error: {message}")
            return USAGE
        self.bug = True
        self.output.say("error: an unexpected error (a bug in corral); its traceback:")
        for line in "".join(traceback.format_exception(error)).splitlines():
            self.output.say(line)
        return FAILURE

    def _on_uncaught(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An exception no one caught in a callback or a task: a bug; stop everything in order."""
        error = context.get("exception")
        if not isinstance(error, Exception):
            loop.default_exception_handler(context)
            return
        self._fail(error)
        self.stopping = True
        self._finish(FAILURE)

    def _run(self, identities: tuple[dict[str, Any], dict[str, Any]], control: ControlPlan) -> int:
        needs_zygotes = self.system.web is not None or any(
            job.call is not None for job in self.system.jobs.values()
        )
        launcher = fork_launcher() if needs_zygotes else None
        web = self.system.web
        addresses: list[listeners.Address] = []
        sockets: list[socket.socket] = []
        if web is not None:
            addresses, sockets = listeners.listen(
                web.bind, web.uds, web.host, web.port, web.backlog
            )
            tls = web.certfile is not None
            bound = zip(addresses, sockets, strict=True)
            self.listening = [listeners.url(address, sock, tls) for address, sock in bound]
        try:
            with pidfile(self.system.manager.pidfile):
                return asyncio.run(self._serve(launcher, control, sockets, identities))
        finally:
            listeners.close(sockets, addresses)

    async def _serve(
        self,
        forked: tuple[int, socket.socket] | None,
        control: ControlPlan,
        sockets: list[socket.socket],
        identities: tuple[dict[str, Any], dict[str, Any]],
    ) -> int:
        loop = asyncio.get_running_loop()
        self.finished = loop.create_future()
        launcher = None if forked is None else LauncherHandle(*forked, self._on_launcher_lost)
        try:
            servers = await control.open(ManagerControl(self, self.output.logs), self.output)
            try:
                return await self._supervise(launcher, sockets, identities)
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
        identities: tuple[dict[str, Any], dict[str, Any]],
    ) -> int:
        assert self.finished is not None
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._on_uncaught)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        loop.add_signal_handler(signal.SIGTTIN, self._on_scale_signal, +1)
        loop.add_signal_handler(signal.SIGTTOU, self._on_scale_signal, -1)
        try:
            code = await self._start_and_wait(launcher, sockets, identities)
        except Exception as error:  # stop what has started, in order, before anything else
            code = self._fail(error)
        await self._stop()
        self.output.say("stopped")
        return FAILURE if self.bug else code

    async def _start_and_wait(
        self,
        launcher: LauncherHandle | None,
        sockets: list[socket.socket],
        identities: tuple[dict[str, Any], dict[str, Any]],
    ) -> int:
        """Start everything declared, then wait for the exit code (a signal, a stop, a failure)."""
        assert self.finished is not None
        identity, web_identity = identities
        if not await run_prestart(self.system.prestart, self.system.env, self.output, identity):
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
                web_identity,
                env,
                self.output,
                self.metrics,
                on_fatal=self._finish,
            )
            try:
                await self.web.start()
            except AppFailed:
                self.output.say("error: the app cannot start; see web.zygote's output above")
                return APP_FAILED
        for name, config in self.system.processes.items():
            group = ProcessGroup(name, config, self.system.env, self.output, self.metrics, identity)
            self.groups.append(group)
            await group.start()
        if self.system.jobs:
            self.jobs = JobScheduler(
                self.system.jobs, launcher, self.system.env, self.output, self.metrics, identity
            )
            await self.jobs.start()
        if web is None or not web.reload:
            return await self.finished
        watching = asyncio.get_running_loop().create_task(self._reload_on_change())
        try:
            return await self.finished
        finally:
            watching.cancel()

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
