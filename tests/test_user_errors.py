"""Every command, given each kind of mistake, says one line naming the thing and exits with the
code the README gives; `corral check` finds every problem `corral run` would, before anything
starts, each named where it came from.

Each command runs as a subprocess in a folder of its own (`corral run` is bounded: it must
refuse at once). No mocks: real files, real users, real programs that are not there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import APPS

TIMEOUT = 60  # seconds any of these commands may take

SOUND = """
[web]
app = "plain:app"
port = 0

[processes.worker]
command = "sleep 600"

[jobs.tick]
command = "true"
every = "1h"
"""


def _corral(
    directory: Path, *args: str, python: str | Path = sys.executable
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "corral", *args],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _project(directory: Path, toml: str) -> Path:
    shutil.copy(APPS / "plain.py", directory / "plain.py")
    (directory / "corral.toml").write_text(toml)
    return directory


def _one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line a refused command printed (stdout and stderr together); its exit code."""
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert len(said) == 1, done.stdout + done.stderr
    assert done.returncode == code, (done.returncode, done.stdout + done.stderr)
    return said[0]


# -- each command, each kind of mistake ----------------------------------------------------

# The code each command exits with for a mistake of the user's (README: exit codes).
COMMANDS = {
    "run": (["run"], 2),
    "check": (["check"], 1),
    "prestart": (["prestart"], 2),
    "job": (["job", "tick"], 2),
    "export kubernetes": (["export", "kubernetes", "--image", "shop:1"], 2),
    "export systemd": (["export", "systemd"], 2),
    "export compose": (["export", "compose", "--image", "shop:1"], 2),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_missing_file_is_one_line_naming_it(tmp_path, command):
    args, code = COMMANDS[command]
    line = _one_line(_corral(tmp_path, *args, "-c", "/nope.toml"), code)
    assert line == "corral: error: -c /nope.toml: no such file", line


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_file_that_is_not_a_configuration_is_said_to_be_so(tmp_path, command):
    args, code = COMMANDS[command]
    line = _one_line(_corral(tmp_path, *args, "-c", "/dev/null"), code)
    assert "/dev/null declares none" in line, line
    assert "no such file" not in line, line


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_bad_file_is_one_line_naming_the_key(tmp_path, command):
    _project(tmp_path, SOUND.replace('every = "1h"', 'every = "soon"'))
    args, code = COMMANDS[command]
    line = _one_line(_corral(tmp_path, *args), code)
    assert line.startswith("corral: error: corral.toml: [jobs.tick] every: "), line
    assert "'soon'" in line, line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["job", "nosuch"], "no job named 'nosuch' (jobs: tick)"),
        (["run", "--only", "nosuch"], "--only: 'nosuch' names nothing here"),
        (["export", "compose", "--image", "i", "--name", "Bad_Name"], "--name 'Bad_Name'"),
        (["export", "kubernetes"], "kubernetes: give --image"),
        (["export", "systemd", "--workdir", "srv"], "--workdir 'srv': expected an absolute"),
    ],
    ids=["job", "run --only", "export --name", "export --image", "export --workdir"],
)
def test_an_unknown_name_or_a_missing_option_is_one_line_and_exit_2(tmp_path, args, expected):
    _project(tmp_path, SOUND)
    line = _one_line(_corral(tmp_path, *args), 2)
    assert line.startswith("corral: error: ") and expected in line, line


def test_a_job_whose_program_is_not_there_fails_its_run_in_one_line(tmp_path):
    _project(tmp_path, SOUND.replace('command = "true"', 'command = "/no/such"'))
    line = _one_line(_corral(tmp_path, "job", "tick"), 1)
    assert "tick run failed: cannot start:" in line and "'/no/such'" in line, line


def test_check_names_every_program_a_command_runs_that_is_not_there(tmp_path):
    toml = SOUND.replace('"sleep 600"', '"no-such-program-here 600"')
    toml = toml.replace('command = "true"', 'command = "./bin/tick"')
    done = _corral(_project(tmp_path, toml), "check")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "corral: error: corral.toml: [processes.worker] command: no program "
        f"'no-such-program-here' on PATH ({_path()})",
        "corral: error: corral.toml: [jobs.tick] command: no such program './bin/tick'",
    ], done.stderr


def _path() -> str:
    import os

    return os.environ.get("PATH", os.defpath)


