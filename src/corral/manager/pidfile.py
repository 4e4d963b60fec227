"""The pid file: the manager's pid, written before any child starts, removed at exit."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from corral.errors import UsageError


@contextlib.contextmanager
def pidfile(path: Path | None, previous: Callable[[], int | None]) -> Iterator[None]:
    """Hold the manager's pid in `path` (if given) while the block runs.

    Written by the manager, which keeps the identity it started with, so a
    folder only root can write is fine even when the children run as
    --user; the settings checked its folder is there (`corral.settings.here`).
    UsageError if it cannot be written all the same. At the end the file is
    removed if it still holds our pid (a successor's, after an upgrade,
    stays), or given back the pid `previous()` names (a manager we were to
    replace, which goes on serving because we failed).
    """
    if path is None:
        yield
        return
    try:
        path.write_text(f"{os.getpid()}\n")
    except OSError as error:
        raise UsageError(f"the pid file {path}: cannot write it: {error.strerror}") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_text().strip() == str(os.getpid()):  # not a successor's (USR2)
                back = previous()
                if back is None:
                    path.unlink()
                else:
                    path.write_text(f"{back}\n")
