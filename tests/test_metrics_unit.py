"""The request counters of a worker, and the manager's /metrics built from them and from the app."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.child.request_stats import BUCKETS, Entry, RequestStats
from corral.manager import metrics as metrics_module
from corral.manager.metrics import (
    Metrics,
    ProcessSample,
    prepare_multiprocess_dir,
    remove_multiprocess_dir,
)

# Above Linux's PID_MAX_LIMIT (2**22): no process can have this pid.
DEAD_PID = 2**22 + 1

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(body: bytes) -> Samples:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def entries(*requests: tuple[str, int, float]) -> list[Entry]:
    """The entries a worker's protocol records for `requests` (method, status, seconds)."""
    return [
        (method, status, 10**9, 10**9 + round(seconds * 1e9))
        for method, status, seconds in requests
    ]


def snapshot(*requests: tuple[str, int, float], in_flight: int = 0) -> dict[str, Any]:
    """A worker's snapshot after `requests`, as it arrives over the JSON channel."""
    stats = RequestStats()
    stats.count(entries(*requests))
    stats.in_flight = in_flight
    return json.loads(json.dumps(stats.snapshot()))


# -- RequestStats ------------------------------------------------------------------


def test_requests_are_counted_by_method_and_status() -> None:
    stats = RequestStats()
    stats.count(entries(("GET", 200, 0.001), ("GET", 200, 0.002), ("POST", 500, 0.003)))
    stats.count(entries(("GET", 404, 0.004), ("GET", 200, 0.001)))

    assert sorted(stats.snapshot()["by"]) == [["GET", 200, 3], ["GET", 404, 1], ["POST", 500, 1]]


def test_a_duration_on_a_bound_falls_in_that_bucket() -> None:
    stats = RequestStats()
    durations = (0.0, 0.005, 0.0050001, 0.1, 10.0, 10.0001, 3600.0)
    stats.count(entries(*(("GET", 200, seconds) for seconds in durations)))

    expected = [0] * (len(BUCKETS) + 1)
    expected[0] = 2  # 0.0 and 0.005: le="0.005"
    expected[1] = 1  # 0.0050001: le="0.01"
    expected[BUCKETS.index(0.1)] = 1
    expected[BUCKETS.index(10.0)] = 1
    expected[-1] = 2  # +Inf
    snap = stats.snapshot()
    assert snap["buckets"] == expected
    assert snap["sum"] == pytest.approx(0.0 + 0.005 + 0.0050001 + 0.1 + 10.0 + 10.0001 + 3600.0)


def test_unknown_methods_share_one_label() -> None:
    stats = RequestStats()
    stats.count(entries(*((f"X-{i}", 200, 0.001) for i in range(100))))
    stats.count(entries(("get", 200, 0.001), ("PATCH", 200, 0.001)))  # case-sensitive
    stats.count(entries(("X-1", 200, 0.001)))  # an unknown method seen before

    assert sorted(stats.snapshot()["by"]) == [["PATCH", 200, 1], ["_OTHER", 200, 102]]


def test_snapshots_are_json_and_cumulative() -> None:
    stats = RequestStats()
    stats.count(entries(("GET", 200, 0.02)))
    stats.in_flight = 3
    first = stats.snapshot()
    assert json.loads(json.dumps(first)) == first

    stats.count(entries(("GET", 200, 0.2)))
    stats.in_flight = 1
    second = stats.snapshot()

    assert second["by"] == [["GET", 200, 2]]
    assert sum(second["buckets"]) == 2
    assert second["sum"] == pytest.approx(0.22)
    assert second["in_flight"] == 1
    # The first snapshot was not changed under the channel's feet.
    assert first["by"] == [["GET", 200, 1]]
    assert sum(first["buckets"]) == 1
    assert first["in_flight"] == 3


# -- aggregation -------------------------------------------------------------------


def test_workers_snapshots_add_up() -> None:
    metrics = Metrics(None)
    metrics.worker_stats("web.1", 101, snapshot(("GET", 200, 0.003), ("GET", 200, 0.3)))
    metrics.worker_stats(
        "web.2",
        102,
        snapshot(("GET", 200, 0.007), ("POST", 500, 20.0), ("GET", 200, 0.004), in_flight=2),
    )

    samples = parse(metrics.render([]))

    assert value(samples, "corral_http_requests_total", method="GET", status="200") == 4
    assert value(samples, "corral_http_requests_total", method="POST", status="500") == 1
    assert value(samples, "corral_http_requests_in_flight") == 2
    name = "corral_http_request_duration_seconds"
    buckets = [value(samples, f"{name}_bucket", le=str(bound)) for bound in BUCKETS]
    buckets.append(value(samples, f"{name}_bucket", le="+Inf"))
    assert buckets == sorted(buckets)  # cumulative
    assert value(samples, f"{name}_bucket", le="0.005") == 2
    assert value(samples, f"{name}_bucket", le="0.01") == 3
    assert value(samples, f"{name}_bucket", le="10.0") == 4
    assert buckets[-1] == value(samples, f"{name}_count") == 5
    assert value(samples, f"{name}_sum") == pytest.approx(0.003 + 0.3 + 0.007 + 20.0 + 0.004)


