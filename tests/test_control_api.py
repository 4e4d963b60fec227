"""The control API on real sockets: its listeners, its token rule, its routes, its log streams,
its client and the CLI verbs built on it.

A test controller stands in for the manager: it records the calls it gets. The servers run
in an event loop on a background thread, as they would in the manager's loop; the client
and the CLI run on the test's thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from click.testing import CliRunner

from corral.addresses import TcpAddress, UnixAddress
from corral.control.address import control_folder
from corral.control.api import ControlError, make_app
from corral.control.client import ControlClient, ControlFailed, NotRunning
from corral.control.commands import jobs, logs, reload, restart, scale, status, stop
from corral.control.server import AlreadyRunning, ControlServers, serve_control
from corral.manager.logbuffer import LogBuffer

T = TypeVar("T")
TOKEN = "test-token-0123456789"
READ_TOKEN = "test-read-token-9876543210"
GROUPS = ("web", "worker")


def status_at(now: float) -> dict[str, Any]:
    """A status snapshot taken at `now`."""
    return {
        "corral": {
            "pid": 4242,
            "version": "0.1.0",
            "project": "/srv/app",
            "started": now - 200,
            "reloads": 1,
        },
        "processes": [
            {
                "name": "web.1",
                "group": "web",
                "kind": "worker",
                "pid": 4250,
                "state": "running",
                "started": now - 65,
                "restarts": 2,
                "last_exit": "killed by SIGKILL",
                "cpu_percent": 1.25,
                "rss": 31000000,
                "requests": 1234,
            }
        ],
        "jobs": [
            {
                "name": "beat",
                "schedule": "every 5s",
                "running": False,
                "last_run": {"started": now - 3, "duration": 0.12, "result": "failed: exit 1"},
                "next_run": now + 300,
                "runs": 10,
                "failures": 1,
            }
        ],
    }


class RecordingController:
    """The manager's part, reduced to recording what it is asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.audited: list[str] = []
        self.logs = LogBuffer()
        self.ready: tuple[bool, str] = (True, "")
        self.snapshot = status_at(time.time())

    def audit(self, line: str) -> None:
        self.audited.append(line)

    def status(self) -> dict[str, Any]:
        return self.snapshot

    async def reload(self, group: str | None) -> str:
        self.calls.append(("reload", group))
        return f"reloading {group or 'everything'}"

    async def restart(self, target: str) -> str:
        if target.partition(".")[0] not in GROUPS:
            expected = ", ".join(GROUPS)
            raise ControlError(
                404, f"no group or process named {target!r} (expected one of: {expected})"
            )
        self.calls.append(("restart", target))
        return f"restarting {target}"

    async def scale(self, counts: dict[str, int]) -> str:
        self.calls.append(("scale", counts))
        return "scaling " + ", ".join(f"{group} to {n}" for group, n in counts.items())

    async def stop(self) -> str:
        self.calls.append(("stop", None))
        return "stopping"

    async def run_job(self, name: str) -> str:
        if name != "beat":
            raise ControlError(404, f"no job named {name!r} (expected one of: beat)")
        self.calls.append(("run_job", name))
        return f"running {name}"

    def readiness(self) -> tuple[bool, str]:
        return self.ready

    def log_selector(self, name: str) -> str:
        if name.partition(".")[0] not in GROUPS:
            raise ControlError(404, f"no group, process or job named {name!r}")
        return name

    def metrics(self) -> bytes:
        return b"# TYPE corral_up gauge\ncorral_up 1\n"


class LoopThread:
    """An event loop on its own thread, standing for the manager's."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Any, *args: Any) -> None:
        """Run `function(*args)` on the loop's thread (where the log buffer lives), and wait."""

        async def call() -> None:
            function(*args)

        self.run(call())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Running:
    controller: RecordingController
    path: Path
    tcp: TcpAddress
    servers: ControlServers

    def unix(self) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.path)), base_url="http://c")

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://{self.tcp}")

    def append(self, loop: LoopThread, *entries: tuple[str, str]) -> None:
        for process, line in entries:
            loop.call(self.controller.logs.append, process, line)


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture
def running(loop: LoopThread, tmp_path: Path) -> Iterator[Running]:
    controller = RecordingController()
    path = tmp_path / "control.sock"
    tcp_app = make_app(controller, TOKEN, READ_TOKEN)
    servers = loop.run(
        serve_control(make_app(controller, None), path, (TcpAddress("127.0.0.1", 0), tcp_app))
    )
    tcp = servers.addresses[1]
    assert isinstance(tcp, TcpAddress)
    yield Running(controller, path, tcp, servers)
    loop.run(servers.close())


