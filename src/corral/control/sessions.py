"""Who calls the TCP control API: the tokens and their roles, and the dashboard's sessions.

Two roles. `admin` (CORRAL_TOKEN, or the token corral generates) sees and
does everything; `read-only` (CORRAL_READ_TOKEN, or one generated beside
the first) sees everything, logs included, and changes nothing. A browser
shows a token once (typed into the dashboard's login form, or as a one-time
code from `corral dashboard`) and gets a session in exchange: a random id
in an HttpOnly, SameSite=Strict cookie, which page scripts cannot read and
the browser sends to no other site. Sessions live in the manager's memory:
a restart of corral ends them.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

ADMIN = "admin"
READ_ONLY = "read-only"
ROLES = (ADMIN, READ_ONLY)

CODE_LIFETIME = 300.0  # seconds a one-time login code stays good
SESSION_LIFETIME = 24 * 3600.0  # seconds
MAX_SESSIONS = 1000  # past it, the oldest session ends
MAX_CODES = 100


@dataclass(frozen=True)
class Caller:
    """Who makes a call: a role, and how it showed it (for the log of actions)."""

    role: str  # ADMIN or READ_ONLY
    via: str  # "the control socket", "token", "dashboard"

    def __str__(self) -> str:
        return self.via if self.via == "the control socket" else f"{self.role} ({self.via})"


LOCAL = Caller(ADMIN, "the control socket")  # the Unix socket's mode admits only corral's user


class Tokens:
    """The tokens a TCP listener accepts, by role."""

    def __init__(self, admin: str, read_only: str | None = None) -> None:
        self._by_role = {ADMIN: admin, READ_ONLY: read_only}

    def role_of(self, token: bytes) -> str | None:
        """The role `token` gives, compared in constant time; None if it is no token of ours."""
        found = None
        for role, known in self._by_role.items():
            if known is not None and hmac.compare_digest(token, known.encode()):
                found = role
        return found


class Sessions:
    """The dashboard's one-time login codes and the sessions they open, in memory."""

    def __init__(self) -> None:
        self.base_url: str | None = None  # where the dashboard is served, once it listens
        self._codes: dict[str, tuple[str, float]] = {}  # code -> role, expiry (time.monotonic)
        self._sessions: dict[str, tuple[str, float]] = {}  # id -> role, expiry

    def code(self, role: str) -> str:
        """A login code for `role`, good once within CODE_LIFETIME seconds."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        _expire(self._codes, MAX_CODES)
        code = secrets.token_urlsafe(24)
        self._codes[code] = (role, time.monotonic() + CODE_LIFETIME)
        return code

    def redeem(self, code: str) -> str | None:
        """A new session's id for a good code (which is then spent); None otherwise."""
        role, expiry = self._codes.pop(code, ("", 0.0))
        if time.monotonic() > expiry:
            return None
        return self.start(role)

    def start(self, role: str) -> str:
        """A new session for `role`; its id goes into the cookie."""
        _expire(self._sessions, MAX_SESSIONS)
        session = secrets.token_urlsafe(32)
        self._sessions[session] = (role, time.monotonic() + SESSION_LIFETIME)
        return session

    def role_of(self, session: str) -> str | None:
        role, expiry = self._sessions.get(session, ("", 0.0))
        return role if time.monotonic() <= expiry else None

    def end(self, session: str) -> None:
        self._sessions.pop(session, None)


def _expire(entries: dict[str, tuple[str, float]], limit: int) -> None:
    """Drop what has expired, then the oldest entries past `limit - 1` (one is about to come)."""
    now = time.monotonic()
    for key in [key for key, (_, expiry) in entries.items() if expiry < now]:
        del entries[key]
    while len(entries) >= limit:
        del entries[next(iter(entries))]
