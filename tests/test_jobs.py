"""Scheduled jobs ([jobs.NAME]), tested on real processes: one run per tick whatever the number
of web workers, runs forked from the jobs zygote, failures, overlap, timeouts, commands, async
callables, per-job environment, cron schedules, jitter, broken targets and stopping.

Each test writes its corral.toml and a `tasks.py` under tmp_path; the jobs record what they see
(times, pids) in files there, which the tests read.
"""

from __future__ import annotations

import re
import shutil
import signal
import statistics
import sys
import time
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from textwrap import dedent

import psutil
from prometheus_client.parser import text_string_to_metric_families

from conftest import Clock
from corral.manager.schedule import Schedule
from corral.settings import JobConfig

APPS = Path(__file__).parent / "apps"

TASKS = '''
"""Jobs for corral's tests: each appends what it saw to a file in the current directory."""

import asyncio
import os
import time

IMPORTED_BY = os.getpid()  # the process that imported this module (the jobs zygote, for a call)


def _since_fork() -> float:
    """Seconds since this process was created (fork time, 10 ms resolution)."""
    with open("/proc/self/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    created = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return time.clock_gettime(time.CLOCK_BOOTTIME) - created


def _append(name, *fields):
    with open(name, "a") as file:
        file.write(" ".join(str(field) for field in fields) + "\\n")


def tick():
    _append("tick.txt", time.time(), os.getpid(), os.getppid(), IMPORTED_BY, _since_fork())


def other():
    _append("other.txt", time.time(), os.getpid())


def boom():
    _append("boom.txt", time.time())
    check_the_invoice(int(os.environ.get("INVOICE", "0")))


def check_the_invoice(number):
    raise ValueError(f"invoice {number} is not balanced")


async def async_tick():
    await asyncio.sleep(0.01)
    _append("async.txt", time.time(), os.getpid(), asyncio.get_running_loop() is not None)


async def async_boom():
    await asyncio.sleep(0)
    await reconcile_the_ledger()


async def reconcile_the_ledger():
    raise KeyError("ledger")


def slow():
    """Sleep SLOW_SECONDS, recording start and end lines (pid, time)."""
    _append("slow.txt", "start", os.getpid(), time.time())
    time.sleep(float(os.environ["SLOW_SECONDS"]))
    _append("slow.txt", "end", os.getpid(), time.time())


def stamp():
    """Record the tick this run is for (CORRAL_JOB_TICK) and when it ran."""
    _append("stamp.txt", os.environ["CORRAL_JOB_TICK"], time.time())


def probe():
    """Record the environment this run sees, in PROBE.txt."""
    _append(
        os.environ["PROBE"] + ".txt",
        os.environ.get("GREETING", "-"),
        os.environ.get("SHARED", "-"),
    )
'''


# -- helpers -------------------------------------------------------------------


def _system(tmp_path: Path, toml: str) -> Path:
    """Write corral.toml, tasks.py and plain.py (a [web] app) into tmp_path."""
    shutil.copy(APPS / "plain.py", tmp_path / "plain.py")
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "corral.toml").write_text(dedent(toml))
    return tmp_path


