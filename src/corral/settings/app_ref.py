"""What `corral run APP` names, read without importing anything: a module or a file.

APP is one of:

- `MODULE:ATTRIBUTE` (`main:app`, `app.main:api`), as uvicorn takes it;
- a file, `main.py` or `src/app/main.py`, or a package's folder, as `fastapi run`
  takes it, optionally with `:ATTRIBUTE` (`main.py:application`);
- nothing: then the first of DEFAULT_FILES that exists in the current folder.

A file becomes a module as the FastAPI CLI makes it one: walk up from the file
while the folder holds an `__init__.py`; the folders walked make the dotted
name (`src/app/main.py`, with `src/app/__init__.py` and no `src/__init__.py`, is
`app.main`), and the first folder without one (`src`) goes on the import path.

Without ATTRIBUTE the loader picks the app in the module (`corral.child.app_loader`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_FILES = ("main.py", "app.py", "api.py", "app/main.py", "app/app.py", "app/api.py")
"""Where `corral run` with no APP looks, in this order: the FastAPI CLI's list."""

EXPECTED = "MODULE:ATTRIBUTE (main:app), a file (main.py, src/app/main.py) or a package folder"


@dataclass(frozen=True)
class AppRef:
    """An APP, read: the module to import, the attribute if given, the file if one was named."""

    module: str
    attribute: str | None
    file: Path | None = None  # the file or package folder APP named, as given
    import_root: Path | None = None  # the folder to put first on the import path, for a file

    def __str__(self) -> str:
        return f"{self.module}:{self.attribute}" if self.attribute else self.module


def is_file_ref(value: str) -> bool:
    """Whether APP names a file or folder (`main.py`, `src/app`) rather than MODULE:ATTRIBUTE."""
    where = value.rpartition(":")[0] if _has_attribute(value) else value
    return where.endswith(".py") or "/" in where


def _has_attribute(value: str) -> bool:
    head, colon, tail = value.rpartition(":")
    return bool(colon) and bool(head) and "/" not in tail and not tail.endswith(".py")


def check(value: str) -> str:
    """`value` if it has the shape of an APP; ValueError naming what was expected otherwise."""
    if is_file_ref(value):
        if _has_attribute(value) and not value.rpartition(":")[2].isidentifier():
            raise ValueError(f"expected {EXPECTED}, got {value!r}")
        return value
    module, _, attribute = value.partition(":")
    if not module or not attribute:
        raise ValueError(f"expected {EXPECTED}, got {value!r}")
    return value


def read(value: str, directory: Path) -> AppRef:
    """The module (and import root) that APP `value` names, relative to `directory`.

    Raises ValueError, naming the path looked for, for a file or folder that
    does not exist or that is not a Python module.
    """
    if not is_file_ref(value):
        module, _, attribute = value.partition(":")
        return AppRef(module, attribute or None)
    given, attribute = value, None
    if _has_attribute(value):
        given, _, attribute = value.rpartition(":")
    path = (directory / given).resolve()
    if path.is_dir():
        if not (path / "__init__.py").is_file():
            raise ValueError(f"{given!r} is a folder without __init__.py, not a Python package")
    elif not path.is_file():
        raise ValueError(f"no such file: {given!r} (in {directory})")
    elif path.suffix != ".py":
        raise ValueError(f"{given!r} is not a Python file (.py)")
    module, root = module_of(path)
    return AppRef(module, attribute, Path(given), root)


def module_of(path: Path) -> tuple[str, Path]:
    """The dotted module name of the file or package folder `path`, and its import root.

    A package's `__init__.py` stands for the package itself.
    """
    path = path.resolve()
    if path.name == "__init__.py":
        path = path.parent
    parts = [path.stem if path.is_file() else path.name]
    root = path.parent
    while (root / "__init__.py").is_file():
        parts.insert(0, root.name)
        root = root.parent
    return ".".join(parts), root


def default(directory: Path) -> str | None:
    """The first of DEFAULT_FILES in `directory`, as APP; None if there is none."""
    for name in DEFAULT_FILES:
        if (directory / name).is_file():
            return name
    return None
