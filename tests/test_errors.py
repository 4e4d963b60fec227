"""Mistakes caught early, bugs shown as bugs.

A user's mistake is refused by validation (and so by `corral check`) or by the manager as one
message and exit 2, nothing left running. Anything else is a bug in corral: the manager stops
everything in order, prints the traceback and exits 1.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import APPS, Corral

WEB_AND_A_REPLICA = """
[web]
app = "plain:app"
port = 0

[processes.replica]
command = "sleep 60"
"""


def _project(directory: Path, toml: str) -> None:
    shutil.copy(APPS / "plain.py", directory)
    (directory / "corral.toml").write_text(toml)


def _refused(server: Corral) -> list[str]:
    """The error lines of a corral that must refuse to start: exit 2, no traceback, nothing left."""
    assert server.wait(20) == 2, server.output
    assert "Traceback" not in server.output, server.output
    assert server.count(r"listening on|started \(pid") == 0, server.output
    assert not server.wait_until_gone(5)
    return [line for line in server.lines if "error" in line]


def _check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", "check"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=30,
    )


UNSPLITTABLE = {
    "process": (
        "[processes.replica]\ncommand = 'echo \"unclosed'\n",
        "corral.toml: [processes.replica] command: 'echo \"unclosed' cannot be split into "
        "arguments: no closing quotation",
    ),
    "job": (
        '[jobs.tick]\ncommand = "printf \'unclosed"\nevery = 1\n',
        'corral.toml: [jobs.tick] command: "printf \'unclosed" cannot be split into '
        "arguments: no closing quotation",
    ),
    "empty": (
        "[jobs.tick]\ncommand = ' '\nevery = 1\n",
        "corral.toml: [jobs.tick] command: expected a program and its arguments, "
        "got an empty command",
    ),
    "prestart": (
        "[prestart]\nsteps = ['true', 'echo \"unclosed']\n",
        "corral.toml: [prestart] steps: step 2: /bin/sh cannot parse it: "
        "Syntax error: Unterminated quoted string",
    ),
    "never": (
        "[jobs.leap]\ncall = 'plain:app'\nschedule = '0 0 30 2 *'\n",
        "corral.toml: [jobs.leap] schedule: '0 0 30 2 *' never fires (no such date)",
    ),
}


@pytest.mark.parametrize("case", list(UNSPLITTABLE))
def test_a_command_that_cannot_run_is_refused_by_run_and_by_check_naming_the_key(
    corral, tmp_path, case
):
    """Before anything starts: no web worker, no prestart step, not the steps before it."""
    section, message = UNSPLITTABLE[case]
    _project(tmp_path, f'[web]\napp = "plain:app"\nport = 0\n\n{section}')
    assert _refused(corral("run", cwd=tmp_path)) == [f"corral: error: {message}"]
    checked = _check(tmp_path)
    assert (checked.returncode, checked.stderr) == (1, f"corral: error: {message}\n"), checked


def test_a_second_corral_on_a_control_socket_in_use_exits_2_and_leaves_nothing(corral, tmp_path):
    _project(tmp_path, WEB_AND_A_REPLICA)
    path = tmp_path / "control.sock"
    first = corral("run", "--control", str(path), cwd=tmp_path)
    first.url()
    second = corral("run", "--control", str(path), cwd=tmp_path)
    errors = _refused(second)  # its launcher, forked before the refusal, is gone too
    assert len(errors) == 1, second.output
    assert errors[0].endswith(f"| error: a corral is already running with control socket {path}")
    assert first.stop() == 0


def test_a_metrics_directory_that_cannot_be_one_exits_2_naming_it(corral, tmp_path):
    _project(tmp_path, WEB_AND_A_REPLICA)
    taken = tmp_path / "taken"
    taken.write_text("a file, not a directory")
    server = corral("run", cwd=tmp_path, env={"PROMETHEUS_MULTIPROC_DIR": str(taken)})
    errors = _refused(server)
    assert len(errors) == 1, server.output
    assert errors[0].endswith(
        f"| error: PROMETHEUS_MULTIPROC_DIR={taken}: cannot use it as a directory: File exists"
    ), errors


STOPPED = ("web.1", "replica.1")
PLANT_A_BUG = """
import sys

from corral.manager.jobs_group import JobsGroup


def planted(*args, **kwargs):
    raise ValueError("a bug planted by the test")


setattr(JobsGroup, sys.argv[1], planted)  # the manager's own code fails there

from corral.cli import main

sys.argv = ["corral", "run"]
main()
"""


@pytest.mark.parametrize(
    "method",
    ["start", "_tick"],
    ids=["raised while starting", "left in a timer callback"],
)
def test_a_bug_in_the_manager_stops_everything_in_order_shows_its_traceback_and_exits_1(
    launch, tmp_path, method
):
    """A ValueError, which the manager once took for bad usage (exit 2, no stop in order).

    The bug is planted by a wrapper of the test's (the product has no hook for it): it is
    how the manager's boundary is tested, for want of a real input that makes corral fail.
    """
    _project(tmp_path, WEB_AND_A_REPLICA + '\n[jobs.tick]\ncommand = "true"\nevery = "0.3s"\n')
    (tmp_path / "plant.py").write_text(PLANT_A_BUG)
    server = launch([sys.executable, str(tmp_path / "plant.py"), method], tmp_path)

    assert server.wait(40) == 1, server.output
    assert not server.wait_until_gone(5)
    said = server.line_index(r"^corral +\| error: an unexpected error \(a bug in corral\)")
    traceback = server.line_index(r"^corral +\| Traceback \(most recent call last\):$", said)
    cause = server.line_index(r"^corral +\| ValueError: a bug planted by the test$", traceback)
    assert server.line_index(r"^corral +\| .*, in planted$", traceback) < cause
    stops = [server.line_index(rf"^corral +\| {name} stopped ", cause) for name in STOPPED]
    assert server.line_index(r"^corral +\| stopped$", max(stops))
    assert server.count(r"error: a bug planted") == 0, server.output  # not shown as a usage error
    assert server.count(r"web\.1 started|replica\.1 started") == 2, server.output