def _records(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _wait_records(path: Path, count: int, timeout: float = 20, server=None) -> list[list[str]]:
    """Wait until `path` holds at least `count` records; return them."""
    deadline = time.monotonic() + timeout
    while True:
        records = _records(path)
        if len(records) >= count:
            return records
        if time.monotonic() > deadline:
            output = f"\n{server.output}" if server is not None else ""
            raise AssertionError(f"{path.name}: {len(records)} records, wanted {count}{output}")
        time.sleep(0.05)


def _wait_count(server, pattern: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while server.count(pattern) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{server.count(pattern)} lines matching {pattern!r}, wanted {count}:\n"
                f"{server.output}"
            )
        time.sleep(0.05)


def _lines_of(server, name: str) -> list[str]:
    """The output lines of the process named `name` (without their prefix)."""
    prefix = re.compile(rf"^{re.escape(name)}\s+\| ?(.*)$")
    return [m.group(1) for line in server.lines if (m := prefix.match(line))]


def _title_pids(server, title: str) -> list[int]:
    pids = []
    for proc in server.alive():
        try:
            if " ".join(proc.cmdline()).strip() == title:
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _slow_intervals(path: Path) -> list[tuple[float, float]]:
    """(start, end) of each finished run of tasks.slow, by pid, sorted by start."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for kind, pid, at in _records(path):
        (starts if kind == "start" else ends)[pid] = float(at)
    return sorted((starts[pid], ends[pid]) for pid in ends)


# -- one run per tick ----------------------------------------------------------------


def test_an_every_job_runs_once_per_tick_however_many_web_workers(corral, tmp_path):
    _system(
        tmp_path,
        """
        [web]
        app = "plain:app"
        port = 0
        workers = 3

        [jobs.tick]
        call = "tasks:tick"
        every = "1s"
        """,
    )
    server = corral("run", cwd=tmp_path)
    server.url()
    server.wait_workers(3)
    first = float(_wait_records(tmp_path / "tick.txt", 1, server=server)[0][0])
    window_start = time.time()
    time.sleep(5)
    window_end = time.time()
    time.sleep(0.5)  # let a run forked right at the window's end write its line

    times = [float(record[0]) for record in _records(tmp_path / "tick.txt")]
    in_window = [t for t in times if window_start < t <= window_end]
    assert 4 <= len(in_window) <= 6, (in_window, server.output)
    # Exactly one run per tick: the runs sit on a 1 s grid, one per grid point, none twice.
    gaps = [b - a for a, b in pairwise(times)]
    assert all(gap > 0.5 for gap in gaps), (gaps, server.output)
    ticks = [round(t - first) for t in times]
    assert ticks == list(range(len(times))), (times, server.output)
    pids = [record[1] for record in _records(tmp_path / "tick.txt")]
    assert len(set(pids)) == len(pids)  # each run its own process
    assert server.stop() == 0


def test_a_run_is_a_fork_of_the_jobs_zygote_not_a_fresh_interpreter(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.tick]
        call = "tasks:tick"
        every = "1s"
        """,
    )
    server = corral("run", cwd=tmp_path)
    records = _wait_records(tmp_path / "tick.txt", 4, server=server)
    (zygote,) = _title_pids(server, "corral: jobs.zygote")

    for _, pid, ppid, imported_by, _ in records:
        assert int(ppid) == zygote, (records, zygote)
        assert int(imported_by) == zygote  # tasks.py was imported once, by the zygote
        assert int(pid) != zygote
    latencies = [float(record[4]) for record in records]
    # From fork to the job's first line: a fork costs milliseconds; an interpreter start
    # and imports would cost a tenth of a second or more.
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 1.0, latencies
    assert server.stop() == 0


# -- failures --------------------------------------------------------------------------


def test_a_job_that_raises_is_logged_with_its_traceback_and_the_schedule_goes_on(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.boom]
        call = "tasks:boom"
        every = "1s"
        env = { INVOICE = "42" }
        """,
    )
    server = corral("run", cwd=tmp_path)
    _wait_count(server, r"^corral\s+\| boom run failed \(exit code 1, [\d.]+s\)$", 3)
    assert len(_wait_records(tmp_path / "boom.txt", 3, server=server)) >= 3

    lines = _lines_of(server, "boom")
    first = lines.index("Traceback (most recent call last):")
    traceback = lines[first : first + 7]
    # The user's frames, from the job's function down; none of corral's.
    assert re.match(r'File ".*/tasks\.py", line \d+, in boom$', traceback[1].strip()), lines
    assert any(re.search(r"in check_the_invoice$", line) for line in traceback), lines
    assert "ValueError: invoice 42 is not balanced" in lines
    assert not [line for line in lines if "corral/" in line], lines
    assert lines.count("ValueError: invoice 42 is not balanced") >= 3  # each failed run
    assert server.stop() == 0


def test_a_jobs_zygote_that_dies_is_replaced_and_the_schedule_goes_on(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.tick]
        call = "tasks:tick"
        every = "0.5s"
        """,
    )
    server = corral("run", cwd=tmp_path)
    first = _wait_records(tmp_path / "tick.txt", 2, server=server)
    (zygote,) = _title_pids(server, "corral: jobs.zygote")
    psutil.Process(zygote).kill()
    server.wait_for(r"jobs\.zygote exited unexpectedly \(killed by SIGKILL\): starting a new one")
    later = _wait_records(tmp_path / "tick.txt", len(first) + 4, server=server)[len(first) + 2 :]
    (replacement,) = _title_pids(server, "corral: jobs.zygote")
    assert replacement != zygote
    assert {int(record[2]) for record in later} == {replacement}, later  # forked by the new one
    assert server.stop() == 0


