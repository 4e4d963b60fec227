"""The control package's pure parts: the status tables, the log buffer and its followers,
control addresses, the per-directory socket path and the token file."""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.addresses import (
    UNIX_PATH_MAX,
    AddressError,
    TcpAddress,
    UnixAddress,
    parse_control,
    parse_tcp,
)
from corral.control.address import ControlPathError, control_path, control_paths
from corral.control.table import (
    human_duration,
    job_rows,
    mebibytes,
    process_rows,
    render_status,
    render_table,
    short_duration,
    time_until,
)
from corral.control.token import load_or_create_token, read_token, token_path, write_token
from corral.logformat import json_line, prefix_for
from corral.manager.logbuffer import Entry, LogBuffer, matches

NOW = 1_700_000_000.0

# -- the status tables -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (5.9, "5s"),
        (59, "59s"),
        (60, "1m0s"),
        (192, "3m12s"),
        (2 * 3600 + 5 * 60 + 59, "2h5m"),
        (3 * 86400 + 4 * 3600 + 1, "3d4h"),
        (-3, "0s"),  # a clock that stepped back
    ],
)
def test_human_duration_shows_two_units_at_most(seconds, shown):
    assert human_duration(seconds) == shown


def test_short_durations_time_deltas_and_sizes():
    assert [short_duration(s) for s in (0.12, 0.0004, 3.44, 75)] == [
        "120ms",
        "0ms",
        "3.4s",
        "1m15s",
    ]
    assert [time_until(s) for s in (12.7, 0.4, -5)] == ["in 12s", "due", "due"]
    assert mebibytes(31_000_000) == "29.6 MiB"


def test_render_table_aligns_columns_without_trailing_spaces():
    table = render_table(("NAME", "PID"), [["web.1", "12"], ["worker.10", "-"]])
    assert table.splitlines() == [
        "NAME       PID",
        "web.1      12",
        "worker.10  -",
    ]


def test_process_rows_show_unknowns_as_dashes_and_uptime_only_while_alive():
    running = {
        "name": "web.1",
        "pid": 10,
        "state": "running",
        "started": NOW - 192,
        "restarts": 0,
        "last_exit": None,
        "cpu_percent": 0.5,
        "rss": 31_000_000,
        "requests": 7,
    }
    waiting = {
        "name": "worker.1",
        "pid": None,
        "state": "backoff",
        "started": NOW - 30,
        "restarts": 3,
        "last_exit": "exit 1",
        "cpu_percent": None,
        "rss": None,
        "requests": None,
    }
    assert process_rows([running, waiting], NOW) == [
        ["web.1", "10", "running", "3m12s", "0", "-", "0.5", "29.6 MiB", "7"],
        ["worker.1", "-", "backoff", "-", "3", "exit 1", "-", "-", "-"],
    ]


def test_job_rows_show_the_last_run_and_the_next():
    ran = {
        "name": "beat",
        "schedule": "every 5s",
        "running": False,
        "last_run": {"started": NOW - 62, "duration": 0.12, "result": "skipped: overlap"},
        "next_run": NOW + 12.5,
        "runs": 10,
        "failures": 1,
    }
    never = {
        "name": "nightly",
        "schedule": "0 3 * * *",
        "running": True,
        "last_run": None,
        "next_run": None,
        "runs": 0,
        "failures": 0,
    }
    assert job_rows([ran, never], NOW) == [
        ["beat", "every 5s", "1m2s ago", "120ms", "skipped: overlap", "in 12s", "10/1"],
        ["nightly", "0 3 * * *", "-", "-", "running", "-", "0/0"],
    ]


def test_render_status_has_a_summary_and_omits_an_empty_jobs_table():
    status = {
        "corral": {"pid": 1, "version": "0.1.0", "project": "/srv/app", "started": NOW - 5},
        "processes": [{"name": "manager", "pid": 1, "state": "running", "started": NOW - 5}],
        "jobs": [],
    }
    lines = render_status(status, NOW).splitlines()
    assert lines[0] == "corral 0.1.0, pid 1, up 5s, 0 reloads, in /srv/app"
    assert lines[1] == ""
    assert lines[2].startswith("NAME ")
    assert lines[3].split()[:4] == ["manager", "1", "running", "5s"]
    assert len(lines) == 4


