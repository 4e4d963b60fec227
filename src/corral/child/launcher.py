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
event loop (and, on Python 3.11, a thread per child it waits for), and
forking a threaded process is unsafe. Like the zygotes, the launcher is a
single-threaded `select` loop (`corral.child.fork_server`).

A launcher that dies is replaced (`corral.manager.launcher_handle`), but the
manager's loop runs by then, so the replacement is a fresh interpreter
(`python -m corral.child.launcher FD MANAGER_PID`, `spawn_launcher`) that
imports the same modules itself: its zygotes share its pages, no longer the
manager's.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import socket
import subprocess
import sys

from corral import posix
from corral.child.fork_server import ForkServer, redirect_output
from corral.exit_codes import OK, USAGE
from corral.ipc import channel
from corral.ipc.messages import LaunchZygote

ZYGOTE_MODULES = ("corral.child.web_zygote", "corral.child.jobs_zygote")


class Launcher(ForkServer):
    """Forks zygotes: each child sheds the launcher, takes its identity, and runs `module.main`."""

    def __init__(self, link: socket.socket) -> None:
        super().__init__(link, channel.Decoder(), stop_timeout=0)
        self.pid = os.getpid()

    def _fork(self, message: LaunchZygote, fds: list[int]) -> None:  # type: ignore[override]
        # If the manager dies, the zygotes stop their workers gracefully; wait that long for them.
        self.stop_timeout = max(self.stop_timeout, message.stop_timeout + 1)
        super()._fork(message, fds)

    def become(self, message: LaunchZygote, fds: list[int]) -> int:  # type: ignore[override]
        link_fd, log_fd = fds
        os.setsid()  # signals for the terminal's process group do not reach the app
        _stdin_from_devnull()
        redirect_output(log_fd)
        os.environ.update(message.env)
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


def fork_launcher() -> tuple[int, socket.socket]:
    """Fork the launcher from the manager; its pid and the manager's end of its channel.

    Call it before the manager's event loop starts, while the manager has a
    single thread.
    """
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
    if not posix.die_with_parent(manager):
        return OK
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