def _grid(ticks: list[float], every: float) -> list[int]:
    """Each tick's place on the job's grid, counted from the first: 0, 1, 2..."""
    return [round((tick - ticks[0]) / every) for tick in ticks]


def test_each_run_knows_its_tick_which_a_late_run_keeps(corral, tmp_path):
    """CORRAL_JOB_TICK is the Unix time the run was scheduled for, on the job's grid."""
    _system(
        tmp_path,
        """
        [jobs.stamp]
        call = "tasks:stamp"
        every = "0.5s"
        """,
    )
    server = corral("run", cwd=tmp_path)
    records = _wait_records(tmp_path / "stamp.txt", 4, server=server)
    assert server.stop() == 0
    ticks = [float(tick) for tick, _ in records]
    assert _grid(ticks, 0.5) == list(range(len(ticks))), records
    assert all(
        abs(tick - first - 0.5 * i) < 0.002
        for i, (tick, first) in enumerate((t, ticks[0]) for t in ticks)
    ), records
    for tick, ran in records:
        assert 0 <= float(ran) - float(tick) < 0.3, records  # it runs at its tick, not before


def test_a_tick_due_while_the_jobs_zygote_is_replaced_runs_late_rather_than_never(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.stamp]
        call = "tasks:stamp"
        every = "0.1s"
        overlap = "allow"
        """,
    )
    server = corral("run", cwd=tmp_path)
    _wait_records(tmp_path / "stamp.txt", 3, server=server)
    for deaths in (1, 2):  # the second death in a row is replaced after a backoff of 0.5 s
        (zygote,) = _title_pids(server, "corral: jobs.zygote")
        psutil.Process(zygote).kill()
        killed = time.time()
        _wait_count(server, r"jobs\.zygote exited unexpectedly \(killed by SIGKILL\)", deaths)
        deadline = time.monotonic() + 10
        while _title_pids(server, "corral: jobs.zygote") in ([], [zygote]):
            assert time.monotonic() < deadline, server.output
            time.sleep(0.02)
    deadline = time.monotonic() + 10
    while max(float(tick) for tick, _ in _records(tmp_path / "stamp.txt")) < killed + 1:
        assert time.monotonic() < deadline, server.output
        time.sleep(0.05)
    assert server.stop() == 0
    ticks = sorted(float(tick) for tick, _ in _records(tmp_path / "stamp.txt"))
    places = _grid(ticks, 0.1)
    assert len(set(places)) == len(places), (places, server.output)  # none twice
    # None missed: a tick without its stamp is one whose run was in flight when its zygote
    # was killed (it dies with it), and that run was reported failed.
    missing = set(range(places[-1] + 1)) - set(places)
    assert len(missing) <= server.count(r"stamp run failed"), (places, server.output)
    assert "tick missed" not in server.output
    assert "run missed" not in server.output


def test_a_run_lost_with_a_retiring_jobs_zygote_no_longer_blocks_the_schedule(corral, tmp_path):
    """After a reload the old jobs zygote waits for its run; killed, it takes the run's report
    with it. The run counts as failed, and the next ticks are no longer skipped for it."""
    _system(
        tmp_path,
        """
        [jobs.slow]
        call = "tasks:slow"
        every = "1s"
        env = { SLOW_SECONDS = "2" }
        """,
    )
    server = corral("run", cwd=tmp_path)
    _wait_records(tmp_path / "slow.txt", 1, server=server)
    server.send(signal.SIGHUP)
    server.wait_for(r"jobs reloaded")
    (retiring,) = [row["pid"] for row in server.status()["processes"] if row["state"] == "retiring"]
    psutil.Process(retiring).kill()
    killed = time.time()
    deadline = time.monotonic() + 10
    while not any(
        kind == "start" and float(at) > killed for kind, _, at in _records(tmp_path / "slow.txt")
    ):
        assert time.monotonic() < deadline, f"no run since the kill:\n{server.output}"
        time.sleep(0.05)
    assert server.stop() == 0


def test_an_async_job_that_raises_is_logged_from_the_users_frame(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.aboom]
        call = "tasks:async_boom"
        every = "1s"
        """,
    )
    server = corral("run", cwd=tmp_path)
    _wait_count(server, r"^corral\s+\| aboom run failed \(exit code 1, [\d.]+s\)$", 2)
    assert server.stop() == 0
    lines = _lines_of(server, "aboom")
    first = lines.index("Traceback (most recent call last):")
    last = lines.index("KeyError: 'ledger'", first)
    frames = [line.strip() for line in lines[first + 1 : last] if line.strip().startswith("File")]
    assert frames, lines
    assert re.search(r"in reconcile_the_ledger$", frames[-1]), frames
    # As for a sync job, the traceback starts at the user's function: the event loop's
    # machinery (asyncio.run, run_until_complete) is corral's doing, not the user's code.
    assert re.match(r'File ".*/tasks\.py", line \d+, in async_boom$', frames[0]), frames