@pytest.mark.parametrize(
    "command", ["run", "check", "prestart", "job"]
)  # what runs children here; export writes for another machine
def test_a_user_it_cannot_become_is_one_line_naming_where_it_was_set(tmp_path, command):
    _project(tmp_path, '[corral]\nuser = "no-such-user"\n' + SOUND)
    args, code = COMMANDS[command]
    line = _one_line(_corral(tmp_path, *args), code)
    assert line == "corral: error: corral.toml: [corral] user: 'no-such-user': no such user", line


def test_an_export_does_not_ask_for_this_machines_users_or_files(tmp_path):
    """The units run elsewhere: a user, a certificate that only exists there are not refused."""
    toml = '[corral]\nuser = "no-such-user"\n' + SOUND.replace(
        "port = 0", 'port = 8000\ncertfile = "/etc/there/cert.pem"'
    )
    done = _corral(_project(tmp_path, toml), "export", "systemd")
    assert done.returncode == 0, done.stderr
    assert "User=no-such-user\n" in done.stdout
    assert "corral with 1 worker\n" in done.stderr  # not "1 workers"


# -- check finds what run finds ------------------------------------------------------------

# Every problem `run` finds before it starts anything, in one file, each with its message.
NOT_HERE = {
    '[corral]\nuser = "no-such-user"': "[corral] user: 'no-such-user': no such user",
    'probes = "nope"': "[corral] probes: 'nope': expected HOST:PORT, such as 0.0.0.0:9000",
    'pidfile = "/nonexistent/corral.pid"': "[corral] pidfile: cannot create "
    "'/nonexistent/corral.pid': no such folder '/nonexistent'",
    'log_file = "/nonexistent/corral.log"': "[corral] log_file: cannot create "
    "'/nonexistent/corral.log': no such folder '/nonexistent'",
    'control = "/nonexistent/control.sock"': "[corral] control: cannot bind "
    "'/nonexistent/control.sock': no such folder '/nonexistent'",
    '[web]\napp = "plain:app"\nbind = ["127.0.0.1:99999"]': "[web] bind: '127.0.0.1:99999': "
    "expected a port number from 0 to 65535",
    'certfile = "cert.pem"': "[web] certfile: no such file 'cert.pem'",
    'keyfile = "key.pem"': "[web] keyfile: no such file 'key.pem'",
    'ca_certs = "ca.pem"': "[web] ca_certs: no such file 'ca.pem'",
    'env_file = "web.env"': "[web] env_file: no such file 'web.env'",
    '[processes.worker]\ncommand = "sleep 600"\ncwd = "no-such-folder"': "[processes.worker] "
    "cwd: no such folder 'no-such-folder'",
}


def test_check_finds_every_problem_run_finds_at_once_each_named_where_it_came_from(tmp_path):
    _project(tmp_path, "\n".join(NOT_HERE) + "\n")
    expected = sorted(f"corral: error: corral.toml: {message}" for message in NOT_HERE.values())

    checked = _corral(tmp_path, "check")
    ran = _corral(tmp_path, "run")

    assert (checked.returncode, sorted(checked.stderr.splitlines())) == (1, expected)
    assert (ran.returncode, sorted(ran.stderr.splitlines())) == (2, expected)
    assert ran.stdout == "" and not (tmp_path / "corral.pid").exists()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--env-file", "x.env"], "--env-file: no such file 'x.env'"),
        (["--certfile", "cert.pem", "--keyfile", "key.pem"], "--certfile: no such file"),
        (["--keyfile", "key.pem", "--certfile", "cert.pem"], "--keyfile: no such file 'key.pem'"),
        (["--probes", "nope"], "--probes: 'nope': expected HOST:PORT"),
        (["--bind", "unix:/nonexistent/web.sock"], "--bind: cannot bind '/nonexistent/web.sock'"),
    ],
    ids=["env-file", "certfile", "keyfile", "probes", "bind"],
)
def test_a_flag_naming_a_file_or_an_address_that_cannot_work_is_refused_at_start(
    tmp_path, flag, message
):
    shutil.copy(APPS / "plain.py", tmp_path / "plain.py")
    done = _corral(tmp_path, "run", "plain:app", "--port", "0", *flag)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr, done.stderr
    assert "listening on" not in done.stdout


# -- words -----------------------------------------------------------------------------------


def test_an_unknown_table_is_named_as_a_table_with_a_did_you_mean(tmp_path):
    _project(tmp_path, SOUND + '\n[mystery]\nkey = 1\n\n[job.beat]\ncommand = "true"\n')
    done = _corral(tmp_path, "check")
    assert done.returncode == 1
    assert sorted(done.stderr.splitlines()) == [
        "corral: error: corral.toml: [job]: unknown table (did you mean [jobs]?)",
        "corral: error: corral.toml: [mystery]: unknown table",
    ], done.stderr


