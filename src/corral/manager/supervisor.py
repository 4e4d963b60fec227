"""The manager: binds the sockets, holds the groups by name, answers signals. Never imports the app.

Its life: fork the launcher (`corral.child.launcher`) -> bind (exit 2 if an
address is taken) -> write the pidfile -> run prestart -> start the groups
(web first: exit 3 if the app cannot start), every child as --user/--group ->
serve signals and the control API -> stop: web first, then the processes,
then the jobs -> clean up.

Signals (HUP, TTIN/TTOU, TERM...), the control API and the CLI verbs all go
through the same methods here, which call the groups' (`corral.manager.group`).
A reload re-reads the configuration first and hands each group its new
declaration (`Group.apply`); a configuration that does not validate changes
nothing.

A mistake of the user's (`corral.errors.UsageError`) is one message and exit
2. Any other exception, raised or left in a callback, is a bug in corral:
everything started is stopped in order, the traceback is printed, exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import traceback
from collections.abc import Callable
from typing import Any

from corral import posix
from corral.child.launcher import fork_launcher
from corral.errors import UsageError
from corral.exit_codes import APP_FAILED, FAILURE, OK, PRESTART_FAILED, USAGE
from corral.manager import listeners
from corral.manager.background import Background
from corral.manager.control import ControlPlan, ManagerControl
from corral.manager.exit_watch import watch_exit
from corral.manager.exits import watch_oom_kills
from corral.manager.group import Group, Refused
from corral.manager.jobs_group import JobsGroup
from corral.manager.launcher_handle import LauncherHandle
from corral.manager.metrics import (
    Metrics,
    prepare_multiprocess_dir,
    remove_dead_managers_dirs,
    remove_multiprocess_dir,
)
from corral.manager.notify import Notifier
from corral.manager.output import Output
from corral.manager.pidfile import pidfile
from corral.manager.prestart import run_prestart
from corral.manager.process_group import ProcessGroup
from corral.manager.upgrade import NewManagerSide, Upgrade
from corral.manager.web_group import AppFailed, WebGroup
from corral.settings import ProcessConfig, System, WebConfig

SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
"""The signals the manager answers (see the `_on_*_signal` handlers)."""
OUTPUT_DRAIN = 1.0  # seconds to read what the stopped children left in their pipes
RESTART_ONLY_WEB_SETTINGS = ("bind", "host", "port", "uds", "backlog", "user", "group")
"""[web] settings a reload cannot change: the sockets are bound, the identity is set."""


class Manager:
    def __init__(self, declared: System, reread: Callable[[], System] | None = None) -> None:
        """`reread` resolves the configuration again (on SIGHUP); None if there is no file."""
        self.system = declared
        self.at_start = declared  # what a reload cannot change stays as it was here
        self.reread = reread
        self.output = Output(json_format=declared.manager.log_format == "json")
        self.groups: dict[str, Group] = {}  # web, then the process groups, then jobs
        self.jobs: JobsGroup | None = None
        self.launcher: LauncherHandle | None = None
        self.identity: dict[str, Any] = {}  # who every child runs as ([corral] user, group)
        self.background = Background()
        self.reloading: asyncio.Task[None] | None = None  # a reload of everything
        self.reload_again = False  # a reload was asked for while one was under way
        self.started = asyncio.Event()  # every group declared at start has started
        self.reload_count = 0
        self.metrics = Metrics(None)
        self.finished: asyncio.Future[int] | None = None
        self.stopping = False
        self.bug = False  # an exception went uncaught: whatever happens next, exit 1
        self.listening: list[str] = []  # the web app's addresses, as URLs
        self.notify = Notifier.from_environment(self.output.say)  # systemd's Type=notify
        self.sockets: list[socket.socket] = []  # web's listening sockets
        self.metrics_env: dict[str, str] = {}  # what the manager set for the app's metrics
        self.upgrade = Upgrade(self.output, self._on_upgraded)  # this one, replaced (USR2)
        self.upgrading_from = NewManagerSide(os.environ)  # this one, replacing another
        self.handed_over = False  # the new manager serves: leave it the sockets' files

    def run(self) -> int:
        """Run everything declared until stopped; return the exit code."""
        posix.set_title(posix.MANAGER_TITLE)
        posix.hold_signals(SIGNALS)  # until the loop handles them: a stop while we start
        try:
            return self._run_everything()
        except Exception as error:
            return self._fail(error)
        finally:
            posix.release_signals()

    def _run_everything(self) -> int:
        manager, web = self.system.manager, self.system.web
        self.output.open_files(manager.log_file, manager.access_logfile)
        # Computed once: every child runs as [corral]'s user, web as [web]'s where it has one.
        self.identity, web_identity = identities(self.system)
        control = ControlPlan(manager.control, manager.probes)
        watch_oom_kills()  # before any child, so that an OOM kill of any of them is told
        remove_dead_managers_dirs()
        owner = web_identity if web is not None else self.identity
        metrics_dir, owned = prepare_multiprocess_dir(os.environ, posix.owner(owner))
        # Before anything imports prometheus_client, so the app's metrics are per-process files.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        if owned:  # corral's own directory: not for a manager that replaces this one
            self.metrics_env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        self.metrics = Metrics(metrics_dir)
        try:
            return self._run(web_identity, control)
        finally:
            remove_multiprocess_dir(metrics_dir, owned)

    def _fail(self, error: Exception) -> int:
        """Report `error`: a UsageError's messages (exit 2), else a bug's traceback (exit 1)."""
        if isinstance(error, UsageError):
            for message in error.messages:
                self.output.say(f"error: {message}")
            return USAGE
        self.bug = True
        trace = "".join(traceback.format_exception(error)).rstrip("\n")
        self.output.say(f"error: an unexpected error (a bug in corral); its traceback:\n{trace}")
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

    def _run(self, web_identity: dict[str, Any], control: ControlPlan) -> int:
        needs_zygotes = self.system.web is not None or any(
            job.call is not None for job in self.system.jobs.values()
        )
        launcher = fork_launcher(zygotes=needs_zygotes)
        web = self.system.web
        addresses: list[listeners.Address] = []
        sockets: list[socket.socket] = []
        if web is not None:
            unix_file = listeners.UnixSocketFile(web.uds_permissions, posix.owner(web_identity))
            addresses, sockets = listeners.listen(
                web.bind, web.uds, web.host, web.port, web.backlog, unix_file
            )
            tls = web.certfile is not None
            bound = zip(addresses, sockets, strict=True)
            self.listening = [listeners.url(address, sock, tls) for address, sock in bound]
        self.sockets = sockets
        try:
            still_serving = self.upgrading_from.still_serving
            with pidfile(self.system.manager.pidfile, still_serving):
                return asyncio.run(self._serve(launcher, control, sockets, web_identity))
        finally:
            listeners.close(sockets, [] if self.handed_over else addresses)

    async def _serve(
        self,
        forked: tuple[int, socket.socket],
        control: ControlPlan,
        sockets: list[socket.socket],
        web_identity: dict[str, Any],
    ) -> int:
        loop = asyncio.get_running_loop()
        self.output.start()
        self.finished = loop.create_future()
        self._handle_signals(loop)
        self.launcher = LauncherHandle(*forked, self.output.say)
        try:
            servers = await control.open(ManagerControl(self, self.output.logs), self.output)
            try:
                return await self._supervise(sockets, web_identity)
            finally:
                await servers.close()
                control.close()
        finally:
            self.launcher.close()

    async def _supervise(self, sockets: list[socket.socket], web_identity: dict[str, Any]) -> int:
        assert self.finished is not None
        try:
            code = await self._start_and_wait(sockets, web_identity)
        except Exception as error:  # stop what has started, in order, before anything else
            code = self._fail(error)
        if not self.handed_over:  # else the new manager is the service now
            self.notify.stopping()
        await self._stop()
        await self.output.drain(OUTPUT_DRAIN)  # the last lines of every child, then ours
        self.output.say("stopped")
        return FAILURE if self.bug else code

    def _handle_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """From the loop's first moment: a stop asked for while the control API opens counts."""
        loop.set_exception_handler(self._on_uncaught)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        loop.add_signal_handler(signal.SIGTTIN, self._on_scale_signal, +1)
        loop.add_signal_handler(signal.SIGTTOU, self._on_scale_signal, -1)
        loop.add_signal_handler(signal.SIGUSR1, self.output.reopen)
        loop.add_signal_handler(signal.SIGUSR2, self._on_upgrade_signal)
        for sig in posix.held_signals():  # come while we started: a stop is honoured now
            if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                self._on_stop_signal(sig)

    async def _start_and_wait(
        self, sockets: list[socket.socket], web_identity: dict[str, Any]
    ) -> int:
        """Start everything declared, then wait for the exit code (a signal, a stop, a failure).

        A stop that comes while things start calls the start off: the step,
        the zygote or the process being started is stopped there and then.
        """
        assert self.finished is not None
        if self.finished.done():  # a stop asked for before the loop ran: nothing starts
            return self.finished.result()
        starting = asyncio.ensure_future(self._start(sockets, web_identity))
        await asyncio.wait([starting, self.finished], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        elif (failed := starting.result()) is not None:
            return failed
        web = self.system.web
        if self.finished.done() or web is None or not web.reload:
            return await self.finished
        watching = asyncio.get_running_loop().create_task(self._reload_on_change())
        try:
            return await self.finished
        finally:
            watching.cancel()

    async def _start(
        self, sockets: list[socket.socket], web_identity: dict[str, Any]
    ) -> int | None:
        """Run prestart, then start every group; the exit code if that fails, else None."""
        prestart, launcher = self.system.prestart, self.launcher
        assert launcher is not None
        if not await run_prestart(prestart, self.system.env, self.output, self.identity, launcher):
            return PRESTART_FAILED
        web = self.system.web
        if web is not None:
            group = WebGroup(
                web,
                sockets,
                launcher,
                web_identity,
                _web_env(self.system, web),
                self.output,
                self.metrics,
                on_fatal=self._finish,
                on_serving=self.notify.ready,
            )
            self.groups["web"] = group
            try:
                await group.start()
            except AppFailed:
                self.output.say("error: the app cannot start; see web.zygote's output above")
                return APP_FAILED
        for name, config in self.system.processes.items():
            await self._add_process_group(name, config, self.system.env)
        self.jobs = JobsGroup(
            self.system.jobs,
            launcher,
            self.system.env,
            self.output,
            self.metrics,
            self.identity,
        )
        self.groups["jobs"] = self.jobs
        if self.upgrading_from.upgrading:
            self.background.start(self._take_over(self.jobs))
        else:
            await self.jobs.start()
        if web is None:
            self.notify.ready()
        self.started.set()
        return None

    async def _add_process_group(
        self, name: str, config: ProcessConfig, env: dict[str, str]
    ) -> None:
        first = self.system.only_replica.get(name, 1)
        assert self.launcher is not None
        group = ProcessGroup(
            name, config, env, self.output, self.metrics, self.identity, self.launcher, first
        )
        self.groups[name] = group
        await group.start()

    async def _stop(self) -> None:
        """Phase by phase (`Group.stop_phase`): web first (so a load balancer drains), then
        the processes, then running jobs; the groups of one phase at once.

        No job run starts once the stop has begun.
        """
        if self.jobs is not None:
            self.jobs.stop_ticking()
        for phase in sorted({group.stop_phase for group in self.groups.values()}):
            stopping = [g.stop() for g in self.groups.values() if g.stop_phase == phase]
            await asyncio.gather(*stopping)

    async def _reload_on_change(self) -> None:
        """--reload: a rolling reload whenever a .py file under the current directory changes."""
        from watchfiles import PythonFilter, awatch

        self.output.say(f"watching {os.getcwd()} for changes to .py files (--reload)")
        async for changes in awatch(os.getcwd(), watch_filter=PythonFilter()):
            changed = sorted({os.path.relpath(path) for _, path in changes})
            self.output.say(f"changed: {', '.join(changed)}")
            self.reload(None)

    # -- upgrading (SIGUSR2) ---------------------------------------------------------------

    def _on_upgrade_signal(self) -> None:
        if self.stopping or self.upgrade.under_way:
            self.output.say("SIGUSR2: no upgrade now (one is under way, or corral is stopping)")
            return
        self.output.say("SIGUSR2: upgrading corral: starting a new manager")
        env = {k: v for k, v in os.environ.items() if k not in self.metrics_env}
        if self.notify.address is not None:
            env["NOTIFY_SOCKET"] = self.notify.address
        self.background.start(self.upgrade.start(self.sockets, env))

    def _on_upgraded(self, pid: int) -> None:
        """The new manager serves: this one hands over and stops gracefully."""
        self.handed_over = True
        self.notify.main_pid(pid)
        self.request_stop("upgraded")

    async def _take_over(self, jobs: JobsGroup) -> None:
        """As the new manager: say ready once every web worker is, then start the jobs
        once the old manager has gone (so that no tick runs twice)."""
        while not self.readiness()[0]:
            if self.stopping:
                return
            await asyncio.sleep(0.05)
        old = self.upgrading_from.old_manager
        self.upgrading_from.say_ready()
        gone = asyncio.get_running_loop().create_future()
        assert old is not None
        watch_exit(old, lambda: gone.done() or gone.set_result(None))
        await gone
        if not self.stopping:
            self.output.say(f"upgrade complete: the old manager (pid {old}) has exited")
            await jobs.start()

    # -- stopping ----------------------------------------------------------------------

    def _finish(self, code: int) -> None:
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(code)

    def _on_stop_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        immediate = sig == signal.SIGQUIT or (self.stopping and sig == signal.SIGINT)
        if immediate:
            self.output.say(f"{name}: stopping at once")
            for group in self.groups.values():
                group.kill()
        elif not self.stopping:
            web = self.system.web
            bound = f"up to {web.graceful_timeout:g}s; " if web is not None else ""
            self.output.say(f"{name}: stopping gracefully ({bound}Ctrl-C again to stop at once)")
        self.stopping = True
        self._finish(OK)

    def request_stop(self, why: str) -> str:
        """A graceful stop, as on SIGTERM (`corral stop`)."""
        if not self.stopping:
            self.output.say(f"{why}: stopping gracefully")
        self.stopping = True
        self._finish(OK)
        return "stopping gracefully"

    # -- the verbs ---------------------------------------------------------------------

    def group(self, name: str) -> Group:
        """The group called `name`; Refused (unknown) if there is none."""
        group = self.groups.get(name)
        if group is None or (group is self.jobs and not self.system.jobs):
            names = ", ".join(n for n in self.groups if n != "jobs" or self.system.jobs)
            raise Refused(
                f"no group named {name!r} (expected one of: {names or 'none'})", unknown=True
            )
        return group

    def reload(self, name: str | None) -> str:
        """Reload one group (its current code), or everything, re-reading the configuration."""
        if self.stopping:
            return "not reloaded: corral is stopping"
        if name is not None:
            return self.group(name).reload()
        if self.reloading is not None and not self.reloading.done():
            self.reload_again = True  # several asked meanwhile make one more
            self.output.say("a reload is under way; another follows it")
            return "reloading everything once the reload under way is done"
        declared = self._read_again()
        self.reloading = self.background.start(self._reload_everything(declared))
        return "reloading everything"

    def _read_again(self) -> System | None:
        """The configuration as it is now (None without a way to read it); Refused, and the
        problems logged, if it does not validate: then nothing changes."""
        if self.reread is None:
            return None
        try:
            return self.reread()
        except UsageError as error:
            self.output.say("reload: the configuration does not validate; nothing changes:")
            for message in error.messages:
                self.output.say(f"  {message}")
            raise Refused(
                "the configuration does not validate; nothing changes: " + "; ".join(error.messages)
            ) from None

    async def _reload_everything(self, declared: System | None) -> None:
        """Reload, then once more if a reload was asked for meanwhile (with the configuration
        as it is then): a change made during a reload is not lost."""
        await self.started.wait()  # a reload asked for while corral starts waits for it
        while not self.stopping:
            self.reload_count += 1
            self.notify.reloading()
            try:
                await self._reload_groups(declared)
            finally:
                self.notify.ready()  # over, whether it worked or not: the old code still serves
            if not self.reload_again or self.stopping:
                return
            self.reload_again = False
            self.output.say("reloading again: a reload was asked for during the last one")
            try:
                declared = self._read_again()
            except Refused:  # said in the log; the system stays as the last reload left it
                return

    async def _reload_groups(self, declared: System | None) -> None:
        """Apply `declared` (the configuration re-read), then reload every group, and wait."""
        added = await self._apply(declared) if declared is not None else set()
        for name, group in list(self.groups.items()):
            if name not in added:
                group.reload()
        await asyncio.gather(*(group.settle() for group in list(self.groups.values())))

    async def _apply(self, new: System) -> set[str]:
        """Hand each group its part of `new`; start added groups, stop removed ones.

        Returns the names of the groups started here (they need no reload).
        """
        old = self.system
        self._say_what_needs_a_restart(self.at_start, new)
        web = self.groups.get("web")
        if web is not None and new.web is not None:
            await web.apply(new.web, _web_env(new, new.web))
        for name in [n for n in old.processes if n not in new.processes]:
            self.output.say(f"reload: [processes.{name}] is no longer declared: stopping it")
            await self.groups.pop(name).stop()
        added = set()
        for name, config in new.processes.items():
            if name in old.processes:
                await self.groups[name].apply(config, new.env)
            else:
                self.output.say(f"reload: [processes.{name}] is new: starting it")
                await self._add_process_group(name, config, new.env)
                added.add(name)
        if self.jobs is not None:
            await self.jobs.apply(new.jobs, new.env)
        web_now = old.web if new.web is None or old.web is None else new.web
        self.system = dataclasses.replace(new, web=web_now, manager=old.manager)
        return added

    def _say_what_needs_a_restart(self, old: System, new: System) -> None:
        changed = []
        if (old.web is None) != (new.web is None):
            changed.append("[web] (added or removed)")
        elif old.web is not None and new.web is not None:
            changed += [
                f"[web] {key}"
                for key in RESTART_ONLY_WEB_SETTINGS
                if getattr(old.web, key) != getattr(new.web, key)
            ]
        changed += [
            f"[corral] {key}"
            for key in type(old.manager).model_fields
            if getattr(old.manager, key) != getattr(new.manager, key)
        ]
        if changed:
            self.output.say(
                f"reload: {', '.join(changed)} changed; that takes a restart of corral "
                "(the rest of the configuration is applied)"
            )

    def restart(self, target: str) -> str:
        """Restart a group (`web`, one member at a time) or one process (`web.2`)."""
        name, dot, _ = target.partition(".")
        return self.group(name).restart(target if dot else None)

    def scale(self, counts: dict[str, int]) -> str:
        """Set the size of each group named; unknown names are refused before anything changes."""
        groups = {name: self.group(name) for name in counts}
        return "scaling " + ", ".join(groups[name].scale(count) for name, count in counts.items())

    def run_job(self, name: str) -> str:
        if self.jobs is None:
            raise Refused(f"no job named {name!r} (jobs: none declared)", unknown=True)
        return self.jobs.run_now(name)

    def readiness(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "stopping"
        for group in self.groups.values():
            ready, why = group.readiness()
            if not ready:
                return False, why
        return True, ""

    # -- signals -------------------------------------------------------------------------

    def _on_reload_signal(self) -> None:
        if not self.stopping:
            self.output.say("SIGHUP: reloading")
            with contextlib.suppress(Refused):  # said in the log already
                self.reload(None)

    def _on_scale_signal(self, change: int) -> None:
        web = self.groups.get("web")
        if web is None or self.stopping:
            return
        try:
            web.scale(web.size + change)
        except Refused as refused:  # TTOU at one worker, TTIN at the most corral runs
            name = "SIGTTIN" if change > 0 else "SIGTTOU"
            self.output.say(f"{name}: nothing changes: {refused}")


def identities(system: System) -> tuple[dict[str, Any], dict[str, Any]]:
    """Who the children run as ([corral] user and group), and who the web processes run as
    ([web]'s, which the settings filled in from [corral]'s): `corral.posix.identity`'s.

    The settings checked both before anything started (`corral.settings.identities`).
    """
    manager, web = system.manager, system.web
    children = posix.identity(manager.user, manager.group)
    if web is None:
        return children, children
    return children, posix.identity(web.user, web.group)


def _web_env(system: System, web: WebConfig) -> dict[str, str]:
    return {**system.env, **web.env}