# -- the log buffer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "process", "expected"),
    [
        (None, "web.1", True),
        ("web", "web.1", True),
        ("web", "web.zygote", True),
        ("web", "worker.1", False),
        ("web", "webhooks.1", False),
        ("web.2", "web.2", True),
        ("web.2", "web.1", False),
        ("web.1", "web.10", False),
        ("corral", "corral", True),
    ],
)
def test_a_selector_matches_its_group_or_its_process(selector, process, expected):
    assert matches(selector, process) is expected


def test_recent_keeps_the_last_capacity_lines_and_filters_them():
    buffer = LogBuffer(capacity=4)
    for n in range(6):
        buffer.append(f"web.{n % 2 + 1}", f"line {n}")
    assert [e.line for e in buffer.recent(None, 100)] == ["line 2", "line 3", "line 4", "line 5"]
    assert [e.line for e in buffer.recent("web.1", 100)] == ["line 2", "line 4"]
    assert [e.line for e in buffer.recent("web", 3)] == ["line 3", "line 4", "line 5"]
    assert buffer.recent(None, 0) == []
    assert all(isinstance(e, Entry) and e.time > NOW for e in buffer.recent(None, 1))


def test_a_follower_gets_matching_new_lines_then_stops_when_its_block_ends():
    async def scenario() -> tuple[list[list[str]], int]:
        buffer = LogBuffer()
        buffer.append("web.1", "old")
        with buffer.follow("web") as subscription:
            buffer.append("worker.1", "not for us")
            buffer.append("web.1", "one")
            buffer.append("web.2", "two")
            batches = [[e.line for e in await anext(subscription)]]
            buffer.append("web.zygote", "three")
            batches.append([e.line for e in await anext(subscription)])
        buffer.append("web.1", "after")
        return batches, len(buffer._followers)

    batches, followers = asyncio.run(scenario())
    assert batches == [["one", "two"], ["three"]]
    assert followers == 0


def test_a_slow_follower_misses_lines_and_is_told_how_many():
    async def scenario() -> list[list[tuple[str, str]]]:
        buffer = LogBuffer(follower_limit=3)
        with buffer.follow(None) as subscription:
            for n in range(5):
                buffer.append("web.1", f"line {n}")
            first = await anext(subscription)
            buffer.append("web.1", "line 5")
            second = await anext(subscription)
        return [[(e.process, e.line) for e in batch] for batch in (first, second)]

    first, second = asyncio.run(scenario())
    assert first == [
        ("web.1", "line 0"),
        ("web.1", "line 1"),
        ("web.1", "line 2"),
        ("corral", "[2 lines not shown here: this follower fell behind]"),
    ]
    assert second == [("web.1", "line 5")]


def _access_block(*lines: tuple[str, str], color: bool = False) -> bytes:
    """Access lines as a worker writes them: each prefixed with its process's name."""
    return "".join(prefix_for(process, color) + line + "\n" for process, line in lines).encode()


def test_access_blocks_are_read_back_as_lines_and_merged_with_the_others_in_time():
    buffer = LogBuffer()
    buffer.append("corral", "web.1 started")
    buffer.append_block(_access_block(("web.1", "GET / 200"), ("web.2", "GET /a 200")), False)
    buffer.append("web.2", "WARNING: slow")
    colored = _access_block(("web.2", "GET /b 500"), color=True)
    json_lines = (json_line("web.1", 42, "GET /c 200") + "\n").encode()
    buffer.append_block(colored, False)
    buffer.append_block(json_lines, True)
    every = [(e.process, e.line) for e in buffer.recent(None, 100)]
    assert every == [
        ("corral", "web.1 started"),
        ("web.1", "GET / 200"),
        ("web.2", "GET /a 200"),
        ("web.2", "WARNING: slow"),
        ("web.2", "GET /b 500"),
        ("web.1", "GET /c 200"),
    ]
    assert [e.line for e in buffer.recent("web.2", 2)] == ["WARNING: slow", "GET /b 500"]
    assert [e.line for e in buffer.recent("web", 2)] == ["GET /b 500", "GET /c 200"]


