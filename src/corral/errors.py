"""The one kind of error that is the user's to fix, as opposed to a bug in corral.

A `UsageError` (a setting that does not validate, an address that cannot be
bound, a user that does not exist...) becomes its message and exit code 2,
with no traceback. Any other exception is a bug: the manager stops
everything in order, prints the traceback and exits 1.

Imports nothing, so that every part of corral (settings, the OS calls, the
control API, the manager) can raise it.
"""

from __future__ import annotations


class UsageError(Exception):
    """A mistake in what the user asked for; each message names the thing and what was expected."""

    def __init__(self, *messages: str) -> None:
        super().__init__("\n".join(messages))
        self.messages = list(messages)
