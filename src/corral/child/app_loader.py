"""Import the user's app or `call` target, and explain a failure with the user's own traceback."""

from __future__ import annotations

import difflib
import importlib
import os
import traceback
from pathlib import Path
from typing import Any

from corral.words import with_article

# Frames from these are corral's and Python's machinery, not the user's code.
_NOT_THE_USERS = (
    str(Path(__file__).resolve().parent.parent),
    str(Path(importlib.__file__).resolve().parent),
    "<frozen",
)


class AppLoadError(Exception):
    """The app cannot be loaded; `str()` is what to show the user."""


def load_app(spec: str, factory: bool) -> Any:
    """The object named by `spec` ("module:attribute"), called first if `factory`."""
    module_name, _, attribute = spec.partition(":")
    target = attribute_of(import_module(module_name, spec), module_name, attribute)
    if factory:
        return call_factory(target)
    if not callable(target):
        raise AppLoadError(f"{spec!r} is {with_article(type(target).__name__)}, not callable")
    return target


def import_module(module_name: str, spec: str) -> Any:
    """Import `module_name` (for `spec`, as the user wrote it); AppLoadError if it fails."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise AppLoadError(
                f"cannot import {module_name!r} (for {spec!r}): no module named {error.name!r} "
                f"(the import path starts with the current directory, {os.getcwd()})"
            ) from None
        raise AppLoadError(user_traceback(error)) from None
    except BaseException as error:
        raise AppLoadError(user_traceback(error)) from None


def attribute_of(module: Any, module_name: str, attribute: str) -> Any:
    """`module`'s (dotted) `attribute`; AppLoadError, with a did-you-mean, if it has none."""
    target = module
    for depth, name in enumerate(attribute.split(".")):
        try:
            target = getattr(target, name)
        except AttributeError:
            owner = ".".join([module_name, *attribute.split(".")[:depth]])
            close = difflib.get_close_matches(name, [n for n in dir(target) if n[:1] != "_"])
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise AppLoadError(f"{owner!r} has no attribute {name!r}{hint}") from None
    return target


def call_factory(factory: Any) -> Any:
    """What the app factory returns; AppLoadError with the user's traceback if it raises."""
    try:
        return factory()
    except BaseException as error:
        raise AppLoadError(user_traceback(error)) from None


def user_traceback(error: BaseException) -> str:
    """The traceback of `error` without corral's and importlib's frames above the user's."""
    summary = traceback.TracebackException.from_exception(error)
    frames = [frame for frame in summary.stack if not frame.filename.startswith(_NOT_THE_USERS)]
    summary.stack = traceback.StackSummary.from_list(frames)
    return "".join(summary.format()).rstrip("\n")
