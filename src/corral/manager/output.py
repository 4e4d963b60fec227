"""corral's output: every process's lines on the manager's stdout, prefixed with its name.

`web.2 | message`, colored by process on a terminal, plain otherwise; with
`--log-format json`, one JSON object per line instead (time, process, pid,
level, message). The manager's own lines carry `corral`. Every line also
goes to the log buffer that `corral logs` reads.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

from corral.logformat import json_line, prefix_for
from corral.manager.logbuffer import LogBuffer

READ_SIZE = 65536

Tee = Callable[[list[str]], None]
"""Takes a child's lines as they come, besides the output (without their line ends)."""


class Output:
    """Writes the manager's lines and pumps each child's pipe to the manager's stdout."""

    def __init__(self, stream: int | None = None, json_format: bool = False) -> None:
        self.fd = sys.stdout.fileno() if stream is None else stream
        self.json = json_format
        self.color = os.isatty(self.fd) and not json_format
        self.logs = LogBuffer()
        self._pumps: dict[int, Pump] = {}

    def say(self, message: str, name: str = "corral") -> None:
        """One of the manager's own lines."""
        self.logs.append(name, message)
        if self.json:
            self.write(json_line(name, os.getpid(), message).encode() + b"\n")
        else:
            self.write(prefix_for(name, self.color).encode() + message.encode() + b"\n")

    def write(self, data: bytes) -> None:
        while data:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                continue
            data = data[written:]

    def attach(self, fd: int, name: str, tee: Tee | None = None) -> Pump:
        """Copy everything written to pipe `fd` to the output, each line marked as `name`'s,
        and hand the lines to `tee` too (a job run's record keeps its output).

        The caller sets the returned pump's `pid` once it knows it.
        """
        os.set_blocking(fd, False)
        pump = Pump(self, fd, name, tee)
        self._pumps[fd] = pump
        asyncio.get_running_loop().add_reader(fd, pump.read)
        return pump

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


class Pump:
    """One child's pipe: complete lines go out at once, a partial line waits for its end."""

    def __init__(self, output: Output, fd: int, name: str, tee: Tee | None = None) -> None:
        self.output = output
        self.fd = fd
        self.name = name
        self.tee = tee
        self.pid: int | None = None
        self.prefix = prefix_for(name, output.color).encode()
        self.partial = b""

    def read(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.output.detach(self.fd)
            return
        lines = self.partial + data
        complete, newline, self.partial = lines.rpartition(b"\n")
        if newline:
            self._emit(complete)

    def _emit(self, lines: bytes) -> None:
        text = lines.decode("utf-8", "replace").split("\n")
        for line in text:
            self.output.logs.append(self.name, line)
        if self.tee is not None:
            self.tee(text)
        if self.output.json:
            records = (json_line(self.name, self.pid, line) for line in text)
            self.output.write("\n".join(records).encode() + b"\n")
        else:
            self.output.write(self.prefix + lines.replace(b"\n", b"\n" + self.prefix) + b"\n")

    def close(self) -> None:
        """Flush a last unterminated line, stop watching, close the pipe."""
        asyncio.get_running_loop().remove_reader(self.fd)
        if self.partial:
            self._emit(self.partial)
            self.partial = b""
        os.close(self.fd)
