"""A supervised child's record: its states and the transitions between them, in one place."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any


class State(enum.Enum):
    STARTING = "starting"  # asked for, booting: not yet serving
    READY = "ready"  # serving (a web worker: lifespan done, accepting)
    DRAINING = "draining"  # asked to stop: finishing what it has, taking nothing new
    STOPPED = "stopped"  # exited


@dataclass
class Child:
    key: int  # unique for the manager's life; two children share a name during a replacement
    name: str  # stable: web.2, and web.2 again for its replacement
    generation: int = 0  # which zygote (which version of the code) forked it
    pid: int | None = None
    state: State = State.STARTING
    started_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    last_seen: float = field(default_factory=time.monotonic)
    requests: int = 0
    stop_reason: str | None = None  # why corral is stopping it (timeout, scale, reload, stop...)
    kill_at: float | None = None  # when to SIGKILL it if it is still there
    replaces: int | None = None  # the key of the child this one takes over from, once ready
    replaced_by: int | None = None  # the key of the child starting to take over from this one
    replace_reason: str | None = None  # why it is being replaced (reload, max-requests...)

    def ready(self) -> None:
        self.state = State.READY
        self.ready_at = self.last_seen = time.monotonic()

    def heartbeat(self, requests: int) -> None:
        self.last_seen = time.monotonic()
        self.requests = requests

    def drain(self, reason: str, deadline: float) -> None:
        self.state = State.DRAINING
        self.stop_reason = reason
        self.kill_at = deadline

    def abort(self, reason: str, deadline: float) -> None:
        """Stuck: it gets SIGABRT now and SIGKILL at `deadline`, and is replaced as a crash."""
        self.stop_reason = reason
        self.kill_at = deadline

    def stopped(self) -> None:
        self.state = State.STOPPED

    def serving(self) -> bool:
        return self.state in (State.STARTING, State.READY)

    def uptime(self) -> float:
        return time.monotonic() - (self.ready_at or self.started_at)


def unix_time(monotonic: float) -> float:
    """A time.monotonic() reading as a Unix time (records keep monotonic times)."""
    return time.time() - (time.monotonic() - monotonic)


@dataclass
class History:
    """What outlives each process of one name (web.2, worker.1): its starts and last exit."""

    starts: int = 0
    last_exit: str | None = None

    @property
    def restarts(self) -> int:
        return max(self.starts - 1, 0)


def status_row(
    name: str,
    group: str,
    kind: str,
    pid: int | None,
    state: str,
    started: float | None,
    history: History | None = None,
    requests: int | None = None,
) -> dict[str, Any]:
    """One process as `corral status` shows it (`started` as a Unix time)."""
    return {
        "name": name,
        "group": group,
        "kind": kind,
        "pid": pid,
        "state": state,
        "started": started,
        "restarts": history.restarts if history is not None else 0,
        "last_exit": history.last_exit if history is not None else None,
        "requests": requests,
    }
