"""What every group is to the manager: web, each `[processes.NAME]`, and the jobs.

The manager holds its groups by name and steers them only through these
methods; signals (HUP, TTIN/TTOU, TERM), the control API and the CLI verbs
all end here. A method that starts lasting work (a rolling reload, a
scale) starts it in the background and returns at once with a one-line
message for the user; `Refused` says why it cannot.
"""

from __future__ import annotations

import abc
from typing import Any


class Refused(Exception):
    """A request a group cannot honour; the message is for the user.

    `unknown` marks a name that does not exist (a member, a job), as
    opposed to a value that is not acceptable.
    """

    def __init__(self, message: str, *, unknown: bool = False) -> None:
        super().__init__(message)
        self.unknown = unknown


class Group(abc.ABC):
    name: str
    stop_phase: int
    """When it stops on a full stop, lower first: web 0 (so a load balancer drains first),
    processes 1, jobs 2 (design.md's stop order)."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """How many members it keeps running (web workers, replicas, declared jobs)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start every member; return once they are on their way (web: once one serves)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop every member gracefully, within the group's own timeout, then kill what is left."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop at once: SIGKILL every member (a later `stop()` collects them)."""

    @abc.abstractmethod
    def reload(self) -> str:
        """Run the current code (and `apply`'s latest declaration), without a failed request."""

    @abc.abstractmethod
    def restart(self, member: str | None) -> str:
        """Restart one member (web.2, consumer.1), or the whole group one member at a time."""

    @abc.abstractmethod
    def scale(self, count: int) -> str:
        """Run `count` members; returns what it scales, as "web to 4"."""

    @abc.abstractmethod
    async def apply(self, declaration: Any, env: dict[str, str]) -> None:
        """Take a changed declaration and environment (on SIGHUP); the next reload uses them."""

    @abc.abstractmethod
    async def settle(self) -> None:
        """Wait until the work this group has under way (a reload, a scale) is over."""

    @abc.abstractmethod
    def status(self) -> list[dict[str, Any]]:
        """Each member as `corral status` shows it (`corral.manager.child.status_row`)."""

    def readiness(self) -> tuple[bool, str]:
        """Whether the group can take traffic, and why not; only web has a say."""
        return True, ""
