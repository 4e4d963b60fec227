"""Run a Python callable as a process: `python -m corral.child.runner NAME MODULE:FUNCTION`.

For `[processes.NAME] call = ...`, `[jobs.NAME] call = ...` and prestart
`{ call = ... }`. A coroutine function (or a function returning an
awaitable) runs in its own event loop. SIGTERM or SIGINT asks it to stop:
a sync function gets SystemExit (its `finally` blocks run; no
KeyboardInterrupt traceback), an async one is cancelled. Exit code 0 when
it returns, 1 with its traceback when it raises.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import sys
from typing import Any

from corral import posix
from corral.child.app_loader import AppLoadError, load_app, user_traceback
from corral.exit_codes import FAILURE, OK

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_callable(target: Any) -> int:
    if inspect.iscoroutinefunction(target):
        return _run_async(target)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _exit_on_term)
    try:
        result = target()
        if inspect.isawaitable(result):
            return _run_async(lambda: result)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else FAILURE
    except BaseException as error:
        print(user_traceback(error), file=sys.stderr, flush=True)
        return FAILURE
    return OK


def _exit_on_term(sig: int, frame: object) -> None:
    raise SystemExit(OK)


def _run_async(make: Any) -> int:
    async def main() -> int:
        task = asyncio.ensure_future(make())
        for sig in STOP_SIGNALS:
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            return OK
        except Exception as error:
            # Caught here, the traceback starts at the user's code, not in asyncio.run.
            print(user_traceback(error), file=sys.stderr, flush=True)
            return FAILURE
        return OK

    return asyncio.run(main())


IMPORT_ONLY = "--import-only"
"""After NAME and TARGET: import the target and exit, 0 if it imports (the manager's check
of the current code before a reload replaces running processes with it)."""


def main() -> int:
    name, target_name, *rest = sys.argv[1:]
    posix.set_title(f"corral: {name}")  # the launcher asked for the parent-death signal
    try:
        target = load_app(target_name, factory=False)
    except AppLoadError as error:
        print(error, file=sys.stderr, flush=True)
        return FAILURE
    if rest == [IMPORT_ONLY]:
        return OK
    return run_callable(target)


if __name__ == "__main__":
    sys.exit(main())