def test_a_target_that_is_not_callable_is_named_with_its_type_and_the_right_article(tmp_path):
    (tmp_path / "tasks.py").write_text("number = 5\nitems = []\n")
    toml = '[web]\napp = "tasks:number"\n\n[processes.worker]\ncall = "tasks:items"\n'
    done = _corral(_project(tmp_path, toml), "check")
    assert done.returncode == 1
    assert sorted(done.stderr.splitlines()) == [
        "corral: error: corral.toml: [processes.worker] call 'tasks:items': "
        "'tasks:items' is a list, not callable",
        "corral: error: corral.toml: [web] app 'tasks:number': "
        "tasks:number is an int, not an ASGI or WSGI app",
    ], done.stderr


def test_check_names_an_app_given_on_the_command_line_as_app(tmp_path):
    done = _corral(_project(tmp_path, SOUND), "check", "nosuch:app")
    assert done.returncode == 1
    assert done.stderr.startswith("corral: error: APP 'nosuch:app': cannot import 'nosuch'"), (
        done.stderr
    )


def test_a_key_without_its_certificate_is_named_where_it_was_given(tmp_path):
    (tmp_path / "key.pem").write_text("")
    toml = SOUND.replace("port = 0", 'port = 0\nkeyfile = "key.pem"')
    line = _one_line(_corral(_project(tmp_path, toml), "run"), 2)
    assert line == (
        "corral: error: corral.toml: [web] keyfile: a key goes with its certificate: "
        "give certfile (--certfile) too"
    ), line
    line = _one_line(_corral(tmp_path, "run", "plain:app", "--keyfile", "key.pem"), 2)
    assert line.startswith("corral: error: --keyfile: a key goes with its certificate"), line


def test_a_factory_without_its_name_is_refused_where_it_was_asked_for(tmp_path):
    toml = SOUND.replace("port = 0", "port = 0\nfactory = true")
    line = _one_line(_corral(_project(tmp_path, toml), "check", "plain.py"), 1)
    assert line == (
        "corral: error: corral.toml: [web] factory: a factory is called by its name: "
        "give it in the app, as plain.py:NAME"
    ), line
    line = _one_line(_corral(tmp_path, "run", "plain.py", "--factory"), 2)
    assert line.startswith("corral: error: --factory: a factory is called by its name"), line


def test_check_takes_the_flags_run_takes_and_checks_them_as_run_would(tmp_path):
    """A command line is checked as it will run; a message that asks for a flag names one
    check takes."""
    (tmp_path / "both.py").write_text(
        "class App:\n    def __call__(self, a, b, c=None):\n        pass\n\napp = App()\n"
    )
    asked = _one_line(_corral(tmp_path, "check", "both:app"), 1)
    assert "give --interface asgi or --interface wsgi" in asked, asked
    done = _corral(tmp_path, "check", "both:app", "--interface", "asgi")
    assert (done.returncode, done.stdout) == (
        0,
        "corral: configuration valid; every target imports\n",
    )
    line = _one_line(_corral(tmp_path, "check", "both:app", "--workers", "0"), 1)
    assert line == "corral: error: --workers: expected a number of 1 or more, got '0'", line


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["run", "plain:app", "--wrokers", "2"], "No such option '--wrokers'"),
        (["check", "--wrokers", "2"], "No such option '--wrokers'"),
        (["scale"], "Missing argument 'GROUP=N...'"),
        (["export", "nomad"], "'nomad' is not one of 'kubernetes', 'systemd', 'compose'"),
        (["status", "--jsn"], "No such option '--jsn'"),
        (["nosuch"], "No such command 'nosuch'"),
    ],
    ids=["run", "check", "scale", "export", "status", "command"],
)
def test_a_wrong_flag_or_argument_is_one_line_as_every_other_mistake(tmp_path, args, named):
    line = _one_line(_corral(tmp_path, *args), 2)
    assert line.startswith("corral: error: ") and named in line, line


# -- what the workers import, refused before they start ------------------------------------

