"""Which corrals run in a directory: the target of a verb given no --control.

Each manager's control socket is named after its directory and its pid
(`corral.control.address.control_path`). A socket whose pid is no live corral
manager is what a killed manager left: it and its token are removed wherever
they are found (by the next manager started there, or by a verb). With one
corral running, the verbs talk to it; with several, they list them and ask
for --control.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from corral.addresses import UnixAddress
from corral.control.address import ROOT, control_folder, control_paths
from corral.control.client import ClientError, ControlClient, NotRunning
from corral.control.table import MISSING, render_table
from corral.control.token import read_token, read_token_path, token_path
from corral.errors import UsageError
from corral.posix import is_manager
from corral.words import counted

# A corral that does not answer its status in this long is listed without its details.
STATUS_TIMEOUT = 2.0


class SeveralRunning(UsageError):
    """More than one corral runs in the directory: the message lists them and how to pick one."""

    def __init__(self, project: Path, running: dict[int, Path]) -> None:
        rows = [_describe(pid, path) for pid, path in running.items()]
        table = render_table(("PID", "APP", "CONFIG", "LISTENING", "CONTROL"), rows)
        super().__init__(
            f"{counted(len(running), 'corral')} are running in {project}; "
            "pick one with --control PATH (or CORRAL_CONTROL=PATH):\n" + table
        )


def running_in(project: Path, root: Path = ROOT) -> dict[int, Path]:
    """The control sockets of the corrals running in `project`, by pid; leftovers are removed."""
    live = {}
    for pid, path in sorted(control_paths(project, root).items()):
        if is_manager(pid):
            live[pid] = path
            continue
        for leftover in (path, token_path(path), read_token_path(path)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return live


def the_one_running(project: Path, root: Path = ROOT) -> Path:
    """The control socket of the corral running in `project`.

    NotRunning if there is none; SeveralRunning (a UsageError) if there
    are several, listing them.
    """
    running = running_in(project, root)
    if not running:
        raise NotRunning(f"no control socket for {project} in {control_folder(root)}")
    if len(running) > 1:
        raise SeveralRunning(project, running)
    return next(iter(running.values()))


def token_here(project: Path, root: Path = ROOT) -> str | None:
    """The token that the one corral running in `project` wrote beside its socket, if any."""
    tokens = {read_token(token_path(path)) for path in running_in(project, root).values()}
    tokens.discard(None)
    return tokens.pop() if len(tokens) == 1 else None


def _describe(pid: int, path: Path) -> list[str]:
    """A row for the listing: what the corral says of itself, if it answers at once."""
    client = ControlClient(UnixAddress(path), timeout=STATUS_TIMEOUT)
    try:
        about = client.get_json("/status").get("corral", {})
    except (ClientError, ValueError):
        about = {}
    listening = " ".join(about.get("listening") or ()) or MISSING
    app, config = about.get("app") or MISSING, about.get("config") or MISSING
    return [str(pid), app, config, listening, str(path)]
