"""The CLI verbs that talk to a running corral: status, reload, restart, scale, stop, jobs, logs,
dashboard.

Each is a thin client of the control API, by default of the corral running
in the current directory (`corral.control.discovery`). Exit codes: 0 done, 1
when no corral runs here or it refused (the message on stderr), 2 for a
usage error (several corrals run here and none was chosen, say).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import click

from corral.addresses import TcpAddress, UnixAddress, parse_control
from corral.control.api import DEFAULT_LOG_LINES
from corral.control.client import ClientError, ControlClient
from corral.control.discovery import the_one_running, token_here
from corral.control.table import render_status
from corral.control.token import TOKEN_VARIABLE
from corral.errors import UsageError
from corral.exit_codes import FAILURE, USAGE
from corral.logformat import prefix_for
from corral.settings import ManagerConfig, env_name
from corral.settings.base import setting_flag
from corral.words import counted


def _parse_address(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> UnixAddress | TcpAddress | None:
    if value is None:
        return None
    try:
        return parse_control(value)
    except UsageError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def _client(address: UnixAddress | TcpAddress | None, token: str | None) -> ControlClient:
    """The client for `address`, by default the socket of the corral running here.

    TCP calls need the token: given, else the one the corral running here
    wrote beside its socket.
    """
    if address is None:
        address = UnixAddress(the_one_running(Path.cwd()))
    elif token is None and isinstance(address, TcpAddress):
        token = token_here(Path.cwd())
    return ControlClient(address, token)


# `--control` is declared once, as `corral run`'s setting; a verb spells it and reads it the same.
CONTROL_FLAG = setting_flag(ManagerConfig, "control")
CONTROL_VARIABLE = env_name("control")


def control_command(function: Callable[..., None]) -> Callable[..., None]:
    """Give a verb --control and --token, a ControlClient as first argument, and its exit codes."""

    @click.option(
        *CONTROL_FLAG.decls,
        "address",
        metavar=CONTROL_FLAG.metavar,
        envvar=CONTROL_VARIABLE,
        callback=_parse_address,
        help="The control API: a socket PATH (with a '/' if it has a ':') or HOST:PORT "
        f"[default: the socket of the corral running here; env: {CONTROL_VARIABLE}]",
    )
    @click.option(
        "--token",
        metavar="TOKEN",
        envvar=TOKEN_VARIABLE,
        help="The token for a TCP address [default: the one beside the socket of the corral "
        f"running here; env: {TOKEN_VARIABLE}]",
    )
    @functools.wraps(function)
    def command(address: UnixAddress | TcpAddress | None, token: str | None, **kwargs: Any) -> None:
        try:
            function(_client(address, token), **kwargs)
        except ClientError as error:
            click.echo(str(error), err=True)
            sys.exit(FAILURE)
        except UsageError as error:
            for message in error.messages:
                click.echo(f"corral: error: {message}", err=True)
            sys.exit(USAGE)

    return command


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The status as JSON, as corral sends it.")
@control_command
def status(client: ControlClient, as_json: bool) -> None:
    """Show the processes and jobs of the corral running here."""
    if as_json:
        click.echo(client.get("/status").decode())
    else:
        click.echo(render_status(client.get_json("/status"), time.time()))


@click.command()
@click.argument("group", required=False)
@control_command
def reload(client: ControlClient, group: str | None) -> None:
    """Reload GROUP, or everything.

    The web group reloads one worker at a time, with no failed request.
    """
    click.echo(client.post_json("/reload", {"group": group})["message"])


@click.command()
@click.argument("target")
@control_command
def restart(client: ControlClient, target: str) -> None:
    """Restart TARGET: a group (web, worker) or one process (web.2)."""
    click.echo(client.post_json("/restart", {"target": target})["message"])


def _parse_counts(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        group, equals, number = value.partition("=")
        if not group or not equals or not (number.isascii() and number.isdigit()):
            raise click.BadParameter(
                f"{value!r}: expected GROUP=N, with N a number of processes (web=4)", ctx, param
            )
        if group in counts:
            raise click.BadParameter(f"{group} is given twice", ctx, param)
        counts[group] = int(number)
    return counts


@click.command()
@click.argument("counts", metavar="GROUP=N...", nargs=-1, required=True, callback=_parse_counts)
@control_command
def scale(client: ControlClient, counts: dict[str, int]) -> None:
    """Run N processes of each GROUP (corral scale web=4 worker=2)."""
    click.echo(client.post_json("/scale", {"counts": counts})["message"])


@click.command()
@control_command
def stop(client: ControlClient) -> None:
    """Stop the corral running here, gracefully."""
    click.echo(client.post_json("/stop")["message"])


@click.group()
def jobs() -> None:
    """Scheduled jobs."""


@jobs.command("run")
@click.argument("name")
@control_command
def run_job(client: ControlClient, name: str) -> None:
    """Run job NAME now (its overlap policy applies)."""
    click.echo(client.post_json(f"/jobs/{quote(name, safe='')}/run")["message"])


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0),
    metavar="N",
    default=DEFAULT_LOG_LINES,
    show_default=True,
    help="How many past lines to show.",
)
@click.argument("selector", metavar="[GROUP]", required=False)
@control_command
def logs(client: ControlClient, follow: bool, lines: int, selector: str | None) -> None:
    """Show the recent output of the processes.

    GROUP selects a group (web) or one process (web.2); all processes by default.
    """
    query = {"lines": lines, "follow": int(follow), **({"group": selector} if selector else {})}
    color = sys.stdout.isatty()
    # Ctrl-C is how a follow ends: exit 0, quietly.
    with (
        contextlib.suppress(KeyboardInterrupt),
        contextlib.closing(client.stream_lines(f"/logs?{urlencode(query)}")) as entries,
    ):
        for entry in entries:
            click.echo(prefix_for(entry["process"], color) + entry["line"])


@click.command()
@click.option("--read-only", is_flag=True, help="A login that sees everything and changes nothing.")
@click.option("--no-browser", is_flag=True, help="Print the link only, even with a display.")
@control_command
def dashboard(client: ControlClient, read_only: bool, no_browser: bool) -> None:
    """Print a one-time login link to the dashboard, and open it where a browser can.

    The dashboard is served on the control API's TCP address (corral run
    --control 127.0.0.1:9000); the link is good once, for a few minutes.
    """
    role = "read-only" if read_only else "admin"
    answer = client.post_json("/dashboard/login-code", {"role": role})
    minutes = counted(round(answer["expires_in"] / 60), "minute")
    click.echo(answer["url"])
    click.echo(f"(a one-time login as {answer['role']}, good for {minutes})", err=True)
    if not no_browser and has_display():
        webbrowser.open(answer["url"])


def has_display() -> bool:
    """Whether a browser opened here would show up: a desktop session, not a shell over SSH."""
    return sys.platform == "darwin" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


COMMANDS: list[click.Command] = [status, reload, restart, scale, stop, jobs, logs, dashboard]