OPTIONAL = ("zttp", "wsproto")  # corral's extras: corral[zttp], corral[wsproto]


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory) -> Path:
    """The python of a virtualenv holding every package of this one but zttp and wsproto."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=TIMEOUT
    )
    python = root / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    theirs = Path(
        subprocess.run(
            [python, "-c", where], capture_output=True, text=True, check=True, timeout=TIMEOUT
        ).stdout.strip()
    )
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(OPTIONAL):
            (theirs / entry.name).symlink_to(entry)
    return python


@pytest.mark.parametrize(
    ("flags", "toml", "expected"),
    [
        (
            ["--http", "zttp"],
            "",
            "--http: zttp needs the zttp package, not installed: pip install zttp",
        ),
        (["--http", "zttp", "--http2"], "", "--http: zttp needs the zttp package"),
        ([], 'http = "zttp"\nhttp2 = true', "corral.toml: [web] http: zttp needs the zttp package"),
        (
            ["--ws", "wsproto"],
            "",
            "--ws: wsproto needs the wsproto package, not installed: pip install wsproto",
        ),
        ([], 'ws = "wsproto"', "corral.toml: [web] ws: wsproto needs the wsproto package"),
    ],
    ids=["http", "http2", "file-http", "ws", "file-ws"],
)
def test_a_protocol_whose_package_is_not_installed_is_refused_with_how_to_install_it(
    tmp_path, without_extras, flags, toml, expected
):
    """By `corral run` and `corral check`, flags and file alike."""
    _project(tmp_path, SOUND.replace("port = 0", f"port = 0\n{toml}"))
    for command, code in [("run", 2), ("check", 1)]:
        line = _one_line(_corral(tmp_path, command, *flags, python=without_extras), code)
        assert line.startswith(f"corral: error: {expected}"), (command, line)
    if not flags:  # an export is for another machine, where the package may well be
        exported = _corral(tmp_path, "export", "systemd", python=without_extras)
        assert exported.returncode == 0, exported.stdout + exported.stderr


# -- values written as gunicorn and TOML users write them --------------------------------------

WRITTEN_NATURALLY = """
[corral]
only = "web,jobs"

[env]
PORT = 5
RATIO = 0.5

[web]
app = "plain:app"
bind = "127.0.0.1:0"
env = { WORKERS_HINT = 2 }

