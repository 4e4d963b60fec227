"""`python -m corral` and the `corral` command.

A Ctrl-C while corral's own modules load (before anything has started) is a
stop like any other: exit 130, as a shell reports it, without a traceback.
"""

from __future__ import annotations

import signal
import sys


def main() -> None:
    try:
        from corral.cli import main as cli
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    cli()


if __name__ == "__main__":
    main()
