"""corral's output: every process's lines, prefixed with its name, on stdout or in --log-file.

`web.2 | message`, colored by process on a terminal, plain otherwise; with
`--log-format json`, one JSON object per record instead (time, process, pid,
level, message). The manager's own lines carry `corral`. Every line also
goes to the log buffer that `corral logs` reads.

A child's output is read as records (`corral.manager.records`): a traceback
and the line that introduces it are one record, written at once (two
processes' tracebacks never interleave) and, under JSON, one object with the
level of its first line. The last record waits HOLD seconds for lines that
may continue it. A child's pipe is read to its end before it is closed, so
the last lines of a process that was stopped or killed are shown.

The web workers format their access lines themselves and write them, in
blocks of whole lines, into a pipe of their own (`access_pipe`); the manager
copies those blocks as they are to `--access-logfile`, or with everything
else. The destinations (`corral.manager.log_file`) never make the manager
wait, and are reopened on SIGUSR1.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable

from corral.errors import UsageError
from corral.logformat import json_line, prefix_for
from corral.manager.log_file import LogFile
from corral.manager.logbuffer import LogBuffer
from corral.manager.records import Records

Tee = Callable[[list[str]], None]  # also takes each record's lines

READ_SIZE = 65536
HOLD = 0.05  # seconds the last record waits for a line that continues it
MAX_HOLD = 0.5  # seconds a record that keeps going on is held at most
ACCESS_PIPE_SIZE = 1 << 20  # bytes: room for the workers' bursts of access lines (Linux)


class Output:
    """The manager's own lines, and the pumps that copy each child's pipe, to the destinations.

    Everything goes to stdout until `open_files` names files.
    """

    def __init__(self, json_format: bool = False) -> None:
        self.json = json_format
        self.file = self.access_file = LogFile(None)
        self.color = self.access_color = False
        self._destinations_changed()
        self.logs = LogBuffer()
        self._pumps: dict[int, _PipeReader] = {}

    def open_files(self, log_file: str | None, access_log_file: str | None) -> None:
        """Write everything to `log_file`, the access lines to `access_log_file` from now on.

        None or "-" is stdout; an `access_log_file` of None means with the
        rest. UsageError, naming the file, if one cannot be opened.
        """
        try:
            self.file = LogFile(log_file)
            self.access_file = self.file if access_log_file is None else LogFile(access_log_file)
        except OSError as error:
            raise UsageError(
                f"log file {error.filename}: cannot open it for appending: {error.strerror}"
            ) from None
        self._destinations_changed()

    def _destinations_changed(self) -> None:
        self.color = self.file.isatty() and not self.json
        self.access_color = self.access_file.isatty() and not self.json
        for destination, color in ((self.file, self.color), (self.access_file, self.access_color)):
            destination.note = lambda text, color=color: self.render("corral", None, [text], color)

    def start(self) -> None:
        """Write from the destinations' own threads from now on (once the event loop runs)."""
        self.file.start()
        self.access_file.start()

    def say(self, message: str, name: str = "corral") -> None:
        """One of the manager's own records (a message of several lines is one record)."""
        lines = message.split("\n")
        for line in lines:
            self.logs.append(name, line)
        self.file.write(self.render(name, os.getpid(), lines, self.color))

    def render(self, name: str, pid: int | None, lines: list[str], color: bool) -> bytes:
        """One record as it is written: prefixed lines, or one JSON object."""
        if self.json:
            return json_line(name, pid, "\n".join(lines)).encode() + b"\n"
        prefix = prefix_for(name, color)
        return "".join(f"{prefix}{line}\n" for line in lines).encode()

    def reopen(self) -> None:
        """SIGUSR1: open the log files again by their names (logrotate has renamed them)."""
        files = [self.file] if self.access_file is self.file else [self.file, self.access_file]
        for destination in files:
            destination.reopen()
        named = [str(f.path) for f in files if f.path is not None]
        reopened = ", ".join(named) if named else "none: the output is stdout"
        self.say(f"SIGUSR1: log files reopened ({reopened})")

    def attach(self, fd: int, name: str, tee: Tee | None = None) -> Pump:
        """Copy everything written to pipe `fd` to the output, each record marked as `name`'s,
        and hand the lines to `tee` too (a job run's record keeps its output).

        The caller sets the returned pump's `pid` once it knows it.
        """
        pump = Pump(self, fd, name, tee)
        self._watch(pump)
        return pump

    def access_pipe(self) -> int:
        """A pipe for the web workers' access lines; returns its end to write to.

        The caller hands it to the workers and closes its own copy when done.
        """
        read_end, write_end = os.pipe()
        if hasattr(fcntl, "F_SETPIPE_SZ"):
            with contextlib.suppress(OSError):  # over the user's limit: the default size works
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, ACCESS_PIPE_SIZE)
        self._watch(_AccessPump(self, read_end))
        return write_end

    def _watch(self, pump: _PipeReader) -> None:
        os.set_blocking(pump.fd, False)
        self._pumps[pump.fd] = pump
        asyncio.get_running_loop().add_reader(pump.fd, pump.read)

    def detach(self, fd: int) -> None:
        pump = self._pumps.pop(fd, None)
        if pump is not None:
            pump.close()

    def close(self) -> None:
        for fd in list(self._pumps):
            self.detach(fd)

    async def drain(self, timeout: float) -> None:
        """Copy what the children wrote until every pipe ends (at most `timeout` seconds: a
        grandchild may hold one open), then close: for a command that exits after its child."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._pumps and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        self.close()


class _PipeReader:
    """A pipe read without ever blocking: its complete lines go on, a partial line waits."""

    def __init__(self, output: Output, fd: int) -> None:
        self.output = output
        self.fd = fd
        self.partial = b""

    def read(self) -> bool:
        """Take one read's complete lines; False once there is nothing more for now (or ever)."""
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            self.output.detach(self.fd)
            return False
        complete, newline, self.partial = (self.partial + data).rpartition(b"\n")
        if newline:
            self._lines(complete)
        return True

    def read_available(self) -> None:
        """Take everything written so far (a process that has exited: its last lines)."""
        while self.output._pumps.get(self.fd) is self and self.read():
            pass

    def close(self) -> None:
        """Take what is left in the pipe and a last unterminated line, then close the pipe."""
        asyncio.get_running_loop().remove_reader(self.fd)
        with contextlib.suppress(OSError):
            while data := os.read(self.fd, READ_SIZE):
                self.partial += data
                complete, newline, self.partial = self.partial.rpartition(b"\n")
                if newline:
                    self._lines(complete)
        if self.partial:
            self._lines(self.partial)
            self.partial = b""
        self._end()
        os.close(self.fd)

    def _lines(self, lines: bytes) -> None:
        """Complete lines, joined by newlines, without the last newline."""
        raise NotImplementedError

    def _end(self) -> None:
        """The pipe has ended."""


