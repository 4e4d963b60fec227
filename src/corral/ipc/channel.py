"""Messages between corral's processes: one JSON object per line on a Unix stream socket.

File descriptors travel with a message as SCM_RIGHTS ancillary data; the
receiver queues them in arrival order and each message that announces
`"fds": n` takes the next n.
"""

from __future__ import annotations

import json
import socket
from collections import deque
from typing import Any

Message = dict[str, Any]
MAX_FDS_PER_READ = 16


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def send(sock: socket.socket, message: Message, fds: list[int] | None = None) -> None:
    data = encode(message)
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
            message = json.loads(line)
            wanted = message.get("fds", 0)
            decoded.append((message, [self._fds.popleft() for _ in range(wanted)]))
        return decoded


def receive(sock: socket.socket, size: int = 65536) -> bytes | None:
    """What a non-blocking socket has: None if nothing yet, b"" once the peer has gone."""
    try:
        return sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""
