"""The dashboard: a page the manager serves on its TCP control address, and the calls it makes.

The page (`static/`: HTML, CSS and a script, no library, no build step)
shows nothing by itself: everything it shows comes from the calls below,
which need a session. It asks for the state every couple of seconds
(`/dashboard/state`), follows the logs as server-sent events
(`/dashboard/logs`), and acts through the control API's own POST calls
(`/reload`, `/restart`, `/scale`, `/jobs/NAME/run`), which check where the
call comes from (see `corral.control.api`).

Logging in: `corral dashboard` asks the manager, over its Unix socket, for a
one-time code and prints `/login?code=...`, which trades it for the session
cookie; or the page's form takes a token (`POST /session`). Routes:

    GET  /                       the page (public: it shows nothing without a session)
    GET  /static/NAME            its script and style (public)
    GET  /login?code=CODE        a one-time code for the session cookie, then to /
    POST /session {"token": T}   a token for the session cookie (from the page only)
    POST /logout                 ends the session
    GET  /dashboard/state        everything the page shows but the logs (any role)
    GET  /dashboard/logs?group=G&lines=N   the logs, then new lines, as server-sent events
    GET  /dashboard/run?job=J&number=N     one job run's output
    POST /dashboard/login-code {"role": "admin" | "read-only"}   a one-time login link (admin)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

from corral.control.api import (
    CALLER,
    Access,
    ControlError,
    Controller,
    Receive,
    Route,
    Scope,
    Send,
    log_query,
    read_object,
    same_origin,
    send_json,
    send_response,
)
from corral.control.sessions import (
    CODE_LIFETIME,
    READ_ONLY,
    ROLES,
    SESSION_LIFETIME,
    Caller,
    Sessions,
)
from corral.manager.logbuffer import Entry

if TYPE_CHECKING:
    from corral.control.api import ControlApp

LOG_PAUSE = 0.25  # seconds between two batches of a followed log: at most 4 a second
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}
# The page loads its own script and style and talks to its own origin only; no frame may hold it.
PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class DashboardController(Controller, Protocol):
    """What the dashboard asks of the manager, besides the control API's calls."""

    def dashboard_state(self) -> dict[str, Any]:
        """Processes, groups, jobs with their last runs, the web charts' series."""
        ...

    def job_run(self, job: str, number: int) -> dict[str, Any] | None:
        """Run `number` of `job` with its output; None if it is not kept (or never was)."""
        ...


