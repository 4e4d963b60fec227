"""The launcher: a copy of the manager, taken before its event loop starts, that forks zygotes.

Every zygote (the web zygote of each reload generation, the jobs zygote) is
forked from here rather than started as a new interpreter. Before the fork
the manager has imported everything a zygote needs except the user's code
(the interpreter's own modules, asyncio and ssl, uvicorn and its event loop
and protocols, pydantic, corral) and frozen it for the garbage collector.
Those pages are then shared copy-on-write by the manager, the launcher, every
zygote and every worker, so whole-tree memory counts them once instead of
once in the manager and once more in each zygote. The launcher never imports
the app, so each reload generation still imports the code afresh.

Forking happens here and not in the manager because the manager runs an
event loop (and threads), and forking a threaded process is unsafe. Like the
zygotes, the launcher is a single-threaded `select` loop
(`corral.child.fork_server`).

Everything else corral runs starts here too (`Spawn`): the declared
processes, the runs of command jobs, the prestart steps, each in a session
of its own. So the launcher is the ancestor of every process corral starts
but itself, and it makes sure none outlives the manager:

- it dies with the manager (the parent-death signal, and the end of its
  channel where there is no such signal);
- on Linux it is a child subreaper (`PR_SET_CHILD_SUBREAPER`): a
  descendant whose parent exits (the `sleep` of `sh -c 'sleep 60 &'`, a
  daemon that forked twice, what an app's worker started) becomes its
  child instead of init's;
- when the manager has gone, it sends each declared process's group its
  stop signal and the zygotes SIGTERM (their workers drain), signals every
  orphan handed to it, waits up to the longest stop timeout, then SIGKILLs
  every process still below it, until none is left.

Without a subreaper (macOS), a descendant that left its process group and
whose parent has exited is beyond reach; the rest is the same.

A launcher that dies is replaced (`corral.manager.launcher_handle`): its
children died with it (the parent-death signal), and their groups start
them again. The manager's loop runs by then, so the replacement is a fresh
interpreter (`python -m corral.child.launcher FD MANAGER_PID`,
`spawn_launcher`) that imports the same modules itself: its zygotes share
its pages, no longer the manager's.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import os
import signal
import socket
import subprocess
import sys
import time

import psutil

from corral import posix
from corral.child.fork_server import REAP_POLL, ForkServer, redirect_output
from corral.exit_codes import OK, USAGE
from corral.ipc import channel
from corral.ipc.messages import Forked, LaunchZygote, Message, Spawn, SpawnFailed

ZYGOTE_MODULES = ("corral.child.web_zygote", "corral.child.jobs_zygote")
KILL_LIMIT = 5.0  # seconds of SIGKILL rounds for a subtree that keeps forking


class Launcher(ForkServer):
    """Forks zygotes, starts every other child (`Spawn`), and ends them all when the manager goes.

    A zygote sheds the launcher, takes its identity, and runs `module.main`.
    """

    def __init__(self, link: socket.socket) -> None:
        super().__init__(link, channel.Decoder(), stop_timeout=0)
        self.pid = os.getpid()
        self.spawned: dict[int, tuple[subprocess.Popen[bytes], signal.Signals]] = {}

    def _fork(self, message: Message, fds: list[int]) -> None:
        """Fork a zygote (`LaunchZygote`) or start a program (`Spawn`)."""
        assert isinstance(message, (LaunchZygote, Spawn))
        # If the manager dies, each child stops gracefully first: wait for the slowest.
        self.stop_timeout = max(self.stop_timeout, message.stop_timeout + 1)
        if isinstance(message, Spawn):
            self._spawn(message, fds)
        else:
            super()._fork(message, fds)

    def _spawn(self, message: Spawn, fds: list[int]) -> None:
        """Start `message.argv` with the pipe in `fds` as its output; report its pid or why not.

        Popen changes the user before `preexec_fn` runs, and the parent-death
        signal must be asked for after that change (which clears it).
        """
        (log_fd,) = fds
        identity = message.identity
        try:
            process = subprocess.Popen(
                message.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                cwd=message.cwd or None,
                env=message.env,
                start_new_session=True,
                user=identity.get("user"),
                group=identity.get("group"),
                extra_groups=identity.get("extra_groups"),
                preexec_fn=functools.partial(_in_the_child, self.pid),
            )
        except (OSError, subprocess.SubprocessError) as error:
            code = getattr(error, "errno", None) or 0
            reason = getattr(error, "strerror", None) or str(error)
            if isinstance(error, OSError) and error.filename:
                reason = f"{reason}: {error.filename!r}"
            channel.send(self.link, SpawnFailed(key=message.key, errno=code, strerror=reason))
            return
        finally:
            os.close(log_fd)
        self.spawned[process.pid] = (process, signal.Signals[message.stop_signal])
        self.children.add(process.pid)
        channel.send(self.link, Forked(key=message.key, pid=process.pid))

    def _exited(self, pid: int, code: int) -> None:
        spawned = self.spawned.pop(pid, None)
        if spawned is not None:
            spawned[0].returncode = code  # reaped here: its Popen must not wait for it
        super()._exited(pid, code)

    def _stop_children(self) -> None:
        """The manager has gone (or let us go): end every process below us, gracefully first.

        Each declared process's group gets its stop signal, each zygote
        SIGTERM (it drains its workers), and so does every orphan handed to
        us meanwhile; after the longest stop timeout, every process still
        below us gets SIGKILL, round after round, until none is left.
        """
        self.exiting = True
        asked = set()
        for pid in list(self.children):
            spawned = self.spawned.get(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if spawned is not None:
                    os.killpg(pid, spawned[1])
                else:
                    os.kill(pid, signal.SIGTERM)
            asked.add(pid)
        me = psutil.Process()
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            self._reap()
            children = {child.pid for child in _children(me)}
            if not children:
                return
            for pid in children - asked:  # an orphan, handed to us as its parent exited
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                asked.add(pid)
            time.sleep(REAP_POLL)
        deadline = time.monotonic() + KILL_LIMIT
        while time.monotonic() < deadline:
            below = _children(me, recursive=True)
            if not below:
                break
            for process in below:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            time.sleep(REAP_POLL)
            self._reap()
        self._reap()

    def become(self, message: LaunchZygote, fds: list[int]) -> int:  # type: ignore[override]
        link_fd, log_fd = fds
        os.setsid()  # signals for the terminal's process group do not reach the app
        _stdin_from_devnull()
        redirect_output(log_fd)
        os.environ.update({**message.identity.get("environment", {}), **message.env})
        try:
            posix.assume_identity(message.identity)
        except PermissionError as error:
            print(f"cannot run as --user/--group: {error.strerror}", file=sys.stderr)
            return USAGE
        if not posix.die_with_parent(self.pid):  # after the change of user, which clears it
            return OK
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the app imports from here
        module = importlib.import_module(message.module)
        code: int = module.main(link_fd)
        return code


def _in_the_child(launcher: int) -> None:
    """In a child started by `Launcher._spawn`, before it executes its program.

    SIGINT gets its default action back (the launcher ignores it, and an
    ignored signal stays ignored across exec: a `stop_signal = "SIGINT"`
    would not stop the program); then the parent-death signal.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if not posix.die_with_parent(launcher):
        os._exit(OK)  # the launcher died meanwhile: nobody would ever stop this child