def test_a_newer_snapshot_replaces_the_older_one() -> None:
    metrics = Metrics(None)
    metrics.worker_stats("web.1", 101, snapshot(("GET", 200, 0.01), in_flight=5))
    metrics.worker_stats(
        "web.1", 101, snapshot(("GET", 200, 0.01), ("GET", 200, 0.01), ("GET", 200, 0.01))
    )

    samples = parse(metrics.render([]))

    assert value(samples, "corral_http_requests_total", method="GET", status="200") == 3
    assert value(samples, "corral_http_request_duration_seconds_count") == 3
    assert value(samples, "corral_http_requests_in_flight") == 0


def test_an_exited_workers_counts_stay_and_its_replacement_adds_on() -> None:
    metrics = Metrics(None)
    metrics.worker_stats("web.1", 101, snapshot(*[("GET", 200, 0.01)] * 5, in_flight=1))
    metrics.worker_stats("web.2", 102, snapshot(("GET", 200, 0.01)))
    metrics.worker_exited(101)
    metrics.worker_stats("web.1", 103, snapshot(("GET", 200, 0.01), ("GET", 404, 2.0)))
    metrics.worker_exited(999)  # a child that never reported (a job, say)

    samples = parse(metrics.render([]))

    assert value(samples, "corral_http_requests_total", method="GET", status="200") == 7
    assert value(samples, "corral_http_requests_total", method="GET", status="404") == 1
    assert value(samples, "corral_http_request_duration_seconds_count") == 8
    assert value(samples, "corral_http_request_duration_seconds_sum") == pytest.approx(2.07)
    assert value(samples, "corral_http_requests_in_flight") == 0


def test_restarts_reloads_jobs_and_processes() -> None:
    metrics = Metrics(None)
    metrics.restart("web", "crash")
    metrics.restart("web", "crash")
    metrics.restart("web", "max-memory")
    metrics.restart("jobs", "timeout")
    metrics.reload("ok")
    metrics.job_run("backup", "ok", 2.0, 1000.0)
    metrics.job_run("backup", "failed", 1.0, 1100.0)
    metrics.job_run("backup", "ok", 3.0, 1200.0)
    metrics.job_run("backup", "skipped", 0.0, 1300.0)
    metrics.job_run("report", "timeout", 60.0, 1400.0)
    processes = [
        ProcessSample("web.1", "web", 101, rss=50_000_000, cpu_seconds=1.5),
        ProcessSample("queue.1", "queue", 102, rss=20_000_000, cpu_seconds=0.25),
    ]

    samples = parse(metrics.render(processes))

    assert value(samples, "corral_restarts_total", group="web", cause="crash") == 2
    assert value(samples, "corral_restarts_total", group="web", cause="max-memory") == 1
    assert value(samples, "corral_restarts_total", group="jobs", cause="timeout") == 1
    assert value(samples, "corral_reloads_total", result="ok") == 1
    assert value(samples, "corral_reloads_total", result="failed") == 0
    assert value(samples, "corral_job_runs_total", job="backup", result="ok") == 2
    assert value(samples, "corral_job_runs_total", job="backup", result="failed") == 1
    assert value(samples, "corral_job_runs_total", job="backup", result="skipped") == 1
    assert value(samples, "corral_job_duration_seconds_count", job="backup") == 3
    assert value(samples, "corral_job_duration_seconds_sum", job="backup") == 6.0
    assert value(samples, "corral_job_duration_seconds_count", job="report") == 1
    assert value(samples, "corral_job_last_success_timestamp_seconds", job="backup") == 1200.0
    assert ("corral_job_last_success_timestamp_seconds", (("job", "report"),)) not in samples
    web = {"process": "web.1", "group": "web"}
    queue = {"process": "queue.1", "group": "queue"}
    assert value(samples, "corral_process_resident_memory_bytes", **web) == 50_000_000
    assert value(samples, "corral_process_resident_memory_bytes", **queue) == 20_000_000
    assert value(samples, "corral_process_cpu_seconds_total", **web) == 1.5
    assert value(samples, "corral_process_cpu_seconds_total", **queue) == 0.25


def test_unknown_causes_and_results_are_refused() -> None:
    metrics = Metrics(None)
    with pytest.raises(ValueError, match="restart cause"):
        metrics.restart("web", "boredom")
    with pytest.raises(ValueError, match="reload result"):
        metrics.reload("meh")
    with pytest.raises(ValueError, match="job result"):
        metrics.job_run("backup", "meh", 1.0, 1.0)


def test_the_exposition_declares_types() -> None:
    body = Metrics(None).render([]).decode()

    assert "# TYPE corral_http_requests_total counter" in body
    assert "# TYPE corral_http_request_duration_seconds histogram" in body
    assert "# TYPE corral_http_requests_in_flight gauge" in body
    assert "# TYPE corral_job_duration_seconds summary" in body


# -- the app's own metrics, from several processes ---------------------------------