# -- the listeners ------------------------------------------------------------------------


def test_the_unix_socket_is_mode_0600_and_gone_after_close(loop, running):
    info = os.stat(running.path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    umask = os.umask(0o022)
    os.umask(umask)
    assert umask != 0o177  # serve_control narrowed it for bind only
    loop.run(running.servers.close())
    assert not running.path.exists()
    with pytest.raises(NotRunning):
        ControlClient(UnixAddress(running.path)).get("/livez")


def test_a_second_corral_on_a_live_socket_is_refused_and_the_first_keeps_serving(loop, running):
    app = make_app(RecordingController(), None)
    with pytest.raises(AlreadyRunning) as refused:
        loop.run(serve_control(app, running.path))
    assert str(refused.value) == f"a corral is already running with control socket {running.path}"
    with running.unix() as client:
        assert client.get("/livez").text == "ok\n"


def test_a_stale_socket_file_is_replaced(loop, tmp_path):
    path = tmp_path / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(path))
    leftover.close()  # the file stays, as after a SIGKILL; nobody answers on it
    servers = loop.run(serve_control(make_app(RecordingController(), None), path))
    try:
        assert ControlClient(UnixAddress(path)).get("/livez") == b"ok\n"
    finally:
        loop.run(servers.close())
    assert not path.exists()


