"""The last lines of every process's output, kept in memory for `corral logs` and its followers.

Everything here runs on the manager's event loop thread: `append` is called
for each line the manager prints, so it does constant work per follower and
never waits.

The web workers' access lines come in blocks (`corral.manager.output.Output.access_pipe`),
up to thousands a second: a block is kept whole, as it was written, and is
split into lines only when someone reads it (`recent`, or a follower), so
that keeping them costs the manager next to nothing per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterator
from heapq import merge
from itertools import islice
from typing import NamedTuple

from corral.logformat import read_lines
from corral.words import counted


class Entry(NamedTuple):
    time: float  # Unix epoch seconds
    process: str  # "web.2", "worker.1", "corral" for the manager itself
    line: str


def matches(selector: str | None, process: str) -> bool:
    """A group selects its processes (`web`: web.1, web.zygote), a process only itself, None all."""
    return selector is None or selector in (process, process.partition(".")[0])


class Subscription:
    """One follower's new entries, handed over in batches.

    Bounded: a follower that falls `limit` entries behind (a slow client on
    a slow link) gets nothing more until it catches up, so it cannot make
    the manager's memory grow. The batch it then reads ends with one entry
    saying how many lines it missed there.
    """

    def __init__(self, selector: str | None, limit: int) -> None:
        self.selector = selector
        self._limit = limit
        self._pending: list[Entry] = []
        self._dropped = 0
        self._wakeup = asyncio.Event()
        self._closed = False

    def offer(self, entry: Entry) -> None:
        if self._closed or not matches(self.selector, entry.process):
            return
        if len(self._pending) < self._limit:
            self._pending.append(entry)
        else:
            self._dropped += 1
        self._wakeup.set()

    def offer_all(self, entries: list[Entry]) -> None:
        for entry in entries:
            self.offer(entry)

    def close(self) -> None:
        """End the iteration, at once, even if a batch is waiting."""
        self._closed = True
        self._wakeup.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> list[Entry]:
        # Entries are only dropped while the batch is full, so a non-empty batch covers that case.
        while not self._pending and not self._closed:
            self._wakeup.clear()
            await self._wakeup.wait()
        if self._closed:
            raise StopAsyncIteration
        batch, self._pending = self._pending, []
        if self._dropped:
            missed = f"[{counted(self._dropped, 'line')} not shown here: this follower fell behind]"
            batch.append(Entry(time.time(), "corral", missed))
            self._dropped = 0
        return batch


class Block(NamedTuple):
    """Access lines as a worker wrote them (`prefix_for` or JSON lines), and when they came."""

    time: float  # Unix epoch seconds: every line of the block gets it
    data: bytes
    json: bool

    def entries(self) -> list[Entry]:
        lines = read_lines(self.data, self.json)
        return [Entry(self.time, process, line) for process, line in lines]


class LogBuffer:
    """The last `capacity` lines of all processes, the last `block_bytes` bytes of access
    lines, and the followers waiting for new ones."""

    def __init__(
        self, capacity: int = 10000, follower_limit: int = 1000, block_bytes: int = 4 << 20
    ) -> None:
        self._entries: deque[Entry] = deque(maxlen=capacity)
        self._blocks: deque[Block] = deque()
        self._block_bytes = 0
        self._block_limit = block_bytes
        self._follower_limit = follower_limit
        self._followers: set[Subscription] = set()
        self.names: set[str] = set()  # every process that printed a line (access lines aside)

    def append(self, process: str, line: str) -> None:
        self.names.add(process)
        entry = Entry(time.time(), process, line)
        self._entries.append(entry)
        for follower in self._followers:
            follower.offer(entry)

    def append_block(self, data: bytes, json_format: bool) -> None:
        """Keep whole lines of access log (`data` ends with a newline), oldest dropped first."""
        block = Block(time.time(), data, json_format)
        self._blocks.append(block)
        self._block_bytes += len(data)
        while self._block_bytes > self._block_limit:
            self._block_bytes -= len(self._blocks.popleft().data)
        if self._followers:
            entries = block.entries()
            for follower in self._followers:
                follower.offer_all(entries)

    def recent(self, selector: str | None, count: int) -> list[Entry]:
        """The last `count` entries `selector` matches, oldest first."""
        count = max(count, 0)
        lines = (e for e in reversed(self._entries) if matches(selector, e.process))
        accesses = (
            entry
            for block in reversed(self._blocks)
            for entry in reversed(block.entries())
            if matches(selector, entry.process)
        )
        newest_first = merge(
            islice(lines, count), islice(accesses, count), key=lambda e: e.time, reverse=True
        )
        found = list(islice(newest_first, count))
        found.reverse()
        return found

    @contextlib.contextmanager
    def follow(self, selector: str | None) -> Iterator[Subscription]:
        """Entries appended from now on that `selector` matches, until the block ends."""
        subscription = Subscription(selector, self._follower_limit)
        self._followers.add(subscription)
        try:
            yield subscription
        finally:
            self._followers.discard(subscription)
            subscription.close()