APP_PROCESS = """
import os, sys
from prometheus_client import Counter, Gauge
Counter("app_things", "Things done.").inc(int(sys.argv[1]))
Gauge("app_busy", "Busy processes.", multiprocess_mode="livesum").set(1)
print(os.getpid())
"""


def run_app_process(directory: Path, things: int) -> int:
    """Run a process that counts `things` in the multiprocess directory; its pid."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    done = subprocess.run(
        [sys.executable, "-c", APP_PROCESS, str(things)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(done.stdout)


def test_the_apps_metrics_of_all_processes_are_merged(tmp_path: Path) -> None:
    first = run_app_process(tmp_path, 3)
    second = run_app_process(tmp_path, 4)
    assert first != second
    metrics = Metrics(tmp_path)
    metrics.worker_stats("web.1", first, snapshot(("GET", 200, 0.01)))

    body = metrics.render([])

    assert b"app_things_total 7.0" in body.splitlines()
    samples = parse(body)
    assert value(samples, "app_things_total") == 7
    assert value(samples, "app_busy") == 2
    assert value(samples, "corral_http_requests_total", method="GET", status="200") == 1

    metrics.worker_exited(first)
    samples = parse(metrics.render([]))

    assert value(samples, "app_busy") == 1  # a dead process is busy no more
    assert value(samples, "app_things_total") == 7  # but what it counted stays
    assert value(samples, "corral_http_requests_total", method="GET", status="200") == 1


def test_importing_the_module_leaves_prometheus_client_unimported() -> None:
    """Else the manager would fix prometheus_client's mode before setting the directory."""
    code = "import sys, corral.manager.metrics; print('prometheus_client' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "False"


# -- the multiprocess directory ---------------------------------------------------


def test_a_private_directory_is_made_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path, owned = prepare_multiprocess_dir({"PROMETHEUS_MULTIPROC_DIR": ""})

    assert owned
    assert path.parent == tmp_path
    assert path.name.startswith("corral-metrics-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    (path / "counter_1234.db").write_bytes(b"x")

    remove_multiprocess_dir(path, owned)
    assert not path.exists()
    remove_multiprocess_dir(path, owned)  # already gone: fine


def test_the_users_directory_is_used_and_kept(tmp_path: Path) -> None:
    given = tmp_path / "metrics" / "app"
    path, owned = prepare_multiprocess_dir({"PROMETHEUS_MULTIPROC_DIR": str(given)})

    assert (path, owned) == (given, False)
    assert path.is_dir()
    remove_multiprocess_dir(path, owned)
    assert path.is_dir()


def test_the_old_lower_case_name_is_accepted_and_the_upper_case_wins(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"

    assert prepare_multiprocess_dir({"prometheus_multiproc_dir": str(lower)}) == (lower, False)
    both = {"prometheus_multiproc_dir": str(lower), "PROMETHEUS_MULTIPROC_DIR": str(upper)}
    assert prepare_multiprocess_dir(both) == (upper, False)


def test_a_relative_directory_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    path, _ = prepare_multiprocess_dir({"PROMETHEUS_MULTIPROC_DIR": "metrics"})

    assert path == tmp_path / "metrics"


def test_only_stale_files_are_cleared_from_the_users_directory(tmp_path: Path) -> None:
    stale = [
        f"counter_{DEAD_PID}.db",
        f"histogram_{DEAD_PID}.db",
        f"summary_{DEAD_PID}.db",
        f"gauge_livesum_{DEAD_PID}.db",
        f"gauge_all_{DEAD_PID}.db",
    ]
    kept = [
        f"counter_{os.getpid()}.db",  # a live process's
        f"gauge_max_{os.getpid()}.db",
        f"notes_{DEAD_PID}.db",  # not prometheus_client's naming
        "counter_web-1.db",  # a custom process identifier: cannot tell
        f"counter_{DEAD_PID}.db.bak",
        "README",
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")

    prepare_multiprocess_dir({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_a_directory_corral_makes_is_handed_to_the_apps_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chowned: list[tuple[Path, int, int]] = []
    monkeypatch.setattr(
        metrics_module.os, "chown", lambda path, uid, gid: chowned.append((path, uid, gid))
    )
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    existing = tmp_path / "existing"
    existing.mkdir()

    private, _ = prepare_multiprocess_dir({}, owner=(1001, 1002))
    made, _ = prepare_multiprocess_dir(
        {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "new")}, (1001, -1)
    )
    prepare_multiprocess_dir({"PROMETHEUS_MULTIPROC_DIR": str(existing)}, owner=(1001, 1002))
    prepare_multiprocess_dir({})

    assert chowned == [(private, 1001, 1002), (made, 1001, -1)]


def test_an_exit_without_files_leaves_prometheus_client_unimported(tmp_path: Path) -> None:
    """A worker of an app without metrics is replaced without waiting for that import."""
    code = (
        "import sys; from pathlib import Path; from corral.manager.metrics import Metrics; "
        f"Metrics(Path({str(tmp_path)!r})).worker_exited({DEAD_PID}); "
        "print('prometheus_client' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "False"