def test_a_tcp_address_in_use_is_an_error_and_leaves_no_socket_file(loop, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        path = tmp_path / "control.sock"
        app = make_app(RecordingController(), None)
        with pytest.raises(Exception, match="address already in use"):
            loop.run(serve_control(app, path, (TcpAddress("127.0.0.1", port), app)))
        assert not path.exists()
    finally:
        taken.close()


# -- the token rule ----------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", TOKEN])
def test_tcp_calls_without_the_right_token_are_refused_before_the_controller(
    running, authorization
):
    headers = {} if authorization is None else {"Authorization": authorization}
    with running.http() as client:
        answers = [
            client.post("/reload", json={"group": "web"}, headers=headers),
            client.post("/stop", headers=headers),
            client.post("/scale", json={"counts": {"web": 1}}, headers=headers),
            client.post("/jobs/beat/run", headers=headers),
            client.get("/status", headers=headers),
            client.get("/logs", headers=headers),
        ]
    assert [answer.status_code for answer in answers] == [401] * len(answers)
    assert "token" in answers[0].json()["error"]
    assert answers[0].headers["www-authenticate"] == "Bearer"
    assert running.controller.calls == []


@pytest.mark.parametrize(
    "credential",
    [TOKEN[:-1], TOKEN[:1], "", f"{TOKEN}x", TOKEN.upper()],
    ids=["all_but_its_last_character", "its_first_character", "empty", "longer", "upper_case"],
)
def test_only_the_whole_token_is_accepted_not_a_prefix_or_an_empty_credential(running, credential):
    headers = {"Authorization": f"Bearer {credential}".rstrip()}  # HTTP drops trailing spaces
    with running.http() as client:
        answers = [client.post("/stop", headers=headers), client.get("/status", headers=headers)]
    assert [answer.status_code for answer in answers] == [401, 401], headers
    assert running.controller.calls == []


def test_tcp_calls_with_the_token_reach_the_controller(running):
    with running.http() as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        reloaded = client.post("/reload", json={"group": "web"})
        stopped = client.post("/stop")
        assert client.get("/status").json() == running.controller.snapshot
    assert reloaded.status_code == 200
    assert reloaded.json() == {"message": "reloading web"}
    assert stopped.json() == {"message": "stopping"}
    assert running.controller.calls == [("reload", "web"), ("stop", None)]


def test_each_call_that_changes_something_is_logged_with_who_made_it_never_the_token(running):
    with running.http() as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        client.post("/scale", json={"counts": {"web": 3}})
        client.post("/restart", json={"target": "nope.1"})
    with running.unix() as client:
        client.post("/jobs/beat/run")
    assert running.controller.audited == [
        'admin (token): POST /scale {"counts": {"web": 3}}: scaling web to 3',
        "admin (token): POST /restart "
        '{"target": "nope.1"}: refused: no group or process named \'nope.1\' '
        "(expected one of: web, worker)",
        "the control socket: POST /jobs/beat/run: running beat",
    ]
    assert not any(TOKEN in line for line in running.controller.audited)


def test_the_read_only_token_reads_everything_and_changes_nothing(running):
    with running.http() as client:
        client.headers["Authorization"] = f"Bearer {READ_TOKEN}"
        status = client.get("/status")
        logs = client.get("/logs")
        refused = [
            client.post("/reload", json={"group": "web"}),
            client.post("/restart", json={"target": "web.2"}),
            client.post("/scale", json={"counts": {"web": 1}}),
            client.post("/stop"),
            client.post("/jobs/beat/run"),
        ]
    assert status.status_code == 200 and status.json() == running.controller.snapshot
    assert logs.status_code == 200
    assert [answer.status_code for answer in refused] == [403] * len(refused)
    assert refused[0].json() == {"error": "the read-only token cannot change anything"}
    assert running.controller.calls == []
    assert running.controller.audited[0] == (
        "read-only (token): POST /reload refused: the read-only token cannot change anything"
    )
    assert len(running.controller.audited) == len(refused)


def test_probes_and_metrics_need_no_token(running):
    with running.http() as client:
        live = client.get("/livez")
        ready = client.get("/readyz")
        running.controller.ready = (False, "web has 0 of 2 workers ready")
        not_ready = client.get("/readyz")
        metrics = client.get("/metrics")
    assert (live.status_code, live.text) == (200, "ok\n")
    assert (ready.status_code, ready.text) == (200, "ready\n")
    assert (not_ready.status_code, not_ready.text) == (
        503,
        "not ready: web has 0 of 2 workers ready\n",
    )
    assert metrics.status_code == 200
    assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert metrics.content == b"# TYPE corral_up gauge\ncorral_up 1\n"


def test_the_unix_socket_needs_no_token(running):
    with running.unix() as client:
        answer = client.post("/restart", json={"target": "web.2"})
    assert answer.json() == {"message": "restarting web.2"}
    assert running.controller.calls == [("restart", "web.2")]


# -- routes and bodies -------------------------------------------------------------------


def test_unknown_paths_are_404_and_wrong_methods_405(running):
    with running.unix() as client:
        unknown = client.get("/nope")
        no_job = client.post("/jobs//run")
        wrong = client.get("/reload")
        wrong_probe = client.post("/livez")
    assert (unknown.status_code, unknown.json()) == (404, {"error": "no such endpoint: /nope"})
    assert no_job.status_code == 404
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong_probe.status_code == 405
    assert running.controller.calls == []


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/reload", b"{not json", "not valid JSON"),
        ("/reload", b"[1, 2]", "must be a JSON object"),
        ("/reload", b'{"group": 3}', '"group" must be a group name or null'),
        ("/reload", b'{"groups": "web"}', 'unexpected field "groups"'),
        ("/restart", b"{}", '"target" must name a group'),
        ("/scale", b'{"counts": {"web": "4"}}', '"counts" must map group names'),
        ("/scale", b'{"counts": {"web": -1}}', '"counts" must map group names'),
        ("/scale", b'{"counts": {"web": true}}', '"counts" must map group names'),
        ("/scale", b'{"counts": {}}', '"counts" must map group names'),
        ("/stop", b'{"now": true}', 'unexpected field "now"'),
    ],
)
def test_a_malformed_body_is_a_400_that_says_what_is_wrong(running, path, body, expected):
    with running.unix() as client:
        answer = client.post(path, content=body)
    assert answer.status_code == 400
    assert expected in answer.json()["error"]
    assert running.controller.calls == []


def test_a_controller_refusal_carries_its_status_and_message(running):
    with running.unix() as client:
        answer = client.post("/restart", json={"target": "nope"})
        job = client.post("/jobs/beat/run")
    assert answer.status_code == 404
    assert answer.json() == {
        "error": "no group or process named 'nope' (expected one of: web, worker)"
    }
    assert job.json() == {"message": "running beat"}
    assert running.controller.calls == [("run_job", "beat")]


