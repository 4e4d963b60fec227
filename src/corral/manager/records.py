"""A process's output lines, grouped into records: a line and the lines that continue it.

What continues a line: a Python traceback (its `Traceback (most recent call
last):`, its indented frames, the exception's own line, `During handling of
the above exception...` between chained exceptions; frames and the exception's line
without the header, as a SyntaxError is shown), faulthandler's stack
dump (`... (most recent call first):` and its frames), any indented line
and any blank line. So the logging record `ERROR: Exception in ASGI application`
and the traceback under it are one record, with that record's level.

Lines are bytes, without their newline.
"""

from __future__ import annotations

import enum

MAX_LINES = 1000  # a record this long is let go as it is; what follows starts a new one
MAX_BYTES = 1 << 16

_TRACEBACK = b"(most recent call last):"  # frames, then the exception's line
_DUMP = b"(most recent call first):"  # faulthandler's: frames alone
_HEADERS = (_TRACEBACK, _DUMP)
_FRAME = b'  File "'  # a frame's first line: its source line, a caret may follow
_CHAINS = (
    b"During handling of the above exception, another exception occurred:",
    b"The above exception was the direct cause of the following exception:",
)


class _In(enum.Enum):
    LINES = "lines"  # plain lines
    FRAMES = "frames"  # a traceback's frames: its exception's line comes next
    AFTER = "after"  # a traceback ended: a chained one may follow
    DUMP = "dump"  # a stack dump's frames: nothing comes after them


class Records:
    """Groups one process's lines; holds the last record, which may still go on."""

    def __init__(self) -> None:
        self.held: list[bytes] = []
        self._size = 0
        self._in = _In.LINES

    def feed(self, lines: list[bytes]) -> list[list[bytes]]:
        """Take the next complete lines; return the records they complete, in order."""
        done: list[list[bytes]] = []
        for line in lines:
            if not (self.held and self._continues(line)):
                if self.held:
                    done.append(self.held)
                self.held, self._size, self._in = [], 0, _after(line)
            self.held.append(line)
            self._size += len(line)
            if len(self.held) >= MAX_LINES or self._size >= MAX_BYTES:
                done.append(self.release())
        return done

    def release(self) -> list[bytes]:
        """The held record, as it is (nothing came to continue it in time); [] if none."""
        held, self.held, self._size, self._in = self.held, [], 0, _In.LINES
        return held

    def _continues(self, line: bytes) -> bool:
        """Whether `line` belongs to the held record; moves the traceback's state along."""
        if line[:1] in (b" ", b"\t"):
            if line.startswith(_FRAME) and self._in is _In.LINES:
                self._in = _In.FRAMES  # frames without a header: the exception's line follows
            return True
        if line.rstrip().endswith(_HEADERS):
            self._in = _after(line)
            return True
        if not line:
            return True
        if self._in is _In.FRAMES:  # the exception's line ends the traceback
            self._in = _In.AFTER
            return True
        return self._in is _In.AFTER and line in _CHAINS


def _after(line: bytes) -> _In:
    """Where a record stands after `line`: in a traceback's frames after its header, or
    after a frame's line with none (a SyntaxError as `format_exception_only` shows it)."""
    if line.rstrip().endswith(_DUMP):
        return _In.DUMP
    framed = line.rstrip().endswith(_TRACEBACK) or line.startswith(_FRAME)
    return _In.FRAMES if framed else _In.LINES