def test_access_blocks_are_bounded_in_bytes_oldest_first():
    buffer = LogBuffer(block_bytes=100)
    blocks = [_access_block(("web.1", f"GET /{n} 200")) for n in range(10)]
    for block in blocks:
        buffer.append_block(block, False)
    kept = [e.line for e in buffer.recent(None, 100)]
    assert len(kept) == 100 // len(blocks[0])
    assert kept[-1] == "GET /9 200"


def test_a_follower_gets_the_lines_of_new_access_blocks():
    async def scenario() -> list[tuple[str, str]]:
        buffer = LogBuffer()
        with buffer.follow("web.2") as subscription:
            buffer.append_block(_access_block(("web.1", "one"), ("web.2", "two")), False)
            return [(e.process, e.line) for e in await anext(subscription)]

    assert asyncio.run(scenario()) == [("web.2", "two")]


def test_closing_a_subscription_wakes_its_waiting_follower():
    async def scenario() -> list[list[Entry]]:
        buffer = LogBuffer()
        with buffer.follow(None) as subscription:
            asyncio.get_running_loop().call_later(0.05, subscription.close)
            return [batch async for batch in subscription]

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) == []


# -- control addresses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("127.0.0.1:9000", TcpAddress("127.0.0.1", 9000)),
        ("localhost:9000", TcpAddress("localhost", 9000)),
        ("[::1]:9000", TcpAddress("::1", 9000)),
        ("0.0.0.0:0", TcpAddress("0.0.0.0", 0)),
        ("/run/app/control.sock", UnixAddress(Path("/run/app/control.sock"))),
        ("control.sock", UnixAddress(Path("control.sock"))),
        ("/tmp/odd:1", UnixAddress(Path("/tmp/odd:1"))),  # a path, though it ends in :N
        ("./name:sock", UnixAddress(Path("name:sock"))),  # a ':' in a path: with a '/'
    ],
)
def test_parse_control_tells_tcp_from_a_path(value, address):
    assert parse_control(value) == address


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "an empty control address"),
        (":9000", "expected HOST:PORT or [IPV6]:PORT"),
        ("[::1:9000", "expected HOST:PORT or [IPV6]:PORT"),
        ("[]:9000", "expected HOST:PORT or [IPV6]:PORT"),
        ("::1:9000", "write an IPv6 address in brackets, as [::1]:9000"),
        ("127.0.0.1:70000", "expected HOST:PORT with a port number from 0 to 65535"),
        (
            "127.0.0.1:notaport",
            "a socket path with a ':' needs a '/', such as ./127.0.0.1:notaport",
        ),
        ("name:sock", "a socket path with a ':' needs a '/', such as ./name:sock"),
        ("[::1]", "expected HOST:PORT with a port number"),
        ("/" + "x" * UNIX_PATH_MAX, f"at most {UNIX_PATH_MAX} bytes, this one has 108"),
    ],
)
def test_parse_control_names_the_value_and_what_was_expected(value, message):
    with pytest.raises(AddressError) as raised:
        parse_control(value)
    assert message in str(raised.value)
    assert value == "" or repr(value) in str(raised.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nope", "'nope': expected HOST:PORT, such as 0.0.0.0:9000"),
        ("/run/x:9000", "'/run/x:9000': expected HOST:PORT, such as 0.0.0.0:9000"),
        ("0.0.0.0:x", "'0.0.0.0:x': expected HOST:PORT with a port number from 0 to 65535"),
    ],
)
def test_parse_tcp_takes_no_socket_path_and_says_so(value, message):
    """The probes' address: a bad port is not told it could be a socket path."""
    with pytest.raises(AddressError) as raised:
        parse_tcp(value)
    assert str(raised.value) == message


def test_addresses_show_as_typed():
    assert str(TcpAddress("::1", 9000)) == "[::1]:9000"
    assert str(TcpAddress("127.0.0.1", 9000)) == "127.0.0.1:9000"
    assert str(UnixAddress(Path("/run/c.sock"))) == "/run/c.sock"


