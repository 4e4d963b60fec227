"""What `corral run` does before its first fork: only what starting needs (issue 14: time to
the first 200)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = """
import sys
from pathlib import Path
import corral.cli
from corral.settings import ProcessConfig, resolve
system = resolve("app:app", {}, None, Path.cwd(), str)
assert system.web is not None and system.web.app == "app:app"
print("verbs imported:", "corral.control.commands" in sys.modules)
print("process model built:", ProcessConfig.__pydantic_complete__)
"""


def test_a_plain_run_imports_no_verb_and_builds_no_unused_validator(tmp_path: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert probe.returncode == 0, probe.stderr
    assert "verbs imported: False" in probe.stdout
    assert "process model built: False" in probe.stdout


def test_the_verbs_still_answer_when_asked_for(tmp_path: Path) -> None:
    status = subprocess.run(
        [sys.executable, "-m", "corral", "status"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 1
    assert "no corral is running here" in status.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "corral", "--help"], capture_output=True, text=True, timeout=30
    )
    for verb in ("status", "reload", "restart", "scale", "stop", "jobs", "logs"):
        assert f"  {verb} " in listed.stdout, listed.stdout


def test_a_file_that_declares_a_process_is_still_validated(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text('[processes.worker]\ncommand = "true"\nreplicas = "x"\n')
    check = subprocess.run(
        [sys.executable, "-m", "corral", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 1
    assert "replicas" in check.stderr, check.stderr
