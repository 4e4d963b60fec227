"""A fork server: a process that has imported code once and forks children on request.

The web zygote (which forks web workers) and the jobs zygote (which forks one
child per job run) are fork servers. Their life: read the spec from the
manager -> load what the children will run -> say "loaded" (or "failed") ->
fork on each request, report each child's exit, until the manager says
"exit" or goes away (then the children are stopped, gracefully first).

The loop is a plain blocking `select`: no event loop, no threads, so that
forking from here is safe.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import Any

from corral import posix
from corral.exit_codes import FAILURE, OK
from corral.ipc import channel
from corral.ipc.messages import Exit, Exited, Forked, Message

REAP_POLL = 0.05


class ForkServer:
    def __init__(self, link: socket.socket, decoder: channel.Decoder, stop_timeout: float) -> None:
        self.link = link
        self.decoder = decoder
        self.stop_timeout = stop_timeout
        self.children: set[int] = set()
        self.exiting = False
        self.stop_asked = False  # SIGTERM: stop the children, then exit
        self.wake_read, self.wake_write = os.pipe()

    def become(self, message: Message, fds: list[int]) -> int:
        """In a freshly forked child: run what was asked; return the exit code."""
        raise NotImplementedError

    def serve(self) -> int:
        for fd in (self.wake_read, self.wake_write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        # Only noted here: the loop stops the children, never a handler that interrupts a fork.
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop_asked", True))
        selector = selectors.DefaultSelector()
        selector.register(self.link, selectors.EVENT_READ)
        selector.register(self.wake_read, selectors.EVENT_READ)
        while not self.exiting:
            for key, _ in selector.select():
                if key.fileobj is self.link:
                    self._read_requests()
                else:
                    self._drain_wakeups()
            self._reap()
            if self.stop_asked and not self.exiting:
                self._stop_children()
        selector.close()
        return OK

    def _read_requests(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.link, 65536, channel.MAX_FDS_PER_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset: the manager died with our reports unread
            data, fds = b"", []
        if not data:
            # The manager has gone: no process of ours may outlive it.
            self._stop_children()
            return
        for message, message_fds in self.decoder.feed(data, fds):
            if isinstance(message, Exit):
                self.exiting = True
            else:
                self._fork(message, message_fds)

    def _fork(self, message: Message, fds: list[int]) -> None:
        """Fork a child for `message` (a request with a `key`); report its pid.

        SIGTERM is blocked across the fork: one sent to the child as soon as
        its pid is known (a stop) waits until the child has shed our handler,
        then stops it, rather than run our handler in it.
        """
        sys.stdout.flush()
        sys.stderr.flush()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = os.fork()
        if pid == 0:
            os._exit(self._in_child(message, fds))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        for fd in fds:
            os.close(fd)
        self.children.add(pid)
        channel.send(self.link, Forked(key=message.key, pid=pid))  # type: ignore[attr-defined]

    def _in_child(self, message: Message, fds: list[int]) -> int:
        """Shed the server's descriptors and handlers, then become what was asked."""
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # see _fork
            for fd in (self.wake_read, self.wake_write, self.link.fileno()):
                os.close(fd)
            return self.become(message, fds)
        except BaseException:
            traceback.print_exc()
            return FAILURE
        finally:
            sys.stdout.flush()
            sys.stderr.flush()

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self.wake_read, 512):
                pass

    def _reap(self) -> None:
        """Collect every child that has exited, and report those the manager asked for."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self._exited(pid, os.waitstatus_to_exitcode(status))

    def _exited(self, pid: int, code: int) -> None:
        """Child `pid` has exited with `code`; the manager hears of it unless we are exiting.

        A pid we did not fork is an orphan handed to us (see `corral.posix.become_subreaper`).
        """
        if pid not in self.children:
            return
        self.children.discard(pid)
        if not self.exiting:
            with contextlib.suppress(OSError):
                channel.send(self.link, Exited(pid=pid, code=code))

    def _stop_children(self) -> None:
        """SIGTERM every child, SIGKILL those still there after the stop timeout, then exit."""
        self.exiting = True
        self._signal_children(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(REAP_POLL)
        self._signal_children(signal.SIGKILL)
        self._reap()

    def _signal_children(self, sig: int) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):  # gone, and reaped elsewhere
                os.kill(pid, sig)


def redirect_output(log_fd: int) -> None:
    """Make a child's stdout and stderr the pipe the manager reads (and prefixes)."""
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)


def start(link_fd: int) -> tuple[socket.socket, channel.Decoder, Any, list[int]] | None:
    """A fork server's first steps: read its spec, name itself.

    The spec arrives from the manager on the channel `link_fd`, with the
    descriptors it announces (listening sockets, output pipes). Returns the
    channel, its decoder, the spec and those descriptors; None if the
    manager went away before sending it.
    """
    link = socket.socket(fileno=link_fd)
    decoder = channel.Decoder()
    started: tuple[Message, list[int]] | None = None
    while started is None:
        data, fds, _, _ = socket.recv_fds(link, 1 << 20, channel.MAX_FDS_PER_READ)
        if not data:
            return None
        messages = decoder.feed(data, fds)
        if messages:
            started = messages[0]
    spec, spec_fds = started
    posix.set_title(f"corral: {spec.name}")  # type: ignore[attr-defined]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    return link, decoder, spec, spec_fds
