"""The web workers' access lines: one pipe from every worker to the manager, forwarded as it comes.

Workers format their access lines themselves, in blocks of whole lines of
at most PIPE_BUF bytes (`corral.child.request_log.BlockWriter`), which a
pipe keeps whole however many workers write to it. The manager reads what
has come, writes it to its own output with one write, prefixes and all,
and keeps it in the log buffer as one block, split into lines only when
someone reads them (`corral logs`, the dashboard). So access lines reach
`corral logs` while the manager does no work per line.

The pipe is enlarged (F_SETPIPE_SZ, up to PIPE_SIZE bytes) so that workers,
whose writes block when it is full, do not wait on a manager busy for a
moment elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os

from corral.manager.output import Output

PIPE_SIZE = 1 << 20  # bytes; Linux allows an unprivileged process up to 1 MiB by default
READ_SIZE = 1 << 18


class AccessLog:
    """The pipe's two ends: `write_fd` for the workers, the other read on the manager's loop."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self._read_fd, self.write_fd = os.pipe()
        if hasattr(fcntl, "F_SETPIPE_SZ"):
            with contextlib.suppress(OSError):  # a smaller pipe only makes workers wait sooner
                fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(self._read_fd, False)
        self._partial = b""
        self._closed = False
        asyncio.get_running_loop().add_reader(self._read_fd, self._read)

    def _read(self) -> bool:
        """Forward what has come; False once nothing more is there (or the pipe has ended)."""
        try:
            data = os.read(self._read_fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        if not data:
            return False
        # A read ends at a line's end unless the pipe held more than READ_SIZE bytes.
        complete, newline, self._partial = (self._partial + data).rpartition(b"\n")
        if newline:
            block = complete + newline
            self.output.write(block)
            self.output.logs.append_block(block, self.output.json)
        return True

    def close(self) -> None:
        """Forward what is left in the pipe, then close it (the workers have exited)."""
        if self._closed:
            return
        self._closed = True
        asyncio.get_running_loop().remove_reader(self._read_fd)
        os.close(self.write_fd)
        while self._read():
            pass
        if self._partial:
            self.output.write(self._partial + b"\n")
            self.output.logs.append_block(self._partial + b"\n", self.output.json)
        os.close(self._read_fd)
