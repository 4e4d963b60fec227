"""Every message between corral's processes, declared once and grouped by direction.

Each message is a frozen dataclass with a `tag`; on the wire it is a JSON
object whose `"t"` is the tag and whose other keys are the fields (see
`corral.ipc.channel`). Descriptors travel beside a message, never in it.

    manager  -> launcher   LaunchZygote, Spawn
    launcher -> manager    Forked, SpawnFailed, Exited
    manager  -> zygote     WebZygoteSpec or JobsZygoteSpec (first), ForkWorker, ForkRun, Exit
    zygote   -> manager    Loaded, LoadFailed, Forked, Exited
    manager  -> worker     TakeBacklogThenStop
    worker   -> manager    Ready, Heartbeat, Draining, Recycle

A receiver that gets a message of another direction treats it as a bug:
`decode` raises ValueError for an unknown tag.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

Wire = dict[str, Any]


@dataclass(frozen=True)
class Message:
    """Base of every message; `tag` names its kind on the wire."""

    tag: ClassVar[str]


_KINDS: dict[str, type[Message]] = {}


def _message(cls: type[Message]) -> type[Message]:
    """Register `cls` so that `decode` knows its tag."""
    assert cls.tag not in _KINDS, f"two messages tagged {cls.tag!r}"
    _KINDS[cls.tag] = cls
    return cls


def encode(message: Message) -> Wire:
    """The JSON-able form of `message`: its fields and its tag as `"t"`."""
    wire = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    wire["t"] = message.tag
    return wire


def decode(wire: Wire) -> Message:
    """The message a JSON object carries; ValueError if its tag or fields are unknown."""
    kind = _KINDS.get(wire.get("t", ""))
    if kind is None:
        raise ValueError(f"unknown message {wire.get('t')!r}")
    fields = {key: value for key, value in wire.items() if key not in ("t", "fds")}
    return kind(**fields)


# -- manager -> launcher ----------------------------------------------------------


@_message
@dataclass(frozen=True)
class LaunchZygote(Message):
    """Fork a zygote that runs `module.main(channel fd)`, as `identity`, with `env` added.

    Two descriptors come with it: the zygote's channel and its output pipe.
    `stop_timeout` (seconds) bounds the zygote's graceful stop should the
    manager die.
    """

    tag: ClassVar[str] = "launch"
    key: int
    name: str
    module: str
    env: dict[str, str]
    identity: dict[str, Any]
    stop_timeout: float


@_message
@dataclass(frozen=True)
class Spawn(Message):
    """Start `argv` (a declared process, a command job's run, a prestart step) as `identity`.

    It runs with exactly `env`, in `cwd` ("" for the launcher's own), in a
    session of its own, with the one descriptor that comes with this
    message as its stdout and stderr. Should the manager die, its process
    group gets `stop_signal` (a name, such as "SIGTERM"), and SIGKILL after
    `stop_timeout` seconds.
    """

    tag: ClassVar[str] = "spawn"
    key: int
    argv: list[str]
    env: dict[str, str]
    cwd: str
    identity: dict[str, Any]
    stop_signal: str
    stop_timeout: float


# -- launcher or zygote -> manager ------------------------------------------------


@_message
@dataclass(frozen=True)
class Forked(Message):
    """The child asked for under `key` was forked and has `pid`."""

    tag: ClassVar[str] = "forked"
    key: int
    pid: int


@_message
@dataclass(frozen=True)
class SpawnFailed(Message):
    """What was asked under `key` could not start: `errno` and its words, as OSError has them."""

    tag: ClassVar[str] = "spawn-failed"
    key: int
    errno: int
    strerror: str


@_message
@dataclass(frozen=True)
class Exited(Message):
    """A child of the sender exited; `code` as os.waitstatus_to_exitcode gives it."""

    tag: ClassVar[str] = "exited"
    pid: int
    code: int


# -- manager -> zygote ------------------------------------------------------------


@_message
@dataclass(frozen=True)
class WebZygoteSpec(Message):
    """A web zygote's first message: the web settings (as JSON) and how to log.

    Descriptors: the access log's pipe to the manager, then every listening
    socket. `color`: whether the access lines' prefixes are colored (the
    manager's output is a terminal).
    """

    tag: ClassVar[str] = "web-spec"
    name: str
    config: dict[str, Any]
    stop_timeout: float
    log_format: str
    color: bool = False


@_message
@dataclass(frozen=True)
class JobsZygoteSpec(Message):
    """The jobs zygote's first message: the `call` target of each job, by job name."""

    tag: ClassVar[str] = "jobs-spec"
    name: str
    targets: dict[str, str]
    stop_timeout: float


@_message
@dataclass(frozen=True)
class ForkWorker(Message):
    """Fork web worker `name`; its channel and its output pipe come with this message."""

    tag: ClassVar[str] = "fork-worker"
    key: int
    name: str


@_message
@dataclass(frozen=True)
class ForkRun(Message):
    """Fork one run of `job`, with `env` added, in `cwd` ("" for the zygote's own).

    Its output pipe comes with this message.
    """

    tag: ClassVar[str] = "fork-run"
    key: int
    name: str
    job: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""


@_message
@dataclass(frozen=True)
class Exit(Message):
    """Exit now: the manager has no more use for this fork server (its children are gone)."""

    tag: ClassVar[str] = "exit"


# -- zygote -> manager ------------------------------------------------------------


@_message
@dataclass(frozen=True)
class Loaded(Message):
    """The zygote has loaded its code and forks on request from now on."""

    tag: ClassVar[str] = "loaded"
    # A jobs zygote's jobs whose target did not import (their runs fail with the error).
    broken: list[str] = field(default_factory=list)


@_message
@dataclass(frozen=True)
class LoadFailed(Message):
    """The zygote could not load its code (its output says why); it exits."""

    tag: ClassVar[str] = "load-failed"


# -- manager -> worker ------------------------------------------------------------


@_message
@dataclass(frozen=True)
class TakeBacklogThenStop(Message):
    """A full stop: accept what already waits in the listen queue, then drain."""

    tag: ClassVar[str] = "stop"


# -- worker -> manager ------------------------------------------------------------


@_message
@dataclass(frozen=True)
class Ready(Message):
    """Lifespan startup completed and the worker accepts connections."""

    tag: ClassVar[str] = "ready"
    pid: int
    app: str = ""  # which app it serves, found how, as one line for the log


@_message
@dataclass(frozen=True)
class Heartbeat(Message):
    """Sent from inside the worker's event loop every second: it is not stuck.

    `requests` is the number served since the worker started; `stats` its
    cumulative counters for /metrics (`RequestStats.snapshot()`).
    """

    tag: ClassVar[str] = "hb"
    requests: int
    stats: dict[str, Any]
    # A WSGI app's request running longest in a thread: [seconds, thread id, "GET /path"].
    longest: list[Any] | None = None


@_message
@dataclass(frozen=True)
class Draining(Message):
    """The worker has stopped accepting: new connections go to the others."""

    tag: ClassVar[str] = "draining"


@_message
@dataclass(frozen=True)
class Recycle(Message):
    """The worker asks to be replaced (`reason`: max-requests), having served `requests`."""

    tag: ClassVar[str] = "recycle"
    reason: str
    requests: int