# -- the socket paths -----------------------------------------------------------------


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A short root for the socket's folder, as /tmp is (pytest's tmp_path is long)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as runtime:
        yield Path(runtime)


def _folder(root: Path) -> Path:
    return root / f"corral-{os.geteuid()}"


def test_each_manager_has_its_own_short_path_named_after_its_directory(runtime_dir, tmp_path):
    long_name = tmp_path / ("a-project-with-a-very-long-name" * 6)
    twins = [tmp_path / "one" / "app", tmp_path / "two" / "app"]
    for directory in (long_name, *twins):
        directory.mkdir(parents=True)
    first, second = (control_path(d, 4242, runtime_dir) for d in twins)
    assert first.parent == _folder(runtime_dir)
    assert first.name.startswith("app-") and first.name.endswith(".4242.sock")
    assert first != second
    assert control_path(twins[0], 4343, runtime_dir) != first  # another manager, same directory
    assert control_path(twins[0] / ".." / "app", 4242, runtime_dir) == first  # the real path
    assert len(os.fsencode(control_path(long_name, 4194304, runtime_dir))) <= UNIX_PATH_MAX
    assert stat.S_IMODE(first.parent.stat().st_mode) == 0o700


def test_the_sockets_of_a_directory_are_found_by_manager_pid_and_no_others(runtime_dir, tmp_path):
    here, elsewhere = tmp_path / "app", tmp_path / "other" / "app"
    for directory in (here, elsewhere):
        directory.mkdir(parents=True)
    made = {pid: control_path(here, pid, runtime_dir) for pid in (11, 12)}
    for path in (*made.values(), control_path(elsewhere, 13, runtime_dir)):
        path.touch()
    (made[11].parent / (made[11].name + ".token")).touch()  # a token is not a socket
    assert control_paths(here, runtime_dir) == made


def test_the_socket_folder_is_under_tmp_whatever_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # a shell has it, a service not
    folder = Path(f"/tmp/corral-{os.geteuid()}")
    existed = folder.exists()
    try:
        path = control_path(tmp_path, os.getpid())
        assert path.parent == folder
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    finally:
        if not existed:
            folder.rmdir()


def test_a_path_too_long_for_a_socket_is_refused(monkeypatch, tmp_path):
    runtime = tmp_path / ("r" * UNIX_PATH_MAX)
    runtime.mkdir()
    with pytest.raises(ControlPathError, match="longer than a Unix socket allows"):
        control_path(tmp_path, 4242, runtime)


def test_a_folder_others_can_enter_is_refused(runtime_dir, tmp_path):
    _folder(runtime_dir).mkdir()
    _folder(runtime_dir).chmod(0o770)
    with pytest.raises(ControlPathError) as refused:
        control_path(tmp_path, 4242, runtime_dir)
    assert f"refusing {_folder(runtime_dir)}" in str(refused.value)
    assert "mode 0770" in str(refused.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_folder_of_another_user_is_refused(runtime_dir, tmp_path):
    folder = _folder(runtime_dir)
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    with pytest.raises(ControlPathError, match="it belongs to uid 65534, not to you"):
        control_path(tmp_path, 4242, runtime_dir)


def test_a_symlink_in_place_of_the_folder_is_refused(runtime_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    _folder(runtime_dir).symlink_to(elsewhere)
    with pytest.raises(ControlPathError, match="it is not a directory"):
        control_path(tmp_path, 4242, runtime_dir)


# -- the token ---------------------------------------------------------------------------


def test_the_token_comes_from_the_environment_or_is_generated():
    assert load_or_create_token({"CORRAL_TOKEN": "given"}) == ("given", False)
    first, generated = load_or_create_token({"CORRAL_TOKEN": ""})
    second, _ = load_or_create_token({})
    assert generated
    assert first != second
    assert len(first) >= 40


def test_the_token_file_is_private_even_when_it_existed(tmp_path):
    path = token_path(tmp_path / "app-0123456789.sock")
    assert path == tmp_path / "app-0123456789.sock.token"
    assert read_token(path) is None
    path.write_text("old\n")
    path.chmod(0o644)
    write_token(path, "new-token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_token(path) == "new-token"
