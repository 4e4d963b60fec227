"""The settings of `corral run`: the web app's (`WebConfig`) and the manager's (`ManagerConfig`).

Each setting is one typed field; its `Flag` gives its command-line spelling
and `--help` group, its name gives its `CORRAL_<NAME>` variable and its
corral.toml key (`[web]` or `[corral]`). The CLI is derived from these models.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, ValidationInfo, field_validator

from corral.addresses import UnixAddress, parse_bind, parse_control, parse_tcp, unix_socket_path
from corral.settings import app_ref, here
from corral.settings.base import (
    BINDING,
    CONTROL,
    DEVELOPMENT,
    HTTP,
    LIMITS,
    LOGGING,
    MAX_MEMBERS,
    PROCESS,
    SELECTION,
    TLS,
    WORKERS,
    CommaJoined,
    Environment,
    IdAsText,
    OneOrMore,
    Settings,
    flag,
)
from corral.units import Duration, FileMode, PositiveDuration

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
HttpChoice = Literal["auto", "httptools", "h11", "zttp"]
WsChoice = Literal["auto", "none", "websockets", "websockets-sansio", "wsproto"]

# The package each --http, --ws and --loop choice imports in the workers, and how to install it
# ("auto" falls back on what is there). uvicorn[standard] brings the others where it can.
NEEDS_PACKAGE = {
    "zttp": ("zttp", "pip install zttp (or corral's extra: corral[zttp])"),
    "wsproto": ("wsproto", "pip install wsproto (or corral's extra: corral[wsproto])"),
    "httptools": ("httptools", "pip install httptools"),
    "websockets": ("websockets", "pip install websockets"),
    "websockets-sansio": ("websockets", "pip install websockets"),
    "uvloop": ("uvloop", "pip install uvloop"),
}


class ManagerConfig(Settings):
    """The manager's own settings, with or without a web app: [corral] in corral.toml."""

    control: Annotated[str | None, flag("--control", group=CONTROL, metavar="ADDRESS")] = Field(
        None,
        description="Serve the control API on HOST:PORT too (changes need the token), "
        "or put its Unix socket at PATH instead of the default (a PATH with a ':' "
        "needs a '/', such as ./name:x).",
    )
    log_format: Annotated[Literal["text", "json"], flag("--log-format", group=LOGGING)] = Field(
        "text", description="text (NAME | line) or json (one object per line)."
    )
    log_file: Annotated[str, flag("--log-file", group=LOGGING, metavar="PATH")] = Field(
        "-",
        min_length=1,
        description="Write corral's whole output (every process's lines) to this file, "
        "appended to and reopened on SIGUSR1; - for stdout.",
    )
    access_logfile: Annotated[
        str | None, flag("--access-logfile", group=LOGGING, metavar="PATH")
    ] = Field(
        None,
        min_length=1,
        description="Write the access lines to this file instead (reopened on SIGUSR1); "
        "- for stdout. By default they go with the rest of the output.",
    )
    user: Annotated[str | None, flag("--user", group=PROCESS), IdAsText] = Field(
        None,
        description="Run every child (web, processes, jobs, prestart) as this user "
        "(name or uid); the manager keeps its own identity.",
    )
    group: Annotated[str | None, flag("--group", group=PROCESS), IdAsText] = Field(
        None,
        description="Run every child as this group (name or gid); by default, the user's own.",
    )
    pidfile: Annotated[Path | None, flag("--pidfile", group=PROCESS, metavar="PATH")] = Field(
        None, description="Write the manager's pid to this file (removed at exit)."
    )
    probes: Annotated[str | None, flag("--probes", group=CONTROL, metavar="HOST:PORT")] = Field(
        None,
        description="Serve /livez, /readyz and /metrics, and nothing else, on HOST:PORT "
        "(no token: for a container's probes and a metrics scraper).",
    )
    only: Annotated[list[str], flag("--only", group=SELECTION, metavar="GROUPS"), OneOrMore] = (
        Field(
            default_factory=list,
            description="Run only these groups, comma-separated: web, jobs (or jobs.NAME), "
            "a process group (or one of its replicas, NAME.N); prestart is skipped.",
        )
    )

    @field_validator("only")
    @classmethod
    def _comma_separated(cls, groups: list[str]) -> list[str]:
        return [name.strip() for item in groups for name in item.split(",") if name.strip()]

    @field_validator("control")
    @classmethod
    def _control_address(cls, value: str | None, info: ValidationInfo) -> str | None:
        address = parse_control(value) if value is not None else None
        if isinstance(address, UnixAddress):
            here.socket_folder(address.path, info)
        return value

    @field_validator("probes")
    @classmethod
    def _probes_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_tcp(value)
        return value

    _files_it_writes = field_validator("log_file", "access_logfile", "pidfile")(here.writable_file)


