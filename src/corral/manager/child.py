"""One supervised child process: its lifecycle, and what the manager holds of it.

The lifecycle is one state machine, shaped after supervisor's `states.py`:

    STARTING --> READY ------\\
        |  \\--> RUNNING ----+--> DRAINING --> STOPPED --> BACKOFF --> STOPPED
        |                    |                   ^  \\---> FAILED
        \\--------------------+-------------------/

- STARTING: asked for, booting (a web worker: importing, lifespan startup);
- READY: a web worker serving (lifespan done, accepting);
- RUNNING: a process with no readiness to report (a declared process);
- DRAINING: asked to stop: it finishes what it has and takes nothing new;
- STOPPED: exited;
- BACKOFF: exited, and its name starts again after a delay;
- FAILED: exited, and its name is not started again (its restart policy, or
  an app that cannot start).

Any live state may go straight to STOPPED (a crash). A restart is a new
`Child` under the same name; a name's restarts and last exit outlive each
child in its `History`. A transition not in `TRANSITIONS` raises
`InvalidTransition`: that is a bug in corral, never a user's mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral.ipc import channel
from corral.ipc.messages import Message
from corral.manager.output import Pump

if TYPE_CHECKING:
    from corral.manager.spawn import Spawned


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"
    BACKOFF = "backoff"
    FAILED = "failed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.READY, State.RUNNING, State.DRAINING, State.STOPPED}),
    State.READY: frozenset({State.DRAINING, State.STOPPED}),
    State.RUNNING: frozenset({State.DRAINING, State.STOPPED}),
    State.DRAINING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset({State.BACKOFF, State.FAILED}),
    State.BACKOFF: frozenset({State.STOPPED}),  # the restart was called off (stop, scale down)
    State.FAILED: frozenset(),
}
LIVE = frozenset({State.STARTING, State.READY, State.RUNNING, State.DRAINING})


class InvalidTransition(RuntimeError):
    """A state change the lifecycle does not allow: a bug in corral."""


MessageHandler = Callable[["Child", Message], None]


class Child:
    """One process: its state, its timings, and the channel, output and waiters it owns."""

    def __init__(self, key: int, name: str, generation: int = 0) -> None:
        self.key = key  # unique for the manager's life; two children share a name in a replacement
        self.name = name  # stable: web.2, and web.2 again for its replacement
        self.generation = generation  # which zygote (which version of the code) forked it
        self.pid: int | None = None
        self.state = State.STARTING
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.last_seen = self.started_at
        self.requests = 0
        self.stop_reason: str | None = None  # why corral stops it (timeout, scale, reload, stop...)
        self.kill_at: float | None = None  # when to SIGKILL it if it is still there
        self.replaces: Child | None = None  # the child this one takes over from, once ready
        self.replaced_by: Child | None = None  # the child starting to take over from this one
        self.replace_reason: str | None = None  # why it is being replaced (reload, max-requests...)
        self.pump: Pump | None = None  # its output
        self.process: Spawned | None = None  # a process the launcher started for the manager
        self._link: socket.socket | None = None  # a web worker's channel
        self._decoder = channel.Decoder()
        self._on_message: MessageHandler | None = None
        loop = asyncio.get_running_loop()
        self.became_ready: asyncio.Future[bool] = loop.create_future()
        self.stopped_accepting: asyncio.Future[None] = loop.create_future()

    def __repr__(self) -> str:
        return f"<Child {self.name} key={self.key} pid={self.pid} {self.state.value}>"

    # -- the state machine -------------------------------------------------------------

    def to(self, state: State) -> None:
        """Move to `state`; InvalidTransition if the lifecycle does not allow it from here."""
        if state not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"{self.name}: {self.state.value} -> {state.value}")
        self.state = state
        if state in (State.READY, State.RUNNING):
            self.ready_at = self.last_seen = time.monotonic()
            _settle(self.became_ready, True)
        elif state is State.STOPPED:
            self.close_link()
            _settle(self.became_ready, False)
            _settle(self.stopped_accepting, None)

    def drain(self, reason: str, deadline: float) -> None:
        """Asked to stop for `reason`; SIGKILL is due at `deadline` (time.monotonic())."""
        self.to(State.DRAINING)
        self.stop_reason = reason
        self.kill_at = deadline

    def abort(self, reason: str, deadline: float) -> None:
        """Stuck: it gets SIGABRT now and SIGKILL at `deadline`, and is replaced as a crash."""
        self.stop_reason = reason
        self.kill_at = deadline

    def heartbeat(self, requests: int) -> None:
        self.last_seen = time.monotonic()
        self.requests = requests

    def is_live(self) -> bool:
        return self.state in LIVE

    def serving(self) -> bool:
        """Starting or serving, and not asked to stop."""
        return self.state in (State.STARTING, State.READY, State.RUNNING)

    def uptime(self) -> float:
        return time.monotonic() - (self.ready_at or self.started_at)

    def served_for(self) -> float | None:
        """How long it served before it exited; None if it never became ready."""
        return None if self.ready_at is None else time.monotonic() - self.ready_at

    # -- the channel (web workers) -----------------------------------------------------

    def listen(self, link: socket.socket, on_message: MessageHandler) -> None:
        """Own `link`, the channel to the worker, and hand each message it sends to `on_message`."""
        link.setblocking(False)
        self._link, self._on_message = link, on_message
        asyncio.get_running_loop().add_reader(link.fileno(), self._read)

    def send(self, message: Message) -> bool:
        """Send `message` to the worker; False if the channel is closed or full."""
        if self._link is None:
            return False
        try:
            self._link.send(channel.encode(message))
        except OSError:
            return False
        return True

    def read_last_messages(self) -> None:
        """Handle what an exited worker sent that has not been read yet (its last counts)."""
        while self._link is not None and self._read():
            pass

    def _read(self) -> bool:
        """Read once; True if something was read."""
        assert self._link is not None and self._on_message is not None
        data = channel.receive(self._link)
        if data is None:
            return False
        if not data:
            self.close_link()
            return False
        for message, _ in self._decoder.feed(data):
            self._on_message(self, message)
        return True

    def close_link(self) -> None:
        if self._link is not None:
            asyncio.get_running_loop().remove_reader(self._link.fileno())
            self._link.close()
            self._link = None


def _settle(waiter: asyncio.Future[Any], value: Any) -> None:
    if not waiter.done():
        waiter.set_result(value)


@dataclass
class History:
    """What outlives each process of one name (web.2, worker.1): starts, last exit and cause."""

    starts: int = 0
    last_exit: str | None = None  # "exit code 1", "killed by SIGKILL"
    last_cause: str | None = None  # why it was last restarted: crash, timeout, reload, scale...

    @property
    def restarts(self) -> int:
        return max(self.starts - 1, 0)


def unix_time(monotonic: float) -> float:
    """A time.monotonic() reading as a Unix time (records keep monotonic times)."""
    return time.time() - (time.monotonic() - monotonic)


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
        "last_cause": history.last_cause if history is not None else None,
        "requests": requests,
    }


def child_row(child: Child, group: str, kind: str, history: History | None) -> dict[str, Any]:
    """A child's status row; a child that has exited (backoff, failed) shows no pid."""
    pid = child.pid if child.is_live() else None
    started = unix_time(child.started_at) if child.is_live() else None
    requests = child.requests if kind == "worker" else None
    return status_row(child.name, group, kind, pid, child.state.value, started, history, requests)


def signal_child(child: Child, sig: int) -> None:
    """Send `sig` to `child`'s process, if it has one and it is still there."""
    if child.pid is not None and child.is_live():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)
