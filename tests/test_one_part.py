"""One part of the system at a time, as an engine runs it: `corral run --only`, `corral prestart`,
`corral job NAME`, the probes listener, and the notifications a systemd unit of Type=notify reads.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from conftest import APPS, Corral

SYSTEM = """
[web]
app = "plain:app"
port = 0

[prestart]
steps = ["echo prestart ran >> prestart.log"]

[processes.consumer]
command = "sh -c 'echo consumer replica $CORRAL_REPLICA; exec sleep 600'"
replicas = 3

[jobs.tick]
command = "echo tick ran"
every = "0.3s"

[jobs.slow]
command = "sleep 30"
every = "1h"
timeout = "0.5s"

[jobs.broken]
command = "sh -c 'echo about to fail; exit 3'"
every = "1h"
"""


@pytest.fixture
def system(tmp_path: Path) -> Path:
    (tmp_path / "corral.toml").write_text(textwrap.dedent(SYSTEM))
    (tmp_path / "plain.py").write_text((APPS / "plain.py").read_text())
    return tmp_path


# -- corral run --only -------------------------------------------------------------------


def test_only_one_replica_runs_it_alone_under_its_own_number_and_skips_prestart(corral, system):
    server = corral("run", "--only", "consumer.2", cwd=system)
    server.wait_for(r"consumer\.2\s+\| consumer replica 2$")
    assert server.stop() == 0
    assert "consumer.1" not in server.output and "consumer.3" not in server.output
    assert "web" not in server.output and "tick" not in server.output
    assert "prestart" not in server.output
    assert not (system / "prestart.log").exists()


def test_only_takes_several_groups_separated_by_commas(corral, system):
    server = corral("run", "--only", "web,jobs.tick", cwd=system)
    url = server.url()
    assert httpx.get(url).status_code == 200
    server.wait_for(r"tick\s+\| tick ran")
    assert server.stop() == 0
    assert "consumer" not in server.output and "slow" not in server.output
    assert not (system / "prestart.log").exists()


def test_only_from_the_environment_names_the_variable_when_it_is_wrong(corral, system):
    server = corral("run", cwd=system, env={"CORRAL_ONLY": "consumer.4"})
    assert server.wait(15) == 2, server.output
    (line,) = [line for line in server.lines if "error" in line]
    assert "CORRAL_ONLY: 'consumer.4' names nothing here" in line
    assert "consumer or consumer.1..3" in line and "jobs.tick" in line


@pytest.mark.parametrize("only", ["webb", "web.1", "jobs.nope", "consumer.0"])
def test_only_refuses_a_name_that_matches_nothing(corral, system, only):
    server = corral("run", "--only", only, cwd=system)
    assert server.wait(15) == 2, server.output
    assert f"--only: {only!r} names nothing here" in server.output
    assert not server.wait_until_gone(2)


# -- corral prestart -------------------------------------------------------------------


def test_prestart_runs_the_steps_once_and_exits(corral, system):
    done = corral("prestart", cwd=system)
    assert done.wait(20) == 0, done.output
    assert (system / "prestart.log").read_text() == "prestart ran\n"
    assert "prestart step 1" in done.output


def test_prestart_exits_4_when_a_step_fails(corral, system):
    config = system / "corral.toml"
    config.write_text(config.read_text().replace('"echo prestart ran', '"exit 7", "echo never'))
    done = corral("prestart", cwd=system)
    assert done.wait(20) == 4, done.output
    assert "prestart step 1 failed (exit code 7)" in done.output
    assert not (system / "prestart.log").exists()


# -- corral job ------------------------------------------------------------------------


def test_job_runs_one_job_once_and_exits_with_its_result(corral, system):
    ok = corral("job", "tick", cwd=system)
    assert ok.wait(20) == 0, ok.output
    assert ok.count(r"tick\s+\| tick ran") == 1
    assert re.search(r"tick run ok in \d", ok.output)
    failed = corral("job", "broken", cwd=system)
    assert failed.wait(20) == 1, failed.output
    assert failed.count(r"broken\s+\| about to fail") == 1
    assert "broken run failed (exit code 3" in failed.output


@pytest.mark.parametrize(
    ("schedule", "grid"), [('schedule = "* * * * *"', 60.0), ('every = "0.3s"', None)]
)
def test_job_tells_the_run_its_tick_as_an_engine_starts_it(corral, system, schedule, grid):
    """The tick of a run started by a CronJob or a timer: the latest time its cron schedule
    names (the engine starts it a little after); for an `every` job, the start."""
    config = system / "corral.toml"
    config.write_text(
        config.read_text().replace(
            'command = "echo tick ran"\nevery = "0.3s"',
            f"command = \"sh -c 'echo tick $CORRAL_JOB_TICK'\"\n{schedule}",
        )
    )
    before = time.time()
    done = corral("job", "tick", cwd=system)
    assert done.wait(20) == 0, done.output
    after = time.time()
    tick = float(done.wait_for(r"tick\s+\| tick (\d+\.\d{3})$")[1])
    if grid is None:
        assert before - 0.001 <= tick <= after, (before, tick, after)
    else:
        assert tick % grid == 0 and before - grid < tick <= after, (before, tick, after)


def test_job_is_killed_at_its_timeout(corral, system):
    slow = corral("job", "slow", cwd=system)
    assert slow.wait(20) == 1, slow.output
    assert "slow run failed: killed at its timeout (0.5s)" in slow.output
    assert not slow.wait_until_gone(2)


def test_job_passes_a_stop_on_to_the_run(corral, system):
    config = system / "corral.toml"
    config.write_text(config.read_text().replace('timeout = "0.5s"', 'timeout = "60s"'))
    slow = corral("job", "slow", cwd=system)
    _wait_for_child(slow)
    assert slow.stop(signal.SIGTERM, timeout=10) == 1
    assert "slow run failed (killed by SIGTERM" in slow.output


def _wait_for_child(server: Corral) -> None:
    deadline = time.monotonic() + 10
    while len(server.alive()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server.alive()) >= 2, server.output


def test_job_names_the_jobs_when_there_is_no_such_job(corral, system):
    done = corral("job", "nope", cwd=system)
    assert done.wait(15) == 2
    assert "no job named 'nope' (jobs: tick, slow, broken)" in done.output


# -- the probes listener -----------------------------------------------------------------


def test_the_probes_listener_serves_probes_and_metrics_and_nothing_else(corral, system):
    server = corral(
        "run", "--only", "web", "--probes", "127.0.0.1:0", "--control", "127.0.0.1:0", cwd=system
    )
    server.url()
    probes = "http://" + server.wait_for(r"probes on http://(\S+): /livez, /readyz, /metrics")[1]
    assert httpx.get(f"{probes}/livez").status_code == 200
    assert httpx.get(f"{probes}/readyz").text == "ready\n"
    assert "corral_process_resident_memory_bytes" in httpx.get(f"{probes}/metrics").text
    for method, path in [("GET", "/status"), ("GET", "/logs"), ("POST", "/stop")]:
        response = httpx.request(method, f"{probes}{path}")
        assert response.status_code == 404, (path, response.text)
    assert httpx.post(f"{probes}/jobs/tick/run").status_code == 404
    assert server.stop() == 0
    assert "stop asked for" not in server.output


def test_probes_takes_host_and_port_only(corral, system):
    server = corral("run", "--only", "web", "--probes", "/tmp/probes.sock", cwd=system)
    assert server.wait(15) == 2
    assert "--probes: '/tmp/probes.sock': expected HOST:PORT" in server.output


# -- systemd's notifications -----------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_corral_tells_systemd_when_it_is_ready_reloading_and_stopping(corral, system, abstract):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"corral-test-notify-{os.getpid()}-{id(listener)}"
        listener.bind("\0" + name)
        address = "@" + name
    else:
        address = str(system / "notify.sock")
        listener.bind(address)
    listener.settimeout(20)
    with listener:
        server = corral("run", "--only", "web", cwd=system, env={"NOTIFY_SOCKET": address})
        assert listener.recv(4096) == b"READY=1"
        server.wait_for("listening on", timeout=5)  # READY=1 comes once a worker serves
        server.send(signal.SIGHUP)
        reloading = listener.recv(4096).decode()
        usec = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", reloading)
        assert usec is not None, reloading
        assert abs(int(usec[1]) / 1e6 - time.monotonic()) < 30
        assert listener.recv(4096) == b"READY=1"
        server.wait_for("reload complete", timeout=5)
        assert server.stop() == 0
        assert listener.recv(4096) == b"STOPPING=1"


def test_the_app_does_not_see_the_notification_socket(corral, system, tmp_path):
    (system / "env_app.py").write_text(
        textwrap.dedent(
            """
            import os

            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                body = os.environ.get("NOTIFY_SOCKET", "unset").encode()
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": body})
            """
        )
    )
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "n.sock"))
    with listener:
        notify = {"NOTIFY_SOCKET": str(tmp_path / "n.sock")}
        server = corral(
            "run", "env_app:app", "--port", "0", "--only", "web", cwd=system, env=notify
        )
        assert httpx.get(server.url()).text == "unset"
        assert server.stop() == 0
