"""The short forms of benchmarks/chaos.py and benchmarks/soak.py, run as the benchmarks are.

Each script judges its own run (and exits 1 when it fails); these tests run it with
`--short` and a fixed seed, so that a failure in CI can be run again as it happened, and
check its report besides, so that a script that measured nothing cannot pass.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
SEED = "15"


def _run(script: str, tmp_path: Path, *args: str, timeout: float) -> dict[str, Any]:
    """Run `script --short`; its JSON report. Fails with its output if it did not pass."""
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: .ci/run installs it (apt-get install wrk)")
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--short", "--json", str(report), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    logs = "".join(f"\n--- {log.name}:\n{log.read_text()}" for log in tmp_path.glob("*.log"))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}{logs}"
    parsed: dict[str, Any] = json.loads(report.read_text())
    return parsed


@pytest.mark.timeout(180)
def test_chaos_under_load_fails_only_requests_on_killed_workers_and_everything_comes_back(
    tmp_path,
):
    report = _run("chaos.py", tmp_path, "--seed", SEED, timeout=170)
    (corral,) = report["verdicts"]
    assert corral["server"] == "corral" and corral["passed"], corral
    assert corral["requests"] > 1000, corral
    assert corral["failed"] <= corral["bound"], corral
    actions = {event["action"].split(" ")[0] for event in corral["events"]}
    assert {"SIGKILL", "SIGSTOP", "HUP", "scale", "restart"} <= actions, corral["events"]
    assert len(corral["events"]) >= 13, corral["events"]  # each action at least once
    assert all(e["back_s"] is not None for e in corral["events"] if e["group"]), corral
    assert corral["ticks"]["ticks"] >= 10, corral["ticks"]
    assert not corral["ticks"]["twice"] and not corral["ticks"]["missing"], corral["ticks"]
    kills = report["kills"]
    assert {kill["moment"] for kill in kills} == {"boot", "reload", "scale", "job run"}, kills
    assert not any(kill["left"] for kill in kills), kills


@pytest.mark.timeout(120)
def test_soak_keeps_the_managers_memory_descriptors_metrics_files_and_scrape_time(tmp_path):
    report = _run("soak.py", tmp_path, timeout=110)
    assert report["passed"], report
    start, end = report["verdict"]["looks"][0], report["verdict"]["looks"][-1]
    assert end["recycles"] >= 50 and end["requests"] >= 5000, end
    assert end["fds"] - start["fds"] <= 2, (start, end)
    assert end["dead_files"] == 0, end
    assert end["app_requests"] == end["requests"], end
