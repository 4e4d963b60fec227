"""Telling an ASGI app from a WSGI app by how it is called, without calling it.

An ASGI app is called `await app(scope, receive, send)`; a WSGI app
`app(environ, start_response)`. uvicorn and granian do not guess (they take
`--interface`); hypercorn takes any callable that is not a coroutine
function for WSGI. corral guesses only when the answer is sure, from the
callable's signature after `functools.partial` and `functools.wraps` (what
`inspect.signature` follows), or from its `__call__` for an object (a Flask
or Django application, a middleware instance):

- a coroutine function (`async def`), or an object whose `__call__` is one: ASGI;
- callable with 3 positional arguments and not with 2: ASGI (a plain `def`
  returning an awaitable, a decorated `async def`);
- callable with 2 positional arguments and not with 3: WSGI.

Anything else (`*args`, a third argument with a default, no signature, a
class) is not guessed: the error asks for `--interface asgi` or `wsgi`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Literal

from corral.words import with_article

Interface = Literal["asgi", "wsgi"]
WSGI_NAMES = ("environ", "start_response")
ASGI_NAMES = ("scope", "receive", "send")


class Undecided(Exception):
    """The interface cannot be told from the callable; `str()` says why, for the user."""


class LooksLikeAFactory(Undecided):
    """The callable takes no argument: it makes an app rather than being one."""


def detect(app: Any) -> Interface:
    """ASGI or WSGI, from how `app` is called; Undecided when that is not sure."""
    if not callable(app):
        raise Undecided(f"it is {with_article(type(app).__name__)}, not callable")
    if inspect.isclass(app):
        raise Undecided("it is a class (an app is an instance or a function)")
    if _is_coroutine_callable(app):
        return "asgi"
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):
        raise Undecided("its signature cannot be read") from None
    two, three = _binds(signature, 2), _binds(signature, 3)
    if three and not two:
        return "asgi"
    if two and not three:
        return "wsgi"
    if two and three:
        raise Undecided(
            f"it takes {signature}, which fits both (scope, receive, send) "
            "and (environ, start_response)"
        )
    if _binds(signature, 0):
        raise LooksLikeAFactory(f"it takes {signature}")
    raise Undecided(
        f"it takes {signature}: neither (scope, receive, send) nor (environ, start_response)"
    )


def app_like(value: Any) -> Interface | None:
    """The interface of `value` if it is, surely, an app a module defines; None otherwise.

    Stricter than `detect`, for looking through a module's names: an object
    whose class has a `__call__` of the right shape, or a function whose
    parameters have the specification's names, since any helper function of
    two arguments fits WSGI's shape.
    """
    if inspect.ismodule(value) or inspect.isclass(value) or not callable(value):
        return None
    if inspect.isfunction(value) or inspect.ismethod(value):
        try:
            names = tuple(inspect.signature(value).parameters)
        except (TypeError, ValueError):
            return None
        return {WSGI_NAMES: "wsgi", ASGI_NAMES: "asgi"}.get(names)  # type: ignore[return-value]
    if inspect.isbuiltin(value) or isinstance(value, functools.partial):
        return None
    try:
        return detect(value)
    except Undecided:
        return None


def _is_coroutine_callable(app: Any) -> bool:
    while isinstance(app, functools.partial):
        app = app.func
    if inspect.iscoroutinefunction(app):
        return True
    if inspect.isfunction(app) or inspect.ismethod(app):
        return False
    return inspect.iscoroutinefunction(type(app).__call__)  # what `app(...)` calls


def _binds(signature: inspect.Signature, count: int) -> bool:
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True
