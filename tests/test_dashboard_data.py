"""What the dashboard shows, computed: latency quantiles and the web's series, job runs and
their tracebacks, the OOM kill count of a cgroup, sessions and login codes, the Origin rule."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from corral.child.request_stats import BUCKETS
from corral.control.api import same_origin
from corral.control.sessions import ADMIN, READ_ONLY, Sessions, Tokens
from corral.manager import exits
from corral.manager.exits import OomKills, oom_counter
from corral.manager.job_runs import LINE_LIMIT, LINES_KEPT, JobRuns
from corral.manager.metrics import RequestTotals
from corral.manager.series import RequestSeries, quantile

# -- latency quantiles and the web's series -------------------------------------------------


def _buckets(**by_bound: int) -> list[int]:
    """Counts per bucket, by bound: _buckets(b0_005=3, inf=1)."""
    counts = [0] * (len(BUCKETS) + 1)
    for name, count in by_bound.items():
        index = len(BUCKETS) if name == "inf" else BUCKETS.index(float(name[1:].replace("_", ".")))
        counts[index] = count
    return counts


def test_a_quantile_is_interpolated_within_its_bucket_as_prometheus_does():
    # 100 requests: 50 in (0, 5ms], 40 in (5, 10ms], 10 in (10, 25ms].
    buckets = _buckets(b0_005=50, b0_01=40, b0_025=10)
    assert quantile(0.5, buckets) == pytest.approx(0.005)
    assert quantile(0.25, buckets) == pytest.approx(0.0025)
    assert quantile(0.7, buckets) == pytest.approx(0.005 + 0.005 * 20 / 40)
    assert quantile(0.99, buckets) == pytest.approx(0.01 + 0.015 * 9 / 10)


def test_a_quantile_of_nothing_is_none_and_past_the_last_bound_is_that_bound():
    assert quantile(0.5, _buckets()) is None
    assert quantile(0.99, _buckets(b0_005=1, inf=99)) == BUCKETS[-1]


def test_each_point_is_measured_over_the_window_and_the_series_is_bounded():
    series = RequestSeries(kept=20.0, interval=2.0, window=4.0)
    count = errors = 0
    fast = slow = 0
    for tick in range(30):
        # 10 requests a second, 1 of them a 5xx; from tick 26 on, half of them slow (>2.5s).
        count, errors = count + 20, errors + 2
        if tick >= 26:
            slow += 10
            fast += 10
        else:
            fast += 20
        totals = RequestTotals(count, errors, tuple(_buckets(b0_005=fast, b5_0=slow)))
        series.add(1000.0 + 2 * tick, totals)
    points = series.points()
    assert len(points["t"]) == 10  # 20 s kept at 2 s: the newest 10 points, each over 4 s
    assert points["t"][-1] == 1058.0
    assert set(points["rate"]) == {10.0}
    assert set(points["errors"]) == {1.0}
    assert points["p50"][-1] == pytest.approx(5.0)  # ms: half the requests at <= 5 ms
    assert points["p99"][-1] == pytest.approx((2.5 + 2.5 * 0.98) * 1000)
    assert points["p99"][0] == pytest.approx(4.95)  # before the slow ones: all <= 5 ms


def test_the_first_points_are_measured_over_the_samples_there_are():
    series = RequestSeries(kept=60.0, interval=2.0, window=10.0)
    for tick in range(3):
        series.add(100.0 + 2 * tick, RequestTotals(10 * tick, 0, tuple(_buckets(b0_005=10 * tick))))
    points = series.points()
    assert points["t"] == [102.0, 104.0]
    assert points["rate"] == [5.0, 5.0]


def test_a_point_without_requests_has_no_latency():
    series = RequestSeries(interval=1.0, window=1.0)
    series.add(0.0, RequestTotals(5, 0, tuple(_buckets(b0_005=5))))
    series.add(1.0, RequestTotals(5, 0, tuple(_buckets(b0_005=5))))
    assert series.points() == {
        "t": [1.0],
        "rate": [0.0],
        "p50": [None],
        "p99": [None],
        "errors": [0.0],
    }


# -- job runs ----------------------------------------------------------------------------------


def test_a_failed_runs_traceback_is_its_last_one_to_the_end_of_its_output():
    runs = JobRuns()
    run = runs.begin("invoices", "run now")
    run.take(["checking 42", "Traceback (most recent call last):", '  File "a.py"', "KeyError: 1"])
    run.take(["retrying", "Traceback (most recent call last):", '  File "b.py", line 3'])
    run.take(["ValueError: invoice 42 is not balanced"])
    runs.finish(run, "failed: exit code 1", 0.25)
    assert run.failed
    assert run.traceback() == [
        "Traceback (most recent call last):",
        '  File "b.py", line 3',
        "ValueError: invoice 42 is not balanced",
    ]
    shown = run.as_json()
    assert shown["traceback"] == run.traceback()
    assert (shown["result"], shown["duration"], shown["trigger"]) == (
        "failed: exit code 1",
        0.25,
        "run now",
    )


def test_runs_are_numbered_bounded_and_their_output_too():
    runs = JobRuns(kept=3)
    for _ in range(5):
        record = runs.begin("beat", "tick")
        runs.finish(record, "ok", 0.01)
    assert [run.number for run in runs.of("beat")] == [3, 4, 5]
    assert not runs.of("beat")[-1].failed and runs.of("beat")[-1].traceback() == []
    record = runs.begin("chatty", "tick")
    record.take([f"line {n}" for n in range(LINES_KEPT + 50)] + ["x" * (LINE_LIMIT + 10)])
    assert record.result is None and not record.failed  # still running
    assert len(record.output) == LINES_KEPT
    assert record.output[0] == "line 51"
    assert len(record.output[-1]) == LINE_LIMIT
    assert record.as_json()["lines_dropped"] == 51
    skipped = runs.begin("beat", "tick")
    runs.finish(skipped, "skipped: overlap", 0.0)
    assert not skipped.failed


# -- out of memory ------------------------------------------------------------------------------


def test_the_oom_counter_is_found_for_cgroup_v1_and_v2(tmp_path):
    v1 = tmp_path / "memory" / "app" / "memory.oom_control"
    v1.parent.mkdir(parents=True)
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    assert oom_counter("4:memory:/app\n1:cpu:/\n0::/\n", tmp_path) == v1
    v2 = tmp_path / "system.slice" / "memory.events"
    v2.parent.mkdir()
    v2.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n")
    assert oom_counter("0::/system.slice\n", tmp_path) == v2
    assert oom_counter("0::/elsewhere\n", tmp_path) is None


def test_a_sigkill_is_told_out_of_memory_only_after_the_count_rose(tmp_path, monkeypatch):
    counter = tmp_path / "memory.events"
    counter.write_text("oom 0\noom_kill 2\n")
    monkeypatch.setattr(exits, "_oom", OomKills(counter))
    killed = -signal.SIGKILL
    assert exits.describe_exit(killed) == "killed by SIGKILL"  # the count has not moved
    counter.write_text("oom 1\noom_kill 3\n")
    assert exits.describe_exit(killed) == "killed by SIGKILL (out of memory?)"
    assert exits.describe_exit(killed) == "killed by SIGKILL (out of memory?)"  # asked twice
    assert exits.describe_exit(1) == "exit code 1"
    assert exits.describe_exit(-signal.SIGTERM) == "killed by SIGTERM"
    monkeypatch.setattr(exits, "OOM_WINDOW", 0.05)
    time.sleep(0.1)
    assert exits.describe_exit(killed) == "killed by SIGKILL"


def test_without_a_count_nothing_is_guessed(monkeypatch):
    monkeypatch.setattr(exits, "_oom", OomKills(None))
    assert exits.describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


# -- tokens, sessions, the Origin rule ----------------------------------------------------------


def test_each_token_gives_its_role_and_nothing_else_gives_one():
    tokens = Tokens("admin-token", "read-token")
    assert tokens.role_of(b"admin-token") == ADMIN
    assert tokens.role_of(b"read-token") == READ_ONLY
    assert tokens.role_of(b"admin-toke") is None
    assert tokens.role_of(b"") is None
    assert Tokens("admin-token").role_of(b"") is None


def test_a_login_code_opens_one_session_once(monkeypatch):
    sessions = Sessions()
    code = sessions.code(READ_ONLY)
    session = sessions.redeem(code)
    assert session is not None and sessions.role_of(session) == READ_ONLY
    assert sessions.redeem(code) is None  # spent
    assert sessions.redeem("made-up") is None
    late = sessions.code(ADMIN)
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 3600)
    assert sessions.redeem(late) is None  # expired
    sessions.end(session)
    assert sessions.role_of(session) is None


def _scope(**headers: str) -> dict:
    return {
        "scheme": "http",
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


@pytest.mark.parametrize(
    ("headers", "same"),
    [
        ({"host": "127.0.0.1:9000", "origin": "http://127.0.0.1:9000"}, True),
        ({"host": "127.0.0.1:9000", "sec_fetch_site": "same-origin"}, True),
        (
            {
                "host": "127.0.0.1:9000",
                "origin": "http://127.0.0.1:9000",
                "sec_fetch_site": "same-origin",
            },
            True,
        ),
        ({"host": "127.0.0.1:9000", "origin": "http://127.0.0.1:8000"}, False),  # another port
        ({"host": "127.0.0.1:9000", "origin": "null"}, False),
        ({"host": "127.0.0.1:9000", "sec_fetch_site": "same-site"}, False),
        (
            {
                "host": "127.0.0.1:9000",
                "origin": "http://127.0.0.1:9000",
                "sec_fetch_site": "cross-site",
            },
            False,
        ),
        ({"host": "127.0.0.1:9000"}, False),  # neither: not a browser's POST
    ],
)
def test_a_call_with_the_cookie_must_come_from_the_dashboards_own_origin(headers, same):
    assert same_origin(_scope(**headers)) is same


def test_the_dashboard_assets_are_in_the_package():
    import corral.control

    static = Path(corral.control.__file__).parent / "static"
    assert {"index.html", "dashboard.js", "dashboard.css"} <= {p.name for p in static.iterdir()}
