"""uvicorn's words at the end of a graceful stop, said as what they are: not errors.

At `--graceful-timeout`, uvicorn cancels the requests (and WebSocket
sessions) still running: it logs the cancellation as an ERROR, then, for
each one, `Exception in ASGI application` with the CancelledError's
traceback. That is the stop doing what it was asked; each request has its
access line. So, once the worker is stopping, the cancellation is a warning
and the cancelled requests' tracebacks are not shown. An app's own error
keeps its traceback, stopping or not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from corral.words import counted

CANCELLING = "Cancel %s running task(s), timeout graceful shutdown exceeded"  # uvicorn's


class PlannedStop(logging.Filter):
    """A filter for uvicorn's error logger; `stopping()` says whether the worker is stopping."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        super().__init__()
        self.stopping = stopping

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.stopping():
            return True
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, asyncio.CancelledError):
            return False
        if record.msg == CANCELLING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            if isinstance(record.args, tuple) and len(record.args) == 1:  # uvicorn's: the tasks
                record.msg = "%s still running at --graceful-timeout: cancelled"
                record.args = (counted(int(record.args[0]), "request"),)
        return True