class Pump(_PipeReader):
    """One child's pipe, copied out record by record, each line marked with the child's name."""

    def __init__(self, output: Output, fd: int, name: str, tee: Tee | None = None) -> None:
        super().__init__(output, fd)
        self.name = name
        self.tee = tee
        self.pid: int | None = None
        self.prefix = prefix_for(name, output.color).encode()
        self.records = Records()
        self._held_since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def _lines(self, lines: bytes) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held_before = bool(self.records.held)
        done = self.records.feed(lines.split(b"\n"))
        now = time.monotonic()
        if done or not held_before:
            self._held_since = now
        if self.records.held and now - self._held_since >= MAX_HOLD:
            done.append(self.records.release())
        if done:
            self._emit(done)
        if self.records.held:
            self._timer = asyncio.get_running_loop().call_later(HOLD, self._release)

    def read_available(self) -> None:
        """Take everything written so far, and let the last record go: its writer has exited."""
        super().read_available()
        self._end()

    def _release(self) -> None:
        self._timer = None
        held = self.records.release()
        if held:
            self._emit([held])

    def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._release()

    def _emit(self, records: list[list[bytes]]) -> None:
        """Write `records` at once, and give their lines to the log buffer."""
        texts = [[line.decode("utf-8", "replace") for line in record] for record in records]
        for text in texts:
            for line in text:
                self.output.logs.append(self.name, line)
            if self.tee is not None:
                self.tee(text)
        if self.output.json:
            data = "".join(json_line(self.name, self.pid, "\n".join(t)) + "\n" for t in texts)
            self.output.file.write(data.encode())
        else:
            prefix = self.prefix
            self.output.file.write(b"".join(prefix + line + b"\n" for r in records for line in r))


class _AccessPump(_PipeReader):
    """The workers' access lines: formatted already, copied whole lines at a time, and kept
    as they came in the log buffer (split into lines only when read: `corral logs`)."""

    def _lines(self, lines: bytes) -> None:
        block = lines + b"\n"
        self.output.access_file.write(block)
        self.output.logs.append_block(block, self.output.json)