def test_a_job_whose_target_does_not_import_fails_its_ticks_and_the_others_run(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.broken]
        call = "no_such_module:run"
        every = "1s"

        [jobs.tick]
        call = "tasks:tick"
        every = "1s"
        """,
    )
    server = corral("run", cwd=tmp_path)
    server.wait_for(r"^jobs\.zygote\s+\| job 'broken': cannot import 'no_such_module:run'")
    _wait_count(server, r"^corral\s+\| broken run failed \(exit code 1, [\d.]+s\)$", 3)
    _wait_records(tmp_path / "tick.txt", 3, server=server)
    broken = _lines_of(server, "broken")
    assert any("no module named 'no_such_module'" in line for line in broken), server.output
    assert server.count(r"tick run failed") == 0
    assert server.stop() == 0


# -- overlap and timeouts ---------------------------------------------------------------


def test_overlap_skip_skips_ticks_while_a_run_is_going_and_never_runs_two_at_once(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.slow]
        call = "tasks:slow"
        every = "1s"
        overlap = "skip"
        env = { SLOW_SECONDS = "1.5" }
        """,
    )
    server = corral("run", cwd=tmp_path)
    _wait_records(tmp_path / "slow.txt", 6, timeout=30, server=server)  # 3 starts, 3 ends
    intervals = _slow_intervals(tmp_path / "slow.txt")
    assert len(intervals) >= 2, server.output
    for (_, end), (start, _) in pairwise(intervals):
        assert start >= end, intervals  # the next run started after the last one ended
    assert server.count(r"^corral\s+\| slow: tick skipped, the previous run is still going$") >= 2
    assert server.stop() == 0
    starts = [r for r in _records(tmp_path / "slow.txt") if r[0] == "start"]
    assert len(starts) == len(_slow_intervals(tmp_path / "slow.txt"))  # stop waited for the last


def test_overlap_allow_lets_runs_overlap(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.slow]
        call = "tasks:slow"
        every = "1s"
        overlap = "allow"
        env = { SLOW_SECONDS = "2.5" }
        """,
    )
    server = corral("run", cwd=tmp_path)
    deadline = time.monotonic() + 20
    most = 0
    while time.monotonic() < deadline and most < 2:
        most = max(most, len(_title_pids(server, "corral: slow")))
        time.sleep(0.1)
    assert most >= 2, f"never two runs at once\n{server.output}"
    _wait_records(tmp_path / "slow.txt", 8, timeout=30, server=server)
    intervals = _slow_intervals(tmp_path / "slow.txt")
    assert any(start < end for (_, end), (start, _) in pairwise(intervals)), intervals
    assert server.count(r"tick skipped") == 0
    assert server.stop() == 0


def test_overlap_allow_starts_exactly_one_run_per_tick(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.tick]
        call = "tasks:tick"
        every = "1s"
        overlap = "allow"
        """,
    )
    server = corral("run", cwd=tmp_path)
    _wait_records(tmp_path / "tick.txt", 4, server=server)
    assert server.stop() == 0  # a run under way finishes first

    records = _records(tmp_path / "tick.txt")
    times = sorted(float(record[0]) for record in records)
    ticks = [round(t - times[0]) for t in times]
    assert ticks == list(range(len(times))), (times, server.output)  # one per grid point
    assert len({record[1] for record in records}) == len(records)  # each run its own process


