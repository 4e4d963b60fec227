"""The control API: what the manager offers (Controller) and the HTTP face the CLI talks to.

A plain ASGI app, without a framework: a dozen routes do not need one, and
the manager, which never imports the user's app, stays small. The manager
serves it with uvicorn on its own event loop (see server.py). On TCP it
also serves the dashboard (`corral.control.dashboard`).

Who may call what: the Unix socket admits only corral's user (its mode), so
it needs nothing more. On TCP every call but the probes, /metrics and the
dashboard's page needs a token (`Authorization: Bearer`), or the session
cookie the dashboard exchanged for one (`corral.control.sessions`). Every
call that changes something is a POST that needs the admin token (the
read-only one gets 403); one made with the cookie must also come from the
dashboard's own page (`Origin`, or `Sec-Fetch-Site`), else a page of any
other site on the same host could make the browser send it. Every such
call is logged with who made it (`Controller.audit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

from corral.control.sessions import ADMIN, LOCAL, Caller, Sessions, Tokens
from corral.manager.logbuffer import Entry, LogBuffer, Subscription

if TYPE_CHECKING:
    from corral.control.dashboard import Dashboard

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/metrics"})  # probes and scrapers carry no token
DASHBOARD_PATHS = ("/dashboard", "/login", "/session", "/logout")  # see corral.control.dashboard
MAX_BODY = 65536
DEFAULT_LOG_LINES = 100
CALLER = "corral.caller"  # the scope key under which a request's Caller is kept
AUDIT_BODY = 300  # characters of a call's body its audit line shows


class Access(enum.Enum):
    """What a route needs of its caller."""

    PUBLIC = "public"  # nothing (probes, the dashboard's page and its login)
    READ = "read"  # a token, admin or read-only, or a session cookie
    ACT = "act"  # the admin role; with a cookie, a request from the dashboard's own page


Route = tuple[str, Handler, Access]


class ControlError(Exception):
    """A request the manager refuses: an HTTP status and a one-line message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Controller(Protocol):
    """What the manager does for the control API. Methods raise ControlError to refuse.

    An unknown group, process or job is a 404 whose message lists the known
    ones; a bad value is a 400.
    """

    logs: LogBuffer

    def audit(self, line: str) -> None:
        """Log an action, or a refused one, with who asked (a role, never a token)."""
        ...

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: {"corral": {...}, "processes": [...], "jobs": [...]}."""
        ...

    async def reload(self, group: str | None) -> str:
        """Reload one group, or everything when None; a one-line message ("reloading web")."""
        ...

    async def restart(self, target: str) -> str:
        """Restart a group ("web") or one process ("web.2")."""
        ...

    async def scale(self, counts: dict[str, int]) -> str:
        """Set the number of processes of each group named ({"web": 4})."""
        ...

    async def stop(self) -> str:
        """Begin a graceful stop of everything; return without waiting for it."""
        ...

    async def run_job(self, name: str) -> str:
        """Run a job now, as its schedule would (its overlap policy applies)."""
        ...

    def readiness(self) -> tuple[bool, str]:
        """Whether the system is ready for traffic, and why not when it is not."""
        ...

    def log_selector(self, name: str) -> str:
        """What the log lines of `name` (a group, a process, a job, or corral) are selected by;
        a 404 for a name it does not know."""
        ...

    def metrics(self) -> bytes:
        """Prometheus text exposition."""
        ...


def make_app(
    controller: Controller,
    token: str | None,
    read_token: str | None = None,
    sessions: Sessions | None = None,
) -> ControlApp:
    """The control API for one listener.

    With a token (TCP), every call but the probes needs it, or `read_token`
    for the calls that change nothing. With `sessions`, the dashboard too:
    on TCP, its page and its login; on the Unix socket, the one-time login
    codes `corral dashboard` asks for.
    """
    tokens = Tokens(token, read_token) if token is not None else None
    return ControlApp(controller, tokens, sessions=sessions)


def make_probes_app(controller: Controller) -> ControlApp:
    """/livez, /readyz and /metrics, and nothing else: a listener a container may expose."""
    return ControlApp(controller, None, probes_only=True)


class ControlApp:
    """The ASGI app. Routes: see `_routes`, /jobs/NAME/run besides, and the dashboard's."""

    def __init__(
        self,
        controller: Controller,
        tokens: Tokens | None,
        probes_only: bool = False,
        sessions: Sessions | None = None,
    ) -> None:
        self.controller = controller
        self.probes_only = probes_only
        self.tokens = tokens
        self._followers: set[Subscription] = set()
        self._ending = False
        self._routes: dict[str, Route] = {
            "/status": ("GET", self._status, Access.READ),
            "/logs": ("GET", self._logs, Access.READ),
            "/livez": ("GET", self._livez, Access.PUBLIC),
            "/readyz": ("GET", self._readyz, Access.PUBLIC),
            "/metrics": ("GET", self._metrics, Access.PUBLIC),
            "/reload": ("POST", self._action(self._reload), Access.ACT),
            "/restart": ("POST", self._action(self._restart), Access.ACT),
            "/scale": ("POST", self._action(self._scale), Access.ACT),
            "/stop": ("POST", self._action(self._stop), Access.ACT),
        }
        self.dashboard: Dashboard | None = None
        if sessions is not None:
            from corral.control.dashboard import Dashboard

            self.dashboard = Dashboard(self, sessions)
            self._routes.update(self.dashboard.routes(on_tcp=tokens is not None))

    def end_streams(self) -> None:
        """End every /logs follow stream, and refuse new ones: the server is shutting down.

        Without this, uvicorn's shutdown would wait for followers to hang up.
        """
        self._ending = True
        for follower in self._followers:
            follower.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        try:
            route = self._route(path)
            if route is None or route[2] is not Access.PUBLIC:
                scope[CALLER] = self.caller(scope)
            if route is None:
                raise ControlError(404, f"no such endpoint: {path}")
            method, handler, access = route
            if scope["method"] != method:
                allow = [(b"allow", method.encode())]
                await send_json(send, 405, {"error": f"{path} takes {method}"}, allow)
                return
            if access is Access.ACT:
                self._may_act(scope)
            await handler(scope, receive, send)
        except ControlError as error:
            challenge = [(b"www-authenticate", b"Bearer")] if error.status == 401 else None
            await send_json(send, error.status, {"error": error.message}, challenge)

    def caller(self, scope: Scope) -> Caller:
        """Who calls: by the bearer token, else by the dashboard's session cookie; else 401."""
        if self.tokens is None:
            return LOCAL
        headers = dict(scope["headers"])
        given = headers.get(b"authorization")
        if given is not None:
            scheme, _, credential = given.partition(b" ")
            role = self.tokens.role_of(credential.strip()) if scheme.lower() == b"bearer" else None
            if role is not None:
                return Caller(role, "token")
        elif self.dashboard is not None:
            caller = self.dashboard.session_caller(scope)
            if caller is not None:
                return caller
        raise ControlError(401, "this call needs the control token: Authorization: Bearer TOKEN")

    def _may_act(self, scope: Scope) -> None:
        """403 unless the caller is an admin, and, with a cookie, calls from the dashboard."""
        caller: Caller = scope[CALLER]
        if caller.role != ADMIN:
            reason = "the read-only token cannot change anything"
        elif caller.via == "dashboard" and not same_origin(scope):
            reason = "a call with the dashboard's cookie must come from the dashboard's page"
        else:
            return
        self.controller.audit(f"{caller}: {scope['method']} {scope['path']} refused: {reason}")
        raise ControlError(403, reason)

    def _route(self, path: str) -> Route | None:
        if self.probes_only and path not in PUBLIC_PATHS:
            raise ControlError(404, f"no such endpoint: {path} (this listener serves probes)")
        if path in self._routes:
            return self._routes[path]
        if self.dashboard is not None and (route := self.dashboard.route(path)) is not None:
            return route
        if self.dashboard is None and path.startswith(DASHBOARD_PATHS):
            raise ControlError(
                404,
                "the dashboard is off: it is served with the control API on TCP "
                "(corral run --control 127.0.0.1:9000)",
            )
        prefix, suffix = "/jobs/", "/run"
        name = path[len(prefix) : -len(suffix)]
        if path.startswith(prefix) and path.endswith(suffix) and name and "/" not in name:
            return "POST", self._action(lambda body: self._run_job(name, body)), Access.ACT
        return None

    # -- the mutating calls: a JSON object in, {"message": ...} out -------------------------

    def _action(self, act: Callable[[dict[str, Any]], Awaitable[str]]) -> Handler:
        """The handler of a call that changes something: it logs who asked what, and the answer."""

        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            body = await read_object(receive)
            asked = f"{scope[CALLER]}: POST {scope['path']}"
            if body:
                asked += " " + _json(body).decode()[:AUDIT_BODY]
            try:
                message = await act(body)
            except ControlError as error:
                self.controller.audit(f"{asked}: refused: {error.message}")
                raise
            self.controller.audit(f"{asked}: {message}")
            await send_json(send, 200, {"message": message})

        return handle

    async def _reload(self, body: dict[str, Any]) -> str:
        _only(body, {"group"})
        group = body.get("group")
        if group is not None and not isinstance(group, str):
            raise ControlError(400, '"group" must be a group name or null')
        return await self.controller.reload(group)

    async def _restart(self, body: dict[str, Any]) -> str:
        _only(body, {"target"})
        target = body.get("target")
        if not isinstance(target, str) or not target:
            raise ControlError(400, '"target" must name a group ("web") or a process ("web.2")')
        return await self.controller.restart(target)

    async def _scale(self, body: dict[str, Any]) -> str:
        _only(body, {"counts"})
        counts = body.get("counts")
        if (
            not isinstance(counts, dict)
            or not counts
            or not all(_is_count(count) for count in counts.values())
        ):
            raise ControlError(
                400, '"counts" must map group names to numbers of processes, as {"web": 4}'
            )
        return await self.controller.scale(counts)

    async def _stop(self, body: dict[str, Any]) -> str:
        _only(body, set())
        return await self.controller.stop()

    async def _run_job(self, name: str, body: dict[str, Any]) -> str:
        _only(body, set())
        return await self.controller.run_job(name)

    # -- the reads ---------------------------------------------------------------------------

    async def _status(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, self.controller.status())

    async def _livez(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_text(send, 200, "ok\n")

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        ready, reason = self.controller.readiness()
        if ready:
            await send_text(send, 200, "ready\n")
        else:
            await send_text(send, 503, f"not ready: {reason}\n")

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_response(send, 200, self.controller.metrics(), [(b"content-type", METRICS_TYPE)])

    async def _logs(self, scope: Scope, receive: Receive, send: Send) -> None:
        """NDJSON: the last `lines` entries, then (follow=1) new ones until the client hangs up."""
        selector, count, follow = log_query(scope["query_string"])
        await self.send_logs(
            selector, count, follow, receive, send, b"application/x-ndjson", _ndjson
        )

    async def send_logs(
        self,
        selector: str | None,
        count: int,
        follow: bool,
        receive: Receive,
        send: Send,
        content_type: bytes,
        encode: Callable[[list[Entry]], bytes],
        pause: float = 0.0,
    ) -> None:
        """The last `count` entries, then (`follow`) new ones until the client hangs up.

        `selector` names a group, a process, a job or corral (None: every
        line); ControlError (404) if the manager knows no such name. Each
        batch of entries goes out as `encode` makes it; `pause` seconds
        pass between batches (a follower's batch grows meanwhile, bounded,
        see `Subscription`), so a busy log costs a slow reader less.
        The subscription starts before the recent entries are read, with no
        await between, so a follower misses no line and sees none twice.
        """
        if selector is not None:  # an unknown name is a 404, not an empty answer
            selector = self.controller.log_selector(selector)
        buffer = self.controller.logs
        with buffer.follow(selector) as subscription:
            recent = buffer.recent(selector, count)
            headers = [(b"content-type", content_type), (b"cache-control", b"no-store")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if recent:
                await send(
                    {"type": "http.response.body", "body": encode(recent), "more_body": True}
                )
            if follow and not self._ending:
                await self._stream(subscription, receive, send, encode, pause)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream(
        self,
        subscription: Subscription,
        receive: Receive,
        send: Send,
        encode: Callable[[list[Entry]], bytes],
        pause: float,
    ) -> None:
        self._followers.add(subscription)
        hangup = asyncio.ensure_future(_disconnected(receive))
        hangup.add_done_callback(lambda _: subscription.close())
        try:
            async for batch in subscription:
                await send({"type": "http.response.body", "body": encode(batch), "more_body": True})
                if pause:
                    await asyncio.sleep(pause)
        finally:
            self._followers.discard(subscription)
            hangup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hangup


def same_origin(scope: Scope) -> bool:
    """Whether the browser says the request comes from a page of this very origin.

    `Sec-Fetch-Site`, when sent, must be `same-origin`; `Origin`, when sent,
    must be this server's (as the `Host` the browser asked for names it).
    A request with neither is refused: browsers send at least one of them
    with every POST.
    """
    headers = dict(scope["headers"])
    site = headers.get(b"sec-fetch-site")
    if site is not None and site != b"same-origin":
        return False
    origin, host = headers.get(b"origin"), headers.get(b"host")
    if origin is None:
        return site == b"same-origin"
    return host is not None and origin == f"{scope['scheme']}://".encode() + host


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unexpected = sorted(set(body) - allowed)
    if unexpected:
        expected = ", ".join(f'"{name}"' for name in sorted(allowed)) or "none"
        raise ControlError(400, f'unexpected field "{unexpected[0]}" (expected: {expected})')


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def log_query(query_string: bytes) -> tuple[str | None, int, bool]:
    """The selector (group or process), line count and follow flag of a /logs request."""
    query = {key: values[-1] for key, values in parse_qs(query_string.decode("latin-1")).items()}
    lines = query.get("lines", str(DEFAULT_LOG_LINES))
    if not (lines.isascii() and lines.isdigit()):
        raise ControlError(400, f"lines={lines!r}: expected a number of lines, 0 or more")
    follow = query.get("follow", "0")
    if follow not in ("0", "1"):
        raise ControlError(400, f"follow={follow!r}: expected 0 or 1")
    return query.get("group") or None, int(lines), follow == "1"


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def read_object(receive: Receive) -> dict[str, Any]:
    """The request's JSON object; an empty body is an empty object."""
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ControlError(400, "the client hung up before sending its request body")
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            raise ControlError(413, f"the request body is larger than {MAX_BODY} bytes")
        more = message.get("more_body", False)
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except ValueError as error:
        raise ControlError(400, f"the request body is not valid JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise ControlError(400, "the request body must be a JSON object")
    return parsed


def _ndjson(entries: list[Entry]) -> bytes:
    return b"".join(_json(entry._asdict()) + b"\n" for entry in entries)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


async def send_json(
    send: Send, status: int, value: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    content_type = (b"content-type", b"application/json")
    await send_response(send, status, _json(value), [content_type, *(headers or [])])


async def send_text(send: Send, status: int, text: str) -> None:
    await send_response(
        send, status, text.encode(), [(b"content-type", b"text/plain; charset=utf-8")]
    )


async def send_response(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
