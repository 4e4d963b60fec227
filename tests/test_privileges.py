"""`user`, `group` and `pidfile` under [corral]: every child runs as the user, the manager as it
started; a [web] user overrides for web only.

The tests that change user run corral from `nobody_python` (conftest.py): a root-started corral
whose children must be able to read their interpreter and their code as nobody.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import Corral

IDS_APP = '''
"""Each child of the test says who it runs as: its output, or its answer."""
import os
import time


def ids():
    groups = ",".join(str(group) for group in sorted(os.getgroups()))
    return (
        f"ids uid={os.getuid()} euid={os.geteuid()} "
        f"gid={os.getgid()} egid={os.getegid()} groups={groups} "
        f"home={os.environ.get('HOME')} user={os.environ.get('USER')}"
    )


def say():
    print(ids(), flush=True)


def stay():
    say()
    time.sleep(600)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": ids().encode()})
'''


def _ids_of(user: str) -> str:
    """What IDS_APP says when it runs as `user` with that user's own groups."""
    entry = pwd.getpwnam(user)
    groups = ",".join(str(g) for g in sorted(set(os.getgrouplist(user, entry.pw_gid))))
    return (
        f"ids uid={entry.pw_uid} euid={entry.pw_uid} "
        f"gid={entry.pw_gid} egid={entry.pw_gid} groups={groups} "
        f"home={entry.pw_dir} user={user}"
    )


def _project(directory: Path, python: Path, corral: str, web: str = "") -> None:
    """Web, a process, a call job, a command job and two prestart steps, all saying who they are."""
    say = f"{python} -c 'import ids; ids.say()'"
    (directory / "ids.py").write_text(IDS_APP)
    (directory / "corral.toml").write_text(
        f"""
[corral]
{corral}

[web]
app = "ids:app"
port = 0
{web}

[prestart]
steps = ["{say}", {{ call = "ids:say" }}]

[processes.replica]
call = "ids:stay"

[jobs.called]
call = "ids:say"
every = "0.3s"

[jobs.commanded]
command = "{say}"
every = "0.3s"
"""
    )


def _said(server: Corral) -> dict[str, set[str]]:
    """Process name -> the ids lines it printed."""
    said: dict[str, set[str]] = {}
    for name, ids in re.findall(r"^(\S+?) +\| (ids .*)$", server.output, re.MULTILINE):
        said.setdefault(name, set()).add(ids)
    return said


def _start(launch, python: Path, directory: Path) -> tuple[Corral, str]:
    """corral run in `directory`, once every child has said who it is; and web's URL."""
    server = launch([str(python), "-m", "corral", "run"], cwd=directory)
    url = server.url()
    for name in ("replica.1", "called", "commanded"):
        server.wait_for(rf"^{re.escape(name)} +\| ids ")
    assert server.count(r"^prestart +\| ids ") == 2, server.output
    return server, url


def _users_of_the_tree(server: Corral) -> dict[str, set[str]]:
    """Each process title under the manager (but the launcher) -> the user names it runs as."""
    users: dict[str, set[str]] = {}
    for process in server.alive():
        if process.pid == server.pid:
            continue
        try:
            name, uids = _title(process), process.uids()
        except psutil.NoSuchProcess:
            continue  # a job run that ended meanwhile
        if name != "launcher":
            users.setdefault(name, set()).update(pwd.getpwuid(uid).pw_name for uid in uids)
    return users


def _title(process: psutil.Process) -> str:
    """web.1 for "corral: web.1"; the program for a process without a title of corral's."""
    words = " ".join(process.cmdline()).split() or ["-"]  # a zombie has no command line
    return words[1] if words[:1] == ["corral:"] else words[0]


def test_a_user_under_corral_runs_every_child_and_none_of_the_apps_code_as_root(
    launch, nobody_python, public_dir
):
    _project(public_dir, nobody_python, 'user = "nobody"')
    server, url = _start(launch, nobody_python, public_dir)
    nobody = _ids_of("nobody")

    assert httpx.get(url, timeout=10).text == nobody
    said = _said(server)
    assert set(said) >= {"prestart", "replica.1", "called", "commanded"}, server.output
    assert said == {name: {nobody} for name in said}, said
    # Nothing of the tree runs as root but the manager and the launcher (which imports no app
    # code): the zygotes, the workers, the replica, job runs in flight, real, effective and
    # saved ids alike.
    users = _users_of_the_tree(server)
    assert {"web.zygote", "web.1", "jobs.zygote"} <= set(users), users
    assert users == {name: {"nobody"} for name in users}, users
    assert server.stop() == 0