[jobs.tick]
command = "sh -c 'echo $PORT $RATIO $N'"
every = "1h"
env = { N = 3 }
"""


def test_one_address_as_a_string_and_numbers_in_env_tables_are_taken(tmp_path):
    _project(tmp_path, WRITTEN_NATURALLY)
    checked = _corral(tmp_path, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ran = _corral(tmp_path, "job", "tick")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "tick       | 5 0.5 3" in ran.stdout.splitlines(), ran.stdout


def test_one_bind_address_as_a_string_is_taken_by_corral_run_too():
    from corral.settings import resolve

    system = resolve("plain:app", {"bind": "127.0.0.1:8000"}, None, APPS, str, environ={})
    assert system.web is not None and system.web.bind == ["127.0.0.1:8000"]


def test_an_id_as_a_number_and_trusted_addresses_as_a_list_are_taken(tmp_path):
    """As gunicorn takes `user = 1000` and uvicorn a list of forwarded_allow_ips."""
    from corral.settings import resolve

    uid, gid = os.getuid(), os.getgid()
    toml = (
        f'[corral]\nuser = {uid}\ngroup = {gid}\n\n[web]\napp = "plain:app"\n'
        f'user = {uid}\nforwarded_allow_ips = ["127.0.0.1", "10.0.0.0/8"]\n'
    )
    _project(tmp_path, toml)
    checked = _corral(tmp_path, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    system = resolve(None, {}, None, tmp_path, str, environ={})
    assert system.web is not None
    assert (system.web.user, system.web.group) == (str(uid), str(gid))
    assert system.web.forwarded_allow_ips == "127.0.0.1,10.0.0.0/8"


def test_a_file_mode_written_as_a_decimal_number_is_refused_saying_how_to_write_it(tmp_path):
    _project(tmp_path, '[web]\napp = "plain:app"\nuds_permissions = 660\n')
    line = _one_line(_corral(tmp_path, "check"), 1)
    assert line == (
        "corral: error: corral.toml: [web] uds_permissions: expected a file mode from 000 to 777 "
        "(octal), got the number 660 (0o1224): write it as octal text, '660', "
        "or as a TOML octal number, 0o660"
    ), line
    _project(tmp_path, '[web]\napp = "plain:app"\nuds_permissions = 0o660\n')
    assert _corral(tmp_path, "check").returncode == 0


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[env]\nPORT = { x = 1 }", "[env]: 'PORT': expected a string or a number, got a table"),
        (
            '[web]\napp = "plain:app"\nenv = { PORT = [1] }',
            "[web] env: 'PORT': expected a string or a number, got an array",
        ),
        (
            '[jobs.tick]\ncommand = "true"\nevery = "1h"\nenv = { DEBUG = true }',
            "[jobs.tick] env: 'DEBUG': expected a string or a number, got a boolean",
        ),
    ],
    ids=["env", "web", "job"],
)
def test_an_env_value_that_is_not_text_or_a_number_is_refused_naming_its_key(
    tmp_path, toml, expected
):
    _project(tmp_path, toml + "\n")
    line = _one_line(_corral(tmp_path, "check"), 1)
    assert line == f"corral: error: corral.toml: {expected}", line


def test_a_control_address_with_a_port_that_is_not_a_number_is_refused_not_made_a_file(tmp_path):
    toml = SOUND + '\n[corral]\ncontrol = "127.0.0.1:notaport"\n'
    expected = (
        "'127.0.0.1:notaport': expected HOST:PORT with a port number from 0 to 65535; "
        "a socket path with a ':' needs a '/', such as ./127.0.0.1:notaport"
    )
    _project(tmp_path, toml)
    for command, code in (("run", 2), ("check", 1)):
        line = _one_line(_corral(tmp_path, command), code)
        assert line == f"corral: error: corral.toml: [corral] control: {expected}", line
    line = _one_line(_corral(tmp_path, "run", "--control", "127.0.0.1:notaport"), 2)
    assert line == f"corral: error: --control: {expected}", line
    assert not (tmp_path / "127.0.0.1:notaport").exists()


# -- TLS files, loaded as a worker loads them ----------------------------------------------------


def _tls_files(directory: Path) -> None:
    """cert.pem and its key.pem, both.pem holding the two, other-key.pem of another certificate."""
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    issued, other = authority.issue_cert("localhost"), authority.issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    issued.private_key_pem.write_to_path(str(directory / "key.pem"))
    issued.private_key_and_cert_chain_pem.write_to_path(str(directory / "both.pem"))
    other.private_key_pem.write_to_path(str(directory / "other-key.pem"))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"certfile": "plain.py"},
            "certfile: 'plain.py': not a PEM certificate "
            "([X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found)",
        ),
        (
            {"certfile": "cert.pem", "keyfile": "other-key.pem"},
            "keyfile: 'other-key.pem': not an unencrypted PEM private key of the certificate in "
            "'cert.pem' ([X509: KEY_VALUES_MISMATCH] key values mismatch)",
        ),
        (
            {"certfile": "cert.pem", "keyfile": "plain.py"},
            "keyfile: 'plain.py': not an unencrypted PEM private key of the certificate in "
            "'cert.pem' ([SSL] PEM lib)",
        ),
        (
            {"certfile": "cert.pem"},
            "certfile: 'cert.pem': no unencrypted private key of its certificate in it: "
            "give keyfile (--keyfile) too ([SSL] PEM lib)",
        ),
        (
            {"certfile": "both.pem", "ca_certs": "plain.py"},
            "ca_certs: 'plain.py': not PEM certificates "
            "([X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found)",
        ),
    ],
    ids=["not-a-certificate", "another-key", "not-a-key", "no-key", "not-ca-certs"],
)
def test_a_tls_file_that_cannot_be_loaded_is_refused_naming_it_and_ssls_reason(
    tmp_path, files, expected
):
    _tls_files(tmp_path)
    settings = "\n".join(f'{name} = "{path}"' for name, path in files.items())
    _project(tmp_path, SOUND.replace("port = 0", f"port = 0\n{settings}"))
    for command, code in (("run", 2), ("check", 1)):
        line = _one_line(_corral(tmp_path, command), code)
        assert line == f"corral: error: corral.toml: [web] {expected}", (command, line)
    flags = [part for name, path in files.items() for part in (f"--{name.replace('_', '-')}", path)]
    line = _one_line(_corral(tmp_path, "run", "plain:app", "--port", "0", *flags), 2)
    assert line == f"corral: error: --{expected.replace('ca_certs', 'ca-certs')}", line


@pytest.mark.parametrize("files", [("cert.pem", "key.pem"), ("both.pem",)], ids=["pair", "one"])
def test_a_sound_certificate_and_key_pass_the_check(tmp_path, files):
    _tls_files(tmp_path)
    settings = f'certfile = "{files[0]}"' + (f'\nkeyfile = "{files[1]}"' if files[1:] else "")
    _project(tmp_path, SOUND.replace("port = 0", f"port = 0\n{settings}"))
    done = _corral(tmp_path, "check")
    assert done.returncode == 0, done.stdout + done.stderr
