"""`corral export kubernetes|systemd|compose`: corral.toml, carried to the engines of many machines.

From the configuration alone, never from a running corral: the same file
gives the same bytes. One module per engine; `common` holds what they share.
What an engine cannot express faithfully is refused (ExportError) or kept
inside corral, and each such choice is a note the command prints.
"""

from __future__ import annotations

from pathlib import Path

from corral.errors import UsageError
from corral.export import compose, kubernetes, systemd
from corral.export.common import Environment, Export, ExportError, Target, app_name, check_name
from corral.settings import System
from corral.settings.resolve import find, validate

ENGINES = ("kubernetes", "systemd", "compose")

__all__ = ["ENGINES", "Export", "ExportError", "Target", "app_name", "check_name", "export"]


IMAGE_ENGINES = ("kubernetes", "compose")  # those that run corral from an image


def export(engine: str, system: System, target: Target) -> Export:
    """The files and notes of `engine` for `system`, read from `target.config`.

    Raises ExportError when the engine cannot run the system as corral.toml
    says, UsageError when an option it needs is missing.
    """
    if engine in IMAGE_ENGINES and target.image is None:
        raise UsageError(f"{engine}: give --image, the image that holds the app and corral")
    if engine == "systemd":
        return systemd.export(system, target)
    environment = environment_of(target.config)
    if engine == "kubernetes":
        return kubernetes.export(system, target, environment)
    return compose.export(system, target, environment)


def environment_of(config: Path) -> Environment:
    """[env] and env_file as corral.toml writes them (System.env has them merged)."""
    file = find(config, config.parent)
    assert file is not None  # the System was resolved from it
    declared = validate(file)
    folder = config.resolve().parent  # where corral reads env_file from
    text = (folder / declared.env_file).read_text() if declared.env_file is not None else ""
    return Environment(dict(declared.env), declared.env_file, text)