class WebConfig(Settings):
    """Everything `corral run APP` takes."""

    app: str = Field(
        description="The app (ASGI or WSGI): MODULE:ATTRIBUTE (main:app), a file "
        "(main.py, src/app/main.py, optionally with :ATTRIBUTE) or a package folder."
    )
    bind: Annotated[
        list[str], flag("--bind", "-b", group=BINDING, metavar="ADDRESS"), OneOrMore
    ] = Field(
        default_factory=list,
        description="Listen on HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N; repeatable. "
        "Replaces --host/--port.",
    )
    host: Annotated[str, flag("--host", group=BINDING)] = Field(
        "127.0.0.1", description="Listen on this address (with --port)."
    )
    port: Annotated[int, flag("--port", group=BINDING)] = Field(
        8000, ge=0, le=65535, description="Listen on this port (with --host)."
    )
    uds: Annotated[str | None, flag("--uds", group=BINDING, metavar="PATH")] = Field(
        None, description="Listen on this Unix domain socket."
    )
    uds_permissions: Annotated[
        FileMode, flag("--uds-permissions", group=BINDING, metavar="MODE")
    ] = Field(
        "666",
        validate_default=True,
        description="Mode (octal) of the Unix socket files of --uds and --bind unix:PATH; "
        "they belong to --user and --group when given. 666 lets any local user, "
        "such as a proxy's, connect.",
    )
    backlog: Annotated[int, flag("--backlog", group=BINDING)] = Field(
        2048,
        ge=1,
        le=2**31 - 1,  # what listen() takes; the kernel caps it lower (net.core.somaxconn)
        description="Connections the kernel queues before refusing more.",
    )

    workers: Annotated[int, flag("--workers", "-w", group=WORKERS)] = Field(
        1, ge=1, le=MAX_MEMBERS, description="Number of web worker processes."
    )
    timeout: Annotated[PositiveDuration, flag("--timeout", group=WORKERS, metavar="SECONDS")] = (
        Field(
            30.0,
            description="Kill a worker whose event loop has not answered, or (WSGI) whose "
            "request has run in a thread, for this long (its stack is logged first).",
        )
    )
    boot_timeout: Annotated[
        PositiveDuration, flag("--boot-timeout", group=WORKERS, metavar="SECONDS")
    ] = Field(60.0, description="Kill a worker that has not become ready in this long.")
    graceful_timeout: Annotated[
        Duration, flag("--graceful-timeout", group=WORKERS, metavar="SECONDS")
    ] = Field(30.0, description="On stop, wait this long for in-flight requests, then kill.")

    max_requests: Annotated[int | None, flag("--max-requests", group=WORKERS)] = Field(
        None,
        ge=1,
        description="Replace a worker after it has served this many requests "
        "(the replacement starts first).",
    )
    max_requests_jitter: Annotated[int, flag("--max-requests-jitter", group=WORKERS)] = Field(
        0,
        ge=0,
        description="Add a random 0..N to each worker's --max-requests, "
        "so that workers are not replaced together.",
    )
    max_memory: Annotated[ByteSize | None, flag("--max-memory", group=WORKERS, metavar="SIZE")] = (
        Field(
            None,
            gt=0,
            description="Replace a worker whose memory (RSS) grows past this size, "
            "such as 512MiB (the replacement starts first).",
        )
    )
    factory: Annotated[bool, flag("--factory/--no-factory", group=WORKERS)] = Field(
        False, description="APP is a callable that returns the ASGI app."
    )
    preload: Annotated[bool, flag("--preload/--no-preload", group=WORKERS)] = Field(
        True,
        description="Import the app once, before forking workers, so they share its memory.",
    )
    interface: Annotated[Literal["auto", "asgi", "wsgi"], flag("--interface", group=WORKERS)] = (
        Field(
            "auto",
            description="asgi or wsgi; auto tells them apart by the app's call signature "
            "and asks for this flag when it cannot.",
        )
    )
    threads: Annotated[int, flag("--threads", group=WORKERS)] = Field(
        1,
        ge=1,
        description="WSGI apps: the threads each worker runs requests in, as gunicorn's "
        "--threads (1: one request at a time per worker, as gunicorn's default).",
    )
    loop: Annotated[Literal["auto", "asyncio", "uvloop"], flag("--loop", group=WORKERS)] = Field(
        "auto",
        description="The workers' event loop: uvloop, asyncio, or auto (uvloop if installed), "
        "as uvicorn's --loop.",
    )

    http: Annotated[HttpChoice, flag("--http", group=HTTP)] = Field(
        "auto",
        description="HTTP protocol implementation (uvicorn's): httptools (auto), h11 "
        "(pure Python) or zttp (pip install 'corral[zttp]'; needed for --http2).",
    )
    http2: Annotated[bool, flag("--http2/--no-http2", group=HTTP)] = Field(
        False,
        description="Serve HTTP/2 too (with --http zttp): over TLS when the client asks "
        "by ALPN, in cleartext to a client that knows (h2c prior knowledge).",
    )
    ws: Annotated[WsChoice, flag("--ws", group=HTTP)] = Field(
        "auto",
        description="WebSocket protocol implementation (uvicorn's): websockets (auto), "
        "websockets-sansio, wsproto (pip install 'corral[wsproto]'), or none.",
    )
    ws_drain_grace: Annotated[Duration, flag("--ws-drain-grace", group=HTTP, metavar="SECONDS")] = (
        Field(
            0.0,
            ge=0,
            description="When a worker drains (reload, stop), let its WebSocket sessions go on "
            "this long, then close them with code 1012 so that clients reconnect.",
        )
    )
    root_path: Annotated[str, flag("--root-path", group=HTTP)] = Field(
        "", description="The ASGI root_path, for an app mounted below a URL prefix."
    )
    proxy_headers: Annotated[bool, flag("--proxy-headers/--no-proxy-headers", group=HTTP)] = Field(
        True,
        description="Trust X-Forwarded-Proto and X-Forwarded-For from --forwarded-allow-ips "
        "and from a peer on a Unix socket.",
    )
    forwarded_allow_ips: Annotated[
        str, flag("--forwarded-allow-ips", group=HTTP, metavar="IPS"), CommaJoined
    ] = Field(
        "127.0.0.1,::1",
        description="Comma-separated addresses and networks to trust proxy headers from "
        "('*' for all). A peer on a Unix socket is always trusted: it is the local proxy.",
    )

    keep_alive: Annotated[Duration, flag("--keep-alive", group=LIMITS, metavar="SECONDS")] = Field(
        5.0,
        description="Close a connection that starts no request for this long, "
        "from its accept and after each response.",
    )
    limit_concurrency: Annotated[int | None, flag("--limit-concurrency", group=LIMITS)] = Field(
        None, ge=1, description="Per worker, answer 503 beyond this many connections and tasks."
    )
    limit_request_line: Annotated[int, flag("--limit-request-line", group=LIMITS)] = Field(
        4094,
        ge=0,
        description="Longest request line (method, target, version), in bytes; "
        "a longer one gets 414. 0: no limit.",
    )
    limit_request_fields: Annotated[int, flag("--limit-request-fields", group=LIMITS)] = Field(
        100, ge=0, description="Most header fields in a request; more get 431. 0: no limit."
    )
    limit_request_field_size: Annotated[int, flag("--limit-request-field_size", group=LIMITS)] = (
        Field(
            8190,
            ge=0,
            description="Largest header field (name, value, separators), in bytes; "
            "a larger one gets 431. 0: no limit.",
        )
    )
    limit_request_head: Annotated[
        ByteSize, flag("--limit-request-head", group=LIMITS, metavar="SIZE")
    ] = Field(
        "64KiB",
        validate_default=True,
        gt=0,
        description="Largest request head (request line and every header field), "
        "such as 64KiB; a larger one gets 431.",
    )
    header_read_timeout: Annotated[
        PositiveDuration, flag("--header-read-timeout", group=LIMITS, metavar="SECONDS")
    ] = Field(
        5.0,
        description="A request head must arrive whole within this long (from the accept, "
        "or its first byte); else 408 and close.",
    )
    body_read_timeout: Annotated[
        PositiveDuration, flag("--body-read-timeout", group=LIMITS, metavar="SECONDS")
    ] = Field(
        60.0,
        description="Close a request whose body stops arriving for this long while the app "
        "waits for it (408 if no response has started).",
    )
    send_timeout: Annotated[
        PositiveDuration, flag("--send-timeout", group=LIMITS, metavar="SECONDS")
    ] = Field(
        60.0,
        description="Close a connection whose client reads none of the response "
        "waiting for it for this long.",
    )
    ws_ping_interval: Annotated[
        PositiveDuration, flag("--ws-ping-interval", group=LIMITS, metavar="SECONDS")
    ] = Field(20.0, description="Ping each WebSocket client this often.")
    ws_ping_timeout: Annotated[
        PositiveDuration, flag("--ws-ping-timeout", group=LIMITS, metavar="SECONDS")
    ] = Field(
        20.0,
        description="Close a WebSocket whose client has not answered a ping in this long.",
    )
    ws_max_size: Annotated[ByteSize, flag("--ws-max-size", group=LIMITS, metavar="SIZE")] = Field(
        "16MiB",
        validate_default=True,
        gt=0,
        description="Largest WebSocket message a client may send.",
    )

    certfile: Annotated[Path | None, flag("--certfile", group=TLS, metavar="PATH")] = Field(
        None, description="TLS certificate (PEM); serves HTTPS."
    )
    keyfile: Annotated[Path | None, flag("--keyfile", group=TLS, metavar="PATH")] = Field(
        None, description="TLS private key (PEM)."
    )
    ca_certs: Annotated[Path | None, flag("--ca-certs", group=TLS, metavar="PATH")] = Field(
        None, description="CA certificates to verify clients with."
    )

    access_log: Annotated[bool, flag("--access-log/--no-access-log", group=LOGGING)] = Field(
        True, description="One line per request: client, method, path, status, duration."
    )
    request_metrics: Annotated[
        bool, flag("--request-metrics/--no-request-metrics", group=LOGGING)
    ] = Field(
        True,
        description="Count requests by method, status and duration for /metrics.",
    )
    log_level: Annotated[LogLevel, flag("--log-level", group=LOGGING)] = Field(
        "info", description="critical, error, warning, info, debug or trace."
    )

    reload: Annotated[bool, flag("--reload/--no-reload", group=DEVELOPMENT)] = Field(
        False,
        description="Reload (rolling, as on SIGHUP) when a .py file under the current "
        "directory changes. For development.",
    )

    user: Annotated[str | None, IdAsText] = Field(
        None,
        description="Run the web processes as this user instead of [corral]'s user (file only).",
    )
    group: Annotated[str | None, IdAsText] = Field(
        None,
        description="Run the web processes as this group instead of [corral]'s group (file only).",
    )
    env_file: Annotated[Path | None, flag("--env-file", group=PROCESS, metavar="PATH")] = Field(
        None, description="Load environment variables for the app from this .env file."
    )
    env: Environment = Field(
        default_factory=dict, description="Environment variables for the web processes (file only)."
    )

    @field_validator("app")
    @classmethod
    def _app_is_module_attribute_or_file(cls, value: str) -> str:
        return app_ref.check(value)

    @field_validator("bind")
    @classmethod
    def _bind_addresses(cls, specs: list[str], info: ValidationInfo) -> list[str]:
        problems = []
        for spec in specs:
            try:
                address = parse_bind(spec)
                if address.path is not None:
                    here.socket_folder(address.path, info)
            except ValueError as error:
                problems.append(str(error))
        if problems:
            raise ValueError("; ".join(problems))
        return specs

    @field_validator("uds")
    @classmethod
    def _uds_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            here.socket_folder(unix_socket_path(value), info)
        return value

    _files_it_reads = field_validator("certfile", "keyfile", "ca_certs", "env_file")(
        here.existing_file
    )

    @field_validator("keyfile")
    @classmethod
    def _with_its_certificate(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("certfile") is None and "certfile" in info.data:
            raise ValueError("a key goes with its certificate: give certfile (--certfile) too")
        return value

    @field_validator("http", "ws", "loop")
    @classmethod
    def _installed(cls, choice: str, info: ValidationInfo) -> str:
        """A choice whose package is not installed would fail in every worker, after the start:
        refused here, without importing it (`find_spec`: a worker imports it, not the manager).

        Only for this machine (`here`): `corral export` writes for another one.
        """
        if choice in NEEDS_PACKAGE and here.runs_here(info):
            package, install = NEEDS_PACKAGE[choice]
            if importlib.util.find_spec(package) is None:
                raise ValueError(f"{choice} needs the {package} package, not installed: {install}")
        return choice

    @field_validator("http2")
    @classmethod
    def _http2_by_zttp(cls, http2: bool, info: ValidationInfo) -> bool:
        """http is declared (so validated) before http2: a refusal names http2.

        An http refused already (not in `info.data`) is not named again here.
        """
        http = info.data.get("http")
        if http2 and http is not None and http != "zttp":
            raise ValueError(
                f"HTTP/2 is served by zttp: give http zttp (--http zttp) too, not {http!r}"
            )
        return http2

    def unenforced_limits(self) -> list[str]:
        """The limits set that this --http choice cannot enforce, each with what applies instead.

        httptools enforces them all; h11 and zttp parse the request head
        themselves and leave corral no place to measure it or time it.
        """
        if self.http in ("auto", "httptools"):
            return []
        head = (
            "--limit-request-head (h11's largest incomplete event)"
            if self.http == "h11"
            else "zttp's own limit of 16 KiB on a request head"
        )
        return [
            f"--http {self.http} does not enforce --limit-request-line, --limit-request-fields, "
            f"--limit-request-field_size (only {head} applies), --header-read-timeout, "
            "--body-read-timeout or the limit of pipelined requests; --keep-alive, "
            "--limit-concurrency and --send-timeout apply"
        ]
