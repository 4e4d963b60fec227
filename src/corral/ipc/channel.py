"""The channel between two of corral's processes: one JSON object per line on a Unix socket.

The messages themselves are declared in `corral.ipc.messages`. File
descriptors travel with a message as SCM_RIGHTS ancillary data; the receiver
queues them in arrival order and each message that announces `"fds": n`
takes the next n.
"""

from __future__ import annotations

import json
import socket
from collections import deque

from corral.ipc import messages
from corral.ipc.messages import Message

MAX_FDS_PER_READ = 16


def encode(message: Message, fds: int = 0) -> bytes:
    """One line on the wire; `fds` is how many descriptors travel with it."""
    wire = messages.encode(message)
    if fds:
        wire["fds"] = fds
    return json.dumps(wire, separators=(",", ":")).encode() + b"\n"


def send(sock: socket.socket, message: Message, fds: list[int] | None = None) -> None:
    """Send `message` on a blocking socket, with `fds` as ancillary data."""
    data = encode(message, len(fds or ()))
    if fds:
        sent = socket.send_fds(sock, [data], fds)
        data = data[sent:]
    if data:
        sock.sendall(data)


class Decoder:
    """Splits a byte stream into messages, pairing each with the descriptors it announced."""

    def __init__(self) -> None:
        self._buffer = b""
        self._fds: deque[int] = deque()

    def feed(self, data: bytes, fds: list[int] | None = None) -> list[tuple[Message, list[int]]]:
        self._fds.extend(fds or ())
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        decoded = []
        for line in lines:
            wire = json.loads(line)
            wanted = wire.get("fds", 0)
            fds = [self._fds.popleft() for _ in range(wanted)]
            decoded.append((messages.decode(wire), fds))
        return decoded


def receive(sock: socket.socket, size: int = 65536) -> bytes | None:
    """What a non-blocking socket has: None if nothing yet, b"" once the peer has gone."""
    try:
        return sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""
