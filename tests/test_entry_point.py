"""The `corral` command's entry point (`corral/__main__.py`): the collector paused for the
command line's imports, frozen out of its way, and on again for every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = """
import gc, sys
from corral.__main__ import main
sys.argv = ["corral", "--version"]
try:
    main()
except SystemExit:
    pass
print("enabled:", gc.isenabled(), "frozen:", gc.get_freeze_count() > 1000)
"""


def test_commands_run_with_the_collector_on_and_the_imports_frozen() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=30, check=True
    )
    assert "corral, version" in probe.stdout
    assert "enabled: True frozen: True" in probe.stdout


def test_the_installed_command_and_python_m_both_start() -> None:
    installed = Path(sys.executable).parent / "corral"
    for command in ([str(installed)], [sys.executable, "-m", "corral"]):
        done = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, timeout=30, check=True
        )
        assert done.stdout.startswith("corral, version"), command