def _job_runs(server, job: str, result: str) -> float:
    """corral_job_runs_total{job, result} from /metrics (0 when there is no such sample)."""
    text = server.control_get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "corral_job_runs_total"
        and sample.labels == {"job": job, "result": result}
    )


def test_under_the_default_overlap_runs_that_end_in_time_skip_no_tick(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.tick]
        call = "tasks:tick"
        every = "1s"
        """,
    )
    server = corral("run", cwd=tmp_path)
    deadline = time.monotonic() + 20
    while (row := server.status()["jobs"][0])["runs"] < 3:  # three runs have ended
        assert time.monotonic() < deadline, f"{row}\n{server.output}"
        time.sleep(0.1)

    assert row["failures"] == 0, row
    assert _job_runs(server, "tick", "ok") >= 3
    assert _job_runs(server, "tick", "skipped") == 0, server.control_get("/metrics").text
    assert server.count(r"skipped") == 0, server.output
    assert server.stop() == 0


def test_a_run_past_its_timeout_is_killed_and_the_schedule_goes_on(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.slow]
        call = "tasks:slow"
        every = "1s"
        timeout = "1.5s"
        env = { SLOW_SECONDS = "60" }
        """,
    )
    server = corral("run", cwd=tmp_path)
    failed = r"^corral\s+\| slow run failed: killed at its timeout \((\d+\.\d+)s\)$"
    _wait_count(server, failed, 2, timeout=30)
    took = [float(m.group(1)) for line in server.lines if (m := re.search(failed, line))]
    assert all(1.4 <= t < 3.0 for t in took), took
    records = _records(tmp_path / "slow.txt")
    assert len([r for r in records if r[0] == "start"]) >= 2
    assert not [r for r in records if r[0] == "end"]
    for _, pid, _ in records[:-1]:  # every run but maybe the current one is gone
        assert _gone(int(pid)), records
    assert server.stop() == 0


def test_a_command_run_past_its_timeout_is_killed_with_its_children(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.sync]
        command = "sh -c 'echo syncing; sleep 60; echo never'"
        every = "1s"
        timeout = "1.5s"
        """,
    )
    server = corral("run", cwd=tmp_path)
    _wait_count(server, r"^corral\s+\| sync run failed: killed at its timeout", 2, timeout=30)

    def sleepers() -> list[psutil.Process]:
        found = []
        for proc in server.alive():
            try:
                if proc.cmdline()[:2] == ["sleep", "60"]:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    # Killed with their runs (SIGKILL to the run's process group, before the line above): they
    # are gone within moments, not at the end of their 60 s. One may belong to the current run.
    deadline = time.monotonic() + 5
    while len(left := sleepers()) > 1:
        assert time.monotonic() < deadline, f"the killed runs' children live on: {left}"
        time.sleep(0.05)
    assert server.count(r"^sync\s+\| never$") == 0
    assert server.stop() == 0


# -- kinds of job and their environment --------------------------------------------------


def test_a_command_job_runs_with_its_output_prefixed_by_the_jobs_name(corral, tmp_path):
    _system(
        tmp_path,
        f"""
        [jobs.report]
        command = "{sys.executable} -c 'print(\\"report ready\\")'"
        every = "1s"
        """,
    )
    server = corral("run", cwd=tmp_path)
    _wait_count(server, r"^report\s+\| report ready$", 2)
    assert server.count(r"run failed") == 0
    assert server.stop() == 0


def test_an_async_callable_job_runs_in_an_event_loop(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.atick]
        call = "tasks:async_tick"
        every = "1s"
        """,
    )
    server = corral("run", cwd=tmp_path)
    records = _wait_records(tmp_path / "async.txt", 2, server=server)
    assert all(record[2] == "True" for record in records)
    assert server.count(r"run failed") == 0
    assert server.stop() == 0