# -- logs --------------------------------------------------------------------------------

LINES = [
    ("web.zygote", "imported app"),
    ("web.1", "one"),
    ("worker.1", "working"),
    ("web.2", "two"),
    ("web.1", "three"),
]


def _ndjson(answer: httpx.Response) -> list[tuple[str, str]]:
    assert answer.headers["content-type"] == "application/x-ndjson"
    entries = [json.loads(line) for line in answer.text.splitlines()]
    assert all(isinstance(entry["time"], float) for entry in entries)
    return [(entry["process"], entry["line"]) for entry in entries]


def test_logs_are_the_last_lines_of_a_group_or_of_one_process(loop, running):
    running.append(loop, *LINES)
    with running.unix() as client:
        everything = _ndjson(client.get("/logs"))
        web_last_two = _ndjson(client.get("/logs", params={"group": "web", "lines": 2}))
        web_2 = _ndjson(client.get("/logs", params={"group": "web.2"}))
        bad = client.get("/logs", params={"lines": "many"})
    assert everything == LINES
    assert web_last_two == [("web.2", "two"), ("web.1", "three")]
    assert web_2 == [("web.2", "two")]
    assert bad.status_code == 400


def test_follow_streams_new_lines_and_its_subscription_ends_with_the_client(loop, running):
    running.append(loop, ("web.1", "before"))
    client = ControlClient(UnixAddress(running.path))
    stream = client.stream_lines("/logs?group=web&follow=1")
    assert next(stream)["line"] == "before"  # the server has subscribed by now
    running.append(loop, ("worker.1", "not web"), ("web.2", "after"))
    entry = next(stream)
    assert (entry["process"], entry["line"]) == ("web.2", "after")
    assert len(running.controller.logs._followers) == 1
    stream.close()
    deadline = time.monotonic() + 5
    while running.controller.logs._followers and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not running.controller.logs._followers


def test_close_ends_follow_streams_at_once(loop, running):
    running.append(loop, ("web.1", "before"))
    stream = ControlClient(UnixAddress(running.path)).stream_lines("/logs?follow=1")
    assert next(stream)["line"] == "before"
    began = time.monotonic()
    loop.run(running.servers.close())
    assert time.monotonic() - began < 2
    assert list(stream) == []  # the answer ended cleanly


# -- the client ----------------------------------------------------------------------------


def test_the_client_says_no_corral_runs_when_there_is_no_socket(tmp_path):
    path = tmp_path / "absent.sock"
    with pytest.raises(NotRunning) as raised:
        ControlClient(UnixAddress(path)).get_json("/status")
    assert str(raised.value) == f"corral: no corral is running here (no control socket at {path})"


def test_the_client_says_no_corral_runs_when_the_port_refuses():
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    try:
        port = bound.getsockname()[1]
        with pytest.raises(NotRunning) as raised:
            ControlClient(TcpAddress("127.0.0.1", port)).post_json("/stop")
    finally:
        bound.close()
    assert str(raised.value) == (
        f"corral: no corral is running here (nothing answers at 127.0.0.1:{port})"
    )


def test_the_client_raises_the_servers_error(running):
    client = ControlClient(running.tcp, "wrong")
    with pytest.raises(ControlFailed) as raised:
        client.post_json("/reload", {"group": None})
    assert raised.value.status == 401
    assert str(raised.value).startswith("corral: error: this call needs the control token")


# -- the CLI verbs ---------------------------------------------------------------------------


@pytest.fixture
def cli(running, tmp_path, monkeypatch) -> Iterator[Any]:
    """Invoke a verb against the running test server, in a project directory of its own."""
    monkeypatch.delenv("CORRAL_CONTROL", raising=False)
    monkeypatch.delenv("CORRAL_TOKEN", raising=False)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)

    def invoke(command: Any, *args: str, control: str | None = str(running.path)) -> Any:
        where = ["--control", control] if control is not None else []
        return CliRunner().invoke(command, [*args, *where])

    yield invoke


