"""Work the manager starts and does not await at once."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Background:
    """Tasks kept referenced until they finish: asyncio itself holds them only weakly."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait(self, timeout: float | None = None) -> None:
        """Wait for every task started so far (at most `timeout` seconds)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
