"""corral's output: every process's lines on the manager's stdout, prefixed with its name.

`web.2 | message`, colored by process on a terminal, plain otherwise. The
manager's own lines carry `corral |`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import zlib

_COLORS = (36, 33, 32, 35, 34, 96, 93, 92, 95, 94)
_NAME_WIDTH = 10
_READ_SIZE = 65536


def prefix_for(name: str, color: bool) -> str:
    text = f"{name:<{_NAME_WIDTH}} |"
    if not color:
        return text + " "
    code = _COLORS[zlib.crc32(name.split(".")[0].encode()) % len(_COLORS)]
    return f"\x1b[{code}m{text}\x1b[0m "


class Output:
    """Writes the manager's lines and pumps each child's pipe to the manager's stdout."""

    def __init__(self, stream: int | None = None) -> None:
        self.fd = sys.stdout.fileno() if stream is None else stream
        self.color = os.isatty(self.fd)
        self._pumps: dict[int, _Pump] = {}

    def say(self, message: str, name: str = "corral") -> None:
        """One of the manager's own lines."""
        self.write(prefix_for(name, self.color).encode() + message.encode() + b"\n")

    def write(self, data: bytes) -> None:
        while data:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                continue
            data = data[written:]

    def attach(self, fd: int, name: str) -> None:
        """Copy everything written to pipe `fd` to the output, each line prefixed with `name`."""
        os.set_blocking(fd, False)
        pump = _Pump(self, fd, prefix_for(name, self.color).encode())
        self._pumps[fd] = pump
        asyncio.get_running_loop().add_reader(fd, pump.read)

    def detach(self, fd: int) -> None:
        pump = self._pumps.pop(fd, None)
        if pump is not None:
            pump.close()

    def close(self) -> None:
        for fd in list(self._pumps):
            self.detach(fd)


class _Pump:
    def __init__(self, output: Output, fd: int, prefix: bytes) -> None:
        self.output = output
        self.fd = fd
        self.prefix = prefix
        self.partial = b""

    def read(self) -> None:
        try:
            data = os.read(self.fd, _READ_SIZE)
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
            self.output.write(self._prefixed(complete))

    def _prefixed(self, lines: bytes) -> bytes:
        return self.prefix + lines.replace(b"\n", b"\n" + self.prefix) + b"\n"

    def close(self) -> None:
        """Flush a last unterminated line, stop watching, close the pipe."""
        asyncio.get_running_loop().remove_reader(self.fd)
        if self.partial:
            self.output.write(self._prefixed(self.partial))
            self.partial = b""
        os.close(self.fd)