class Dashboard:
    """The dashboard's routes on one listener of the control API (`app`)."""

    def __init__(self, app: ControlApp, sessions: Sessions) -> None:
        self.app = app
        self.sessions = sessions
        self.controller: DashboardController = app.controller  # type: ignore[assignment]
        self.assets = _load_assets()

    def routes(self, on_tcp: bool) -> dict[str, Route]:
        """The fixed routes; the page and its login only on TCP, where a browser can come."""
        routes: dict[str, Route] = {
            "/dashboard/state": ("GET", self._state, Access.READ),
            "/dashboard/logs": ("GET", self._logs, Access.READ),
            "/dashboard/run": ("GET", self._run, Access.READ),
            "/dashboard/login-code": ("POST", self._login_code, Access.ACT),
        }
        if on_tcp:
            routes |= {
                "/": ("GET", self._page, Access.PUBLIC),
                "/login": ("GET", self._login, Access.PUBLIC),
                "/session": ("POST", self._session, Access.PUBLIC),
                "/logout": ("POST", self._logout, Access.PUBLIC),
            }
        return routes

    def route(self, path: str) -> Route | None:
        """The route of a static asset."""
        name = path.removeprefix("/static/")
        if name != path and name in self.assets:
            return "GET", self._asset, Access.PUBLIC
        return None

    def session_caller(self, scope: Scope) -> Caller | None:
        """The caller whose session cookie the request carries, if it is a live session."""
        session = self._session_id(scope)
        role = self.sessions.role_of(session) if session is not None else None
        return Caller(role, "dashboard") if role is not None else None

    # -- the page --------------------------------------------------------------------------

    async def _page(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._send_asset(send, "index.html")

    async def _asset(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._send_asset(send, scope["path"].removeprefix("/static/"))

    async def _send_asset(self, send: Send, name: str) -> None:
        content_type = CONTENT_TYPES.get(name[name.rfind(".") :], b"application/octet-stream")
        headers = [(b"content-type", content_type), *PAGE_HEADERS]
        await send_response(send, 200, self.assets[name], headers)

    # -- logging in and out ------------------------------------------------------------------

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A one-time code (from `corral dashboard`) for the session cookie; then to the page."""
        code = parse_qs(scope["query_string"].decode("latin-1")).get("code", [""])[-1]
        session = self.sessions.redeem(code)
        if session is None:
            await _redirect(send, "/?login=expired")
            return
        caller = Caller(self.sessions.role_of(session) or "", "dashboard")
        self.controller.audit(f"{caller}: logged in to the dashboard with a one-time code")
        await _redirect(send, "/", [self._cookie(scope, session, SESSION_LIFETIME)])

    async def _session(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A token, typed into the page's form, for the session cookie."""
        if not same_origin(scope):
            raise ControlError(403, "log in from the dashboard's own page")
        body = await read_object(receive)
        token = body.get("token")
        role = None
        if isinstance(token, str) and self.app.tokens is not None:
            role = self.app.tokens.role_of(token.strip().encode())
        if role is None:
            self.controller.audit("dashboard: a login with a wrong token was refused")
            raise ControlError(401, "that is not a token of this corral")
        session = self.sessions.start(role)
        self.controller.audit(f"{Caller(role, 'dashboard')}: logged in to the dashboard")
        cookie = self._cookie(scope, session, SESSION_LIFETIME)
        await send_json(send, 200, {"role": role}, [cookie])

    async def _logout(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not same_origin(scope):
            raise ControlError(403, "log out from the dashboard's own page")
        session = self._session_id(scope)
        if session is not None:
            self.sessions.end(session)
        await send_json(send, 200, {"message": "logged out"}, [self._cookie(scope, "", 0)])

    async def _login_code(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A one-time login link, for `corral dashboard` (over the Unix socket, or as admin)."""
        body = await read_object(receive)
        role = body.get("role", "admin")
        if role not in ROLES:
            raise ControlError(400, f'"role" must be one of: {", ".join(ROLES)}')
        if self.sessions.base_url is None:
            raise ControlError(
                400,
                "the dashboard is served on the control API's TCP address, and this corral "
                "has none: start it with --control 127.0.0.1:PORT (or [corral] control)",
            )
        code = self.sessions.code(role)
        self.controller.audit(f"{scope[CALLER]}: a one-time dashboard login link for {role}")
        url = f"{self.sessions.base_url}login?code={code}"
        await send_json(send, 200, {"url": url, "role": role, "expires_in": CODE_LIFETIME})

    def _session_id(self, scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"cookie":
                try:
                    cookies = SimpleCookie(value.decode("latin-1"))
                except CookieError:
                    return None
                morsel = cookies.get(_cookie_name(scope))
                return morsel.value if morsel is not None else None
        return None

    @staticmethod
    def _cookie(scope: Scope, session: str, lifetime: float) -> tuple[bytes, bytes]:
        """Set-Cookie for `session`: HttpOnly, SameSite=Strict, for this listener's port."""
        cookie: SimpleCookie = SimpleCookie()
        name = _cookie_name(scope)
        cookie[name] = session
        cookie[name].update(
            {"path": "/", "httponly": True, "samesite": "Strict", "max-age": str(int(lifetime))}
        )
        return b"set-cookie", cookie[name].OutputString().encode("latin-1")

    # -- what the page shows -----------------------------------------------------------------

    async def _state(self, scope: Scope, receive: Receive, send: Send) -> None:
        caller: Caller = scope[CALLER]
        state = self.controller.dashboard_state()
        state["you"] = {"role": caller.role, "read_only": caller.role == READ_ONLY}
        await send_json(send, 200, state, [(b"cache-control", b"no-store")])

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}
        job, number = query.get("job", ""), query.get("number", "")
        run = self.controller.job_run(job, int(number)) if number.isdigit() else None
        if run is None:
            raise ControlError(404, f"no run {number or '?'} of job {job!r} is kept")
        await send_json(send, 200, run, [(b"cache-control", b"no-store")])

    async def _logs(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Server-sent events: each event's data is a JSON list of [time, process, line]."""
        selector, count, _ = log_query(scope["query_string"])
        await self.app.send_logs(
            selector, count, True, receive, send, b"text/event-stream", _events, LOG_PAUSE
        )


def _cookie_name(scope: Scope) -> str:
    """One cookie per port: cookies are the host's, whatever its port, and corrals differ by it."""
    server = scope.get("server")
    return f"corral-session-{server[1] if server else 0}"


def _events(entries: list[Entry]) -> bytes:
    return b"data: " + json.dumps([list(entry) for entry in entries]).encode() + b"\n\n"


async def _redirect(send: Send, location: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await send_response(send, 303, b"", [(b"location", location.encode()), *PAGE_HEADERS, *headers])


def _load_assets() -> dict[str, bytes]:
    """The page's files, read once: they are small, and the package's own."""
    folder = resources.files("corral.control") / "static"
    return {item.name: item.read_bytes() for item in folder.iterdir() if item.is_file()}
