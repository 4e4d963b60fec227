"""Checks that hold only where corral runs: files that must be there, folders a file is made in.

They need the folder that relative paths are read from: the validation
context's `directory`, which `corral.settings.resolve` gives for `run`,
`check`, a reload, `prestart` and `job`, so that each refuses the same file
with the same message before anything starts. Without it (`corral export`,
which writes for another machine; a zygote reading its settings again) they pass.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationInfo

DIRECTORY = "directory"  # the validation context's key: relative paths are read from there


def context(directory: Path) -> dict[str, Any]:
    """The validation context of settings used in `directory`."""
    return {DIRECTORY: directory}


def runs_here(info: ValidationInfo) -> bool:
    """Whether these settings are checked for this machine (not for `corral export`'s)."""
    return (info.context or {}).get(DIRECTORY) is not None


def existing_file(value: Path | None, info: ValidationInfo) -> Path | None:
    """`value`, if a readable file is there; ValueError saying what is wrong otherwise."""
    path = _here(value, info)
    if path is None:
        return value
    if not path.exists():
        raise ValueError(f"no such file {str(value)!r}")
    if not path.is_file():
        raise ValueError(f"{str(value)!r} is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"cannot read {str(value)!r} (permission denied)")
    return value


def existing_folder(value: Path | None, info: ValidationInfo) -> Path | None:
    """`value`, if a folder is there; ValueError otherwise."""
    path = _here(value, info)
    if path is None:
        return value
    if not path.exists():
        raise ValueError(f"no such folder {str(value)!r}")
    if not path.is_dir():
        raise ValueError(f"{str(value)!r} is not a folder")
    return value


def writable_file(value: str | Path | None, info: ValidationInfo) -> str | Path | None:
    """`value`, if corral can write it at start (a log file, the pid file): it is a file it
    may write, or its folder is one it may create it in.

    "-" (stdout) is not a file. ValueError saying what is wrong otherwise.
    """
    if value == "-":
        return value
    path = _here(value, info)
    if path is None:
        return value
    if path.is_dir():
        raise ValueError(f"{str(value)!r} is a folder")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ValueError(f"cannot write {str(value)!r} (permission denied)")
        return value
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"cannot create {str(value)!r}: no such folder {str(folder)!r}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create {str(value)!r}: {str(folder)!r} is not writable")
    return value


def socket_folder(value: str | Path | None, info: ValidationInfo) -> str | Path | None:
    """`value`, a Unix socket's path, if its folder is there; ValueError otherwise.

    Only the folder: the socket may be bound by systemd (socket activation),
    in a folder corral's own user cannot write.
    """
    path = _here(value, info)
    if path is not None and not path.parent.is_dir():
        raise ValueError(f"cannot bind {str(value)!r}: no such folder {str(path.parent)!r}")
    return value


def _here(value: str | Path | None, info: ValidationInfo) -> Path | None:
    """`value` as a path from the context's directory; None when there is nothing to check."""
    directory = (info.context or {}).get(DIRECTORY)
    if value is None or directory is None:
        return None
    return Path(directory) / value
