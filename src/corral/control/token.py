"""The bearer tokens that calls on the TCP control listener need: admin and read-only.

The Unix socket needs none: its mode (0600, in a 0700 folder) already
admits only its user. The tokens are written beside that socket, mode 0600,
so the same user's CLI finds them without being told. The read-only token
(CORRAL_READ_TOKEN, or one generated) sees everything and changes nothing:
for a dashboard on a wall, or a colleague's.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

TOKEN_VARIABLE = "CORRAL_TOKEN"
READ_TOKEN_VARIABLE = "CORRAL_READ_TOKEN"


def token_path(socket_path: Path) -> Path:
    return socket_path.with_name(socket_path.name + ".token")


def read_token_path(socket_path: Path) -> Path:
    """Where the read-only token is written: beside the admin one."""
    return socket_path.with_name(socket_path.name + ".read-token")


def load_or_create_token(
    env: Mapping[str, str], variable: str = TOKEN_VARIABLE
) -> tuple[str, bool]:
    """`variable` when set (not empty), else a new random token; and whether it was generated."""
    given = env.get(variable, "")
    if given:
        return given, False
    return secrets.token_urlsafe(32), True


def write_token(path: Path, token: str) -> None:
    """Write `token` to `path`, readable by its owner only from the moment the file exists.

    A file already there (left by an earlier run) is truncated and set to
    0600 too; a symbolic link is refused rather than followed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)
        file.write(token + "\n")


def read_token(path: Path) -> str | None:
    """The token in `path`, or None when there is no such file."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
