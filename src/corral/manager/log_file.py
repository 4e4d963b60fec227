"""Where corral writes its output: stdout, or a file an operator rotates (`--log-file`).

Written by a thread of its own, from a queue: the manager's event loop never
waits on its output. A reader that stops reading (`corral run | less`, left
on a page) fills the pipe; the thread then waits, the queue grows up to
QUEUE_LIMIT bytes, and the lines beyond are dropped and counted, with a line
saying so once the output moves again. A reader that goes away (`corral run
| head`: EPIPE) costs the lines, never corral's life or its stop. A line is
never split: each write is whole lines, and a reopen (SIGUSR1, after
logrotate renamed the file) happens between two writes.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import select
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from corral.words import counted

QUEUE_LIMIT = 4 << 20  # bytes waiting for a slow output before lines are dropped
EXIT_FLUSH = 2.0  # seconds the manager's exit waits for its last lines to be written
GONE = (errno.EPIPE, errno.EBADF, errno.ECONNRESET)  # the output will take nothing more


class _Reopen:
    """A reopen, queued between two writes."""


class LogFile:
    """One destination of corral's lines: a file opened for appending, or stdout.

    `path` None or "-" is stdout. OSError if the file cannot be opened.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path in (None, "-") else Path(path)
        # Formats one of corral's own lines (dropped lines, a failed reopen) for this output.
        self.note: Callable[[str], bytes] = lambda text: f"corral | {text}\n".encode()
        self.fd = sys.stdout.fileno() if self.path is None else self._open()
        self.gone: str | None = None  # why the output takes no more lines (EPIPE...)
        self._queue: deque[bytes | _Reopen] = deque()
        self._queued = 0  # bytes
        self._dropped = 0  # lines
        self._changed = threading.Condition()
        self._writing = False  # the thread holds an item it has not finished writing
        self._thread: threading.Thread | None = None

    def _open(self) -> int:
        assert self.path is not None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self.path, flags, 0o644)

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def start(self) -> None:
        """From now on, write from a thread (before, each write is done at once, in the caller).

        Call it once the manager has forked what it forks before its loop:
        the launcher is forked from a process with a single thread.
        """
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="corral-output", daemon=True)
            self._thread.start()
            atexit.register(self.flush, EXIT_FLUSH)

    def write(self, data: bytes) -> None:
        """Queue whole lines for writing; never waits (lines past QUEUE_LIMIT are dropped)."""
        if self._thread is None:
            self._write(data)
            return
        with self._changed:
            if self._queued + len(data) > QUEUE_LIMIT:
                self._dropped += data.count(b"\n")
                return
            self._queue.append(data)
            self._queued += len(data)
            self._changed.notify_all()

    def reopen(self) -> None:
        """Open the file again by its name (logrotate has renamed it); stdout stays as it is."""
        if self.path is None:
            return
        if self._thread is None:
            self._reopen()
            return
        with self._changed:
            self._queue.append(_Reopen())
            self._changed.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for everything queued to be written; False if not."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._queue and not self._writing, timeout=timeout
            )

    # -- the writing thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._queue))
                item = self._queue.popleft()
                self._writing = True
                if isinstance(item, bytes):
                    self._queued -= len(item)
                dropped, self._dropped = self._dropped, 0
            if dropped:
                self._write(
                    self.note(f"[{counted(dropped, 'line')} dropped here: the output was not read]")
                )
            if isinstance(item, _Reopen):
                self._reopen()
            else:
                self._write(item)
            with self._changed:
                self._writing = False
                self._changed.notify_all()

    def _write(self, data: bytes) -> None:
        """Write all of `data`, waiting for the output as long as it takes; drop it if it fails."""
        view = memoryview(data)
        while view and self.gone is None:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:  # someone made our output non-blocking: wait for room
                select.select([], [self.fd], [])
            except InterruptedError:
                continue
            except OSError as error:
                if error.errno in GONE:
                    self.gone = error.strerror or str(error)
                else:  # a full disk, an I/O error: these lines are lost, and counted
                    with self._changed:
                        self._dropped += view.tobytes().count(b"\n")
                return

    def _reopen(self) -> None:
        try:
            fd = self._open()
        except OSError as error:
            self._write(self.note(f"cannot reopen {self.path}: {error.strerror}; writing on"))
            return
        old, self.fd = self.fd, fd
        with contextlib.suppress(OSError):
            os.close(old)
        self.gone = None