def _children(me: psutil.Process, recursive: bool = False) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return [c for c in me.children(recursive=recursive) if _alive(c)]
    return []


def _alive(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.status() != psutil.STATUS_ZOMBIE
    return False


def fork_launcher(zygotes: bool = True) -> tuple[int, socket.socket]:
    """Fork the launcher from the manager; its pid and the manager's end of its channel.

    With `zygotes`, first import what every zygote and worker needs, so that
    they share it (a system of processes alone has no zygote). Call it
    before the manager's event loop starts, while the manager has a single
    thread.
    """
    if zygotes:
        _import_for_zygotes()
    gc.freeze()  # the children's collections then never touch (and so never copy) these pages
    ours, theirs = socket.socketpair()
    manager = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        ours.close()
        os._exit(_run(theirs, manager))
    theirs.close()
    return pid, ours


def spawn_launcher() -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start a launcher as a new interpreter (from a running manager, which must not fork).

    Returns its process and the manager's end of its channel. OSError if it cannot start.
    """
    ours, theirs = socket.socketpair()
    try:
        argv = [sys.executable, "-m", __name__, str(theirs.fileno()), str(os.getpid())]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=[theirs.fileno()])
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, ours


def main() -> int:
    """A launcher started by `spawn_launcher`: `python -m corral.child.launcher FD MANAGER_PID`."""
    link_fd, manager = int(sys.argv[1]), int(sys.argv[2])
    if not posix.die_with_parent(manager):  # before the imports: the manager may die meanwhile
        return OK
    _import_for_zygotes()
    gc.freeze()
    return _run(socket.socket(fileno=link_fd), manager)


def _run(link: socket.socket, manager: int) -> int:
    posix.release_signals()  # held by the manager while it starts
    if not posix.die_with_parent(manager):
        return OK
    posix.become_subreaper()
    os.setsid()
    posix.set_title("corral: launcher")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stdin_from_devnull()
    return Launcher(link).serve()


def _import_for_zygotes() -> None:
    """Import, once, what every zygote and worker would otherwise import for itself."""
    for module in ZYGOTE_MODULES:
        importlib.import_module(module)
    from corral.child.worker import import_server_modules

    import_server_modules()


def _stdin_from_devnull() -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


if __name__ == "__main__":
    sys.exit(main())