def test_status_shows_the_processes_and_jobs_tables(cli):
    """The cells' formats are render_status's, tested exactly in test_control_unit.py."""
    result = cli(status)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert re.fullmatch(r"corral 0\.1\.0, pid 4242, up 3m\d+s, 1 reload, in /srv/app", lines[0])
    assert re.fullmatch(
        r"NAME +PID +STATE +UPTIME +RESTARTS +LAST EXIT +CPU % +RSS +REQUESTS", lines[2]
    )
    assert re.fullmatch(
        r"web\.1 +4250 +running +1m\d+s +2 +killed by SIGKILL +1\.2 +29\.6 MiB +1234", lines[3]
    )
    assert re.fullmatch(
        r"NAME +SCHEDULE +LAST RUN +DURATION +RESULT +NEXT RUN +RUNS/FAILURES", lines[5]
    )
    assert re.fullmatch(
        r"beat +every 5s +\d+s ago +120ms +failed: exit 1 +in 4m5\ds +10/1", lines[6]
    )


def test_status_json_prints_the_status_as_received(cli, running):
    result = cli(status, "--json")
    assert result.exit_code == 0
    with running.unix() as client:
        assert result.output == client.get("/status").text + "\n"
    assert json.loads(result.output) == running.controller.snapshot


def test_scale_checks_its_arguments_before_calling(cli, running):
    for args in (["web=x"], ["web"], ["=3"], ["web=1", "web=2"], []):
        result = cli(scale, *args)
        assert result.exit_code == 2, (args, result.output)
    assert "expected GROUP=N" in cli(scale, "web4").output
    assert running.controller.calls == []
    result = cli(scale, "web=4", "worker=2")
    assert (result.exit_code, result.output) == (0, "scaling web to 4, worker to 2\n")
    assert running.controller.calls == [("scale", {"web": 4, "worker": 2})]


def test_verbs_print_the_message_and_exit_0(cli, running):
    results = [
        cli(reload),
        cli(reload, "web"),
        cli(restart, "worker.1"),
        cli(stop),
        cli(jobs, "run", "beat"),
    ]
    assert [r.exit_code for r in results] == [0] * len(results)
    assert [r.output for r in results] == [
        "reloading everything\n",
        "reloading web\n",
        "restarting worker.1\n",
        "stopping\n",
        "running beat\n",
    ]
    assert running.controller.calls == [
        ("reload", None),
        ("reload", "web"),
        ("restart", "worker.1"),
        ("stop", None),
        ("run_job", "beat"),
    ]


def test_a_refusal_is_one_error_line_and_exit_1(cli):
    refused = cli(restart, "nope")
    assert refused.exit_code == 1
    assert refused.stderr == (
        "corral: error: no group or process named 'nope' (expected one of: web, worker)\n"
    )
    assert refused.stdout == ""
    assert cli(jobs, "run", "nope").exit_code == 1


def test_no_corral_here_is_one_line_and_exit_1(cli, tmp_path):
    result = cli(status, control=None)
    assert result.exit_code == 1
    assert result.stderr == (
        f"corral: no corral is running here (no control socket for {Path.cwd()} "
        f"in {control_folder()})\n"
    )


def test_a_bad_control_address_is_a_usage_error(cli):
    result = cli(status, control="[::1:9000")
    assert result.exit_code == 2
    assert "[::1:9000" in result.stderr


def test_tcp_verbs_take_the_token_from_the_option(cli, running):
    """The file beside the socket of the corral running here: test_control_live.py."""
    tcp = str(running.tcp)
    assert cli(reload, "web", control=tcp).exit_code == 1  # no token anywhere
    assert cli(reload, "web", "--token", TOKEN, control=tcp).exit_code == 0
    assert running.controller.calls == [("reload", "web")]


def test_logs_prints_each_line_after_its_process(cli, loop, running):
    running.append(loop, *LINES)
    result = cli(logs, "-n", "2", "web")
    assert result.exit_code == 0
    assert result.output == "web.2      | two\nweb.1      | three\n"


def test_logs_follow_ends_with_exit_0_on_ctrl_c(loop, running):
    running.append(loop, ("web.1", "before"))
    code = (
        "import sys; from corral.control.commands import logs; "
        "logs(['-f', '--control', sys.argv[1]], prog_name='corral logs')"
    )
    follower = subprocess.Popen(
        [sys.executable, "-c", code, str(running.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "web.1      | before\n"
        running.append(loop, ("web.2", "after"))
        assert follower.stdout.readline() == "web.2      | after\n"
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
        assert follower.stderr is not None
        assert follower.stderr.read() == ""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