def test_per_job_env_reaches_that_jobs_runs_only(corral, tmp_path):
    _system(
        tmp_path,
        """
        [env]
        SHARED = "everyone"

        [jobs.greeted]
        call = "tasks:probe"
        every = "1s"
        env = { PROBE = "greeted", GREETING = "hello" }

        [jobs.plain]
        call = "tasks:probe"
        every = "1s"
        env = { PROBE = "plain" }

        [jobs.shell]
        command = "sh -c 'echo shell sees $GREETING and $SHARED'"
        every = "1s"
        env = { GREETING = "bonjour" }
        """,
    )
    server = corral("run", cwd=tmp_path)
    greeted = _wait_records(tmp_path / "greeted.txt", 2, server=server)
    plain = _wait_records(tmp_path / "plain.txt", 2, server=server)
    _wait_count(server, r"^shell\s+\| shell sees bonjour and everyone$", 2)
    assert {tuple(record) for record in greeted} == {("hello", "everyone")}
    # The zygote forks every job: one job's env must not leak into another's runs.
    assert {tuple(record) for record in plain} == {("-", "everyone")}
    assert server.stop() == 0


# -- schedules: cron, timezones, the interval grid, jitter ---------------------------------


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def _job(**settings) -> JobConfig:
    return JobConfig(call="tasks:tick", **settings)


def test_every_ticks_stay_on_the_grid_of_the_start():
    start = 1_000_000.25
    schedule = Schedule(_job(every=10), clock=Clock(start))
    assert schedule.next_tick(start) == start + 10  # strictly after
    assert schedule.next_tick(start + 0.001) == start + 10
    assert schedule.next_tick(start + 9.999) == start + 10
    assert schedule.next_tick(start + 10) == start + 20
    assert schedule.next_tick(start + 37.5) == start + 40  # late: the next grid point, no drift
    assert schedule.next_tick(start - 3) == start  # the clock went back: the start itself

    half = Schedule(_job(every=0.5), clock=Clock(start))
    assert [half.next_tick(start + k * 0.5) for k in range(4)] == [
        start + 0.5,
        start + 1.0,
        start + 1.5,
        start + 2.0,
    ]


def test_every_next_tick_is_strictly_after_on_a_fractional_grid():
    """`every = "100ms"`: asked from a tick, the next tick is the following one, not the same.

    Float arithmetic must not make the tick equal to `after` (a timer of 0 s: the same tick
    run twice).
    """
    schedule = Schedule(_job(every=0.1), clock=Clock(0.0))
    now = 0.0
    for _ in range(1000):
        tick = schedule.next_tick(now)
        assert now < tick <= now + 0.1 + 1e-9, (now, tick)
        assert abs(tick / 0.1 - round(tick / 0.1)) < 1e-6  # on the grid
        now = tick


def test_cron_ticks_in_utc_by_default():
    schedule = Schedule(_job(schedule="*/5 * * * *"), clock=Clock(_utc("2024-06-01T10:02:30")))
    now = _utc("2024-06-01T10:02:30")
    ticks = []
    for _ in range(4):
        now = schedule.next_tick(now)
        ticks.append(now)
    assert ticks == [_utc(f"2024-06-01T10:{m:02d}:00") for m in (5, 10, 15, 20)]
    # Asked after a pause (the machine slept): the first tick after that moment.
    assert schedule.next_tick(_utc("2024-06-01T11:31:00")) == _utc("2024-06-01T11:35:00")


def test_cron_with_a_timezone_follows_its_daylight_saving_time():
    config = _job(schedule="0 9 * * *", timezone="Europe/Paris")
    winter = Schedule(config, clock=Clock(_utc("2024-01-15T12:00:00")))
    assert winter.next_tick(_utc("2024-01-15T12:00:00")) == _utc("2024-01-16T08:00:00")  # CET

    across = Schedule(config, clock=Clock(_utc("2024-03-30T12:00:00")))
    now = _utc("2024-03-30T12:00:00")
    first = across.next_tick(now)
    second = across.next_tick(first)
    assert first == _utc("2024-03-31T07:00:00")  # 9:00 CEST, the day the clocks go forward
    assert second == _utc("2024-04-01T07:00:00")

    hourly = Schedule(
        _job(schedule="0 * * * *", timezone="Europe/Paris"),
        clock=Clock(_utc("2024-10-26T22:30:00")),
    )
    now = _utc("2024-10-26T22:30:00")
    ticks = []
    for _ in range(6):  # across the night the clocks go back (01:00 UTC)
        now = hourly.next_tick(now)
        ticks.append(now)
    assert [b - a for a, b in pairwise(ticks)] == [3600.0] * 5  # no hour twice, none lost
    assert ticks[0] == _utc("2024-10-26T23:00:00")


