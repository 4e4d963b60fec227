"""How the manager tells a child's end: "exit code 1", "killed by SIGKILL", and an OOM kill
when it can tell one.

A process the kernel's OOM killer ends dies of SIGKILL, as one killed by
hand does: its exit status cannot tell them apart. Its memory cgroup counts
OOM kills though: `oom_kill` in `memory.events` with cgroup v2 (the
processes in it and below it), in `memory.oom_control` with v1 (in it
only), and corral's children are in the manager's cgroup unless something
moved them. So a SIGKILL
death within OOM_WINDOW seconds of a rise of that count reads "killed by
SIGKILL (out of memory?)": the count says that a process of the cgroup was
killed for memory, not which one, hence the question mark. Where there is
no count (no memory controller, not Linux), nothing is guessed.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

from corral import posix

OOM_WINDOW = 2.0  # seconds between the count's rise and the death it explains
CGROUP_ROOT = Path("/sys/fs/cgroup")


def oom_counter(cgroups: str, root: Path = CGROUP_ROOT) -> Path | None:
    """The file counting OOM kills in the cgroup that `cgroups` (/proc/self/cgroup) names."""
    candidates = []
    for line in cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if "memory" in controllers.split(","):  # cgroup v1's memory hierarchy
            candidates.append(root / "memory" / relative / "memory.oom_control")
        elif not controllers:  # the v2 hierarchy, mounted alone or beside v1's (hybrid)
            candidates.append(root / relative / "memory.events")
            candidates.append(root / "unified" / relative / "memory.events")
    return next((path for path in candidates if path.is_file()), None)


class OomKills:
    """Watches the OOM kill count of one cgroup (`counter` from `oom_counter`)."""

    def __init__(self, counter: Path | None) -> None:
        self.counter = counter
        self._count = self._read()
        self._rose_at: float | None = None

    def _read(self) -> int | None:
        if self.counter is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            for line in self.counter.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return None

    def just_happened(self) -> bool:
        """Whether the count rose within the last OOM_WINDOW seconds (checked now)."""
        count = self._read()
        if count is not None and self._count is not None and count > self._count:
            self._rose_at = time.monotonic()
        if count is not None:
            self._count = count
        return self._rose_at is not None and time.monotonic() - self._rose_at <= OOM_WINDOW


_oom = OomKills(None)


def watch_oom_kills() -> None:
    """Start counting the OOM kills of this process's cgroup (the manager, before any child)."""
    global _oom
    try:
        cgroups = Path("/proc/self/cgroup").read_text()
    except OSError:
        return
    _oom = OomKills(oom_counter(cgroups))


def describe_exit(code: int) -> str:
    """`corral.posix.describe_exit`'s words, with "(out of memory?)" after an OOM kill."""
    words = posix.describe_exit(code)
    if code == -signal.SIGKILL and _oom.just_happened():
        words += " (out of memory?)"
    return words