def test_a_user_under_web_overrides_corrals_for_the_web_processes_only(
    launch, nobody_python, public_dir
):
    _project(public_dir, nobody_python, 'user = "nobody"', web='user = "daemon"')
    server, url = _start(launch, nobody_python, public_dir)

    assert httpx.get(url, timeout=10).text == _ids_of("daemon")
    said = _said(server)
    assert said == {name: {_ids_of("nobody")} for name in said}, said
    users = _users_of_the_tree(server)
    assert users["web.zygote"] == users["web.1"] == {"daemon"}, users
    assert users["replica.1"] == users["jobs.zygote"] == {"nobody"}, users
    assert server.stop() == 0


def test_a_killed_launcher_still_stops_zygotes_that_run_as_the_user(
    launch, nobody_python, public_dir
):
    """The parent-death signal is asked for after the change of user, which would clear it.

    The manager is frozen meanwhile, so only that signal can stop the zygotes. Once it
    thaws, it starts another launcher, whose zygotes and workers run as the user too.
    """
    _project(public_dir, nobody_python, 'user = "nobody"')
    server, _ = _start(launch, nobody_python, public_dir)
    tree = {_title(p): p for p in server.alive() if p.pid != server.pid}
    launcher = tree["launcher"]
    zygotes = [tree["web.zygote"], tree["jobs.zygote"], tree["web.1"]]

    server.send(signal.SIGSTOP)
    try:
        launcher.kill()
        _, alive = psutil.wait_procs(zygotes, timeout=10)
    finally:
        server.send(signal.SIGCONT)
    assert not alive, f"still running while the manager was frozen: {alive}\n{server.output}"
    server.wait_for(r"the launcher exited \(killed by SIGKILL\): starting a new one")
    (worker,) = server.wait_workers(1, timeout=30).values()
    assert psutil.Process(worker).username() == "nobody"
    # Its job ticks, due while it was frozen, wait for the new jobs zygote: late, not a crash.
    assert server.count(r"a bug in corral|Traceback") == 0, server.output
    assert server.stop() == 0


def test_a_pidfile_under_corral_works_without_a_web_app(corral, tmp_path):
    pidfile = tmp_path / "corral.pid"
    (tmp_path / "corral.toml").write_text(
        f'[corral]\npidfile = "{pidfile}"\n\n[jobs.tick]\ncommand = "true"\nevery = "1h"\n'
    )
    server = corral("run", cwd=tmp_path)
    server.wait_for(r"control socket: ")
    assert pidfile.read_text() == f"{server.pid}\n"
    assert server.stop() == 0
    assert not pidfile.exists()


def _refused(server: Corral) -> str:
    """The one error line of a corral that must refuse to start (exit 2, nothing left)."""
    assert server.wait(20) == 2, server.output
    errors = [line for line in server.lines if "error" in line]
    assert len(errors) == 1, server.output
    assert "Traceback" not in server.output
    assert not server.wait_until_gone(5)
    return errors[0]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ('user = "no-such-user"', "corral.toml: [corral] user: 'no-such-user': no such user"),
        ('group = "no-such-group"', "corral.toml: [corral] group: 'no-such-group': no such group"),
        (
            f'pidfile = "{Path("/nonexistent/corral.pid")}"',
            "corral.toml: [corral] pidfile: cannot create '/nonexistent/corral.pid': "
            "no such folder '/nonexistent'",
        ),
    ],
    ids=["user", "group", "pidfile"],
)
def test_an_identity_or_pidfile_that_cannot_work_exits_2_naming_it(
    corral, tmp_path, setting, expected
):
    (tmp_path / "corral.toml").write_text(
        f"[corral]\n{setting}\n\n[processes.idle]\ncommand = 'sleep 60'\n"
    )
    line = _refused(corral("run", cwd=tmp_path))
    assert expected in line, line


def test_a_pidfile_under_web_is_refused_with_where_it_goes_now(corral, tmp_path):
    (tmp_path / "corral.toml").write_text('[web]\napp = "plain:app"\npidfile = "corral.pid"\n')
    line = _refused(corral("run", cwd=tmp_path))
    assert "corral.toml: [web] pidfile: the pid file is the manager's" in line, line
    assert "under [corral]" in line, line


def test_a_user_corral_cannot_become_is_refused_when_not_root(launch, nobody_python, public_dir):
    (public_dir / "corral.toml").write_text(
        '[corral]\nuser = "root"\n\n[processes.idle]\ncommand = "sleep 60"\n'
    )
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    started = time.monotonic()
    line = _refused(launch([*as_nobody, str(nobody_python), "-m", "corral", "run"], public_dir))
    assert (
        "corral.toml: [corral] user: 'root': only root can run the children as another user "
        "or group" in line
    ), line
    assert f"corral runs as uid {pwd.getpwnam('nobody').pw_uid}" in line, line
    assert time.monotonic() - started < 15