def test_jitter_delays_within_its_bound():
    schedule = Schedule(_job(every=1, jitter=0.5), clock=Clock(0.0))
    delays = [schedule.jitter() for _ in range(2000)]
    assert all(0 <= d <= 0.5 for d in delays)
    assert max(delays) > 0.45 and min(delays) < 0.05  # spread over the bound
    assert len(set(delays)) > 1900  # random each time, not one fixed offset
    assert Schedule(_job(every=1), clock=Clock(0.0)).jitter() == 0.0
    # Jitter delays the run, not the grid: the ticks are those of the schedule without it.
    assert schedule.next_tick(0.3) == 1.0


def test_a_file_with_cron_jobs_runs_them_and_stops_cleanly(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.report]
        call = "tasks:other"
        schedule = "*/5 * * * *"
        timezone = "Europe/Paris"

        # croniter's optional sixth field is seconds: a cron tick every 2 s, to see one run.
        [jobs.tick]
        call = "tasks:tick"
        schedule = "* * * * * */2"
        """,
    )
    check = corral("check", cwd=tmp_path)
    assert check.wait() == 0, check.output
    server = corral("run", cwd=tmp_path)
    records = _wait_records(tmp_path / "tick.txt", 3, server=server)
    times = [float(record[0]) for record in records]
    assert all(int(t) % 2 == 0 for t in times), times  # on the even seconds
    gaps = [b - a for a, b in pairwise(times)]
    assert all(1.5 < gap < 2.5 for gap in gaps), gaps
    assert server.count(r"run failed|error") == 0, server.output
    assert server.stop() == 0


# -- stopping ------------------------------------------------------------------------------


def test_stop_waits_for_a_running_job(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.slow]
        call = "tasks:slow"
        every = "1s"
        timeout = "20s"
        env = { SLOW_SECONDS = "3" }
        """,
    )
    server = corral("run", cwd=tmp_path)
    start = _wait_records(tmp_path / "slow.txt", 1, server=server)[0]
    began = time.monotonic()
    assert server.stop() == 0
    took = time.monotonic() - began
    records = _records(tmp_path / "slow.txt")
    assert ["end", start[1]] == records[-1][:2], records  # the run finished its work
    assert 1.5 < took < 15, took
    assert server.count(r"run failed") == 0


def test_stop_kills_a_running_job_at_its_timeout(corral, tmp_path):
    _system(
        tmp_path,
        """
        [jobs.slow]
        call = "tasks:slow"
        every = "1s"
        timeout = "3s"
        env = { SLOW_SECONDS = "60" }
        """,
    )
    server = corral("run", cwd=tmp_path)
    (_, pid, _), *_ = _wait_records(tmp_path / "slow.txt", 1, server=server)
    began = time.monotonic()
    assert server.stop() == 0  # no process left, the run included
    took = time.monotonic() - began
    assert took < 15, took
    server.wait_for(r"^corral\s+\| slow run failed: killed at its timeout")
    assert _gone(int(pid))
    assert not [r for r in _records(tmp_path / "slow.txt") if r[0] == "end"]


def test_no_run_starts_once_the_stop_has_begun(corral, tmp_path):
    """The web and the processes stop first; meanwhile the jobs must not start new runs."""
    _system(
        tmp_path,
        """
        [processes.stubborn]
        command = "sh -c 'trap \\"\\" TERM; while true; do sleep 0.1; done'"
        stop_timeout = "4s"

        [jobs.tick]
        call = "tasks:tick"
        every = "0.5s"
        """,
    )
    server = corral("run", cwd=tmp_path)
    _wait_records(tmp_path / "tick.txt", 2, server=server)
    signalled = time.time()
    assert server.stop(signal.SIGTERM) == 0
    assert time.time() - signalled > 3.5  # the process took its stop_timeout
    late = [float(r[0]) for r in _records(tmp_path / "tick.txt") if float(r[0]) > signalled + 0.3]
    assert not late, f"{len(late)} runs started after SIGTERM\n{server.output}"
