"""Where corral listens: TCP over IPv4 and IPv6, Unix sockets, inherited descriptors, HTTPS."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import APPS, Corral
from corral.settings import WebConfig


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="corral-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def served_by_worker(response: httpx.Response, server: Corral) -> str:
    """The worker that answered (checked against the server's own workers); fails otherwise."""
    assert response.status_code == 200, response.text
    worker_id, pid = response.text.split()[:2]
    assert server.worker_pids().get(worker_id) == int(pid), (response.text, server.worker_pids())
    return worker_id


def listening_urls(server: Corral, count: int, timeout: float = 20) -> list[str]:
    """The addresses of the `listening on` lines, once there are `count` of them."""
    server.wait_for(r"listening on ", timeout)
    deadline = time.monotonic() + 5
    while server.count(r"listening on ") < count and time.monotonic() < deadline:
        time.sleep(0.05)
    urls = re.findall(r"listening on (\S+)", server.output)
    assert len(urls) == count, server.output
    return urls


def listening_ports(server: Corral) -> set[tuple[str, int]]:
    """Every TCP address a process of the server's tree listens on."""
    found = set()
    for proc in server.alive():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
    return found


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


# -- TCP ---------------------------------------------------------------------------


def test_host_and_port_zero_serve_on_a_free_port_of_that_host(corral):
    server = corral("run", "plain:app", "--host", "127.0.0.1", "--port", "0")
    url = server.url()
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", url)
    assert match, url
    assert int(match.group(1)) != 0
    server.wait_workers(1)
    assert served_by_worker(httpx.get(url), server) == "web.1"
    assert server.stop() == 0


def test_repeated_bind_serves_on_every_address(corral):
    server = corral("run", "plain:app", "-b", "127.0.0.1:0", "--bind", "127.0.0.1:0")
    urls = listening_urls(server, 2)
    assert len(set(urls)) == 2, urls
    server.wait_workers(1)
    for url in urls:
        assert served_by_worker(httpx.get(url), server) == "web.1"
    assert server.stop() == 0


@needs_ipv6
@pytest.mark.parametrize("how", [["-b", "[::1]:0"], ["--host", "::1", "--port", "0"]])
def test_serves_over_ipv6_loopback(corral, how):
    server = corral("run", "plain:app", *how)
    url = server.url()
    assert re.fullmatch(r"http://\[::1\]:\d+", url), url
    server.wait_workers(1)
    response = httpx.get(url)
    served_by_worker(response, server)
    assert response.text.split()[4] == "::1"  # the client the app sees came over IPv6
    assert server.stop() == 0


# -- Unix sockets ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["bind", "uds"])
def test_serves_on_a_unix_socket_and_removes_it_after_stop(corral, short_dir, how):
    path = short_dir / "app.sock"
    args = ["-b", f"unix:{path}"] if how == "bind" else ["--uds", str(path)]
    server = corral("run", "plain:app", *args)
    assert server.wait_for(r"listening on http\+unix:(\S+)").group(1) == str(path)
    server.wait_workers(1)
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as client:
        served_by_worker(client.get("http://corral/"), server)
    assert path.exists()
    assert server.stop() == 0
    assert not path.exists(), "the socket file outlived the server"


def test_a_stale_unix_socket_file_is_replaced(corral, short_dir):
    path = short_dir / "app.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # what a killed server leaves: the file, nobody listening
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe, pytest.raises(OSError):
        probe.connect(str(path))

    server = corral("run", "plain:app", "--uds", str(path))
    server.wait_for(r"listening on http\+unix:")
    server.wait_workers(1)
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as client:
        served_by_worker(client.get("http://corral/"), server)
    assert server.stop() == 0
    assert not path.exists()


def test_a_unix_socket_someone_answers_on_is_not_taken_over(corral, short_dir):
    path = short_dir / "app.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        server = corral("run", "plain:app", "--uds", str(path))
        assert server.wait(15) == 2
        assert server.count(rf"unix:{re.escape(str(path))}.*already in use") == 1, server.output
        assert path.exists(), "corral removed a socket file that another server listens on"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # the file still leads to the server that owns it
    assert not server.alive()


def connect_as(user: str, group: str, path: Path) -> int:
    """GET / over the Unix socket `path` as `user` and `group`: 0 if answered 200, else an errno.

    From a forked child of this process, which only makes system calls before
    it exits: the user need not be able to run this Python.
    """
    uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                code = 0 if sock.recv(64).startswith(b"HTTP/1.1 200 ") else 1
        except OSError as error:
            code = error.errno or 1
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to be another user")


@needs_root
@pytest.mark.parametrize(
    ("args", "mode", "owner", "nobody_gets"),
    [
        ([], 0o666, ("root", "root"), 0),
        (["--uds-permissions", "660", "--group", "nogroup"], 0o660, ("root", "nogroup"), 0),
        (["--uds-permissions", "0o600"], 0o600, ("root", "root"), 13),  # EACCES
    ],
    ids=["default", "group", "owner-only"],
)
def test_another_local_user_connects_to_the_unix_socket_as_its_mode_says(
    corral, short_dir, args, mode, owner, nobody_gets
):
    short_dir.chmod(0o711)  # the proxy's user may pass through, as through /run
    path = short_dir / "app.sock"
    previous = os.umask(0o022)  # what a root shell has
    try:
        server = corral("run", "clients:app", "--uds", str(path), *args)
    finally:
        os.umask(previous)
    server.wait_for(r"listening on http\+unix:")
    server.wait_workers(1)
    info = path.stat()
    assert oct(info.st_mode & 0o777) == oct(mode)
    assert (pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name) == owner
    assert connect_as("nobody", "nogroup", path) == nobody_gets
    assert server.stop() == 0


@needs_root
def test_the_unix_socket_belongs_to_user_and_group(launch, short_dir, nobody_python, public_dir):
    shutil.copy(APPS / "clients.py", public_dir)  # where nobody can read it
    short_dir.chmod(0o711)
    path = short_dir / "app.sock"
    identity = ["--user", "nobody", "--group", "nogroup"]
    command = [str(nobody_python), "-m", "corral", "run", "clients:app", "-b", f"unix:{path}"]
    server = launch([*command, *identity], public_dir)
    server.wait_workers(1)
    info = path.stat()
    assert (info.st_uid, info.st_gid) == (
        pwd.getpwnam("nobody").pw_uid,
        grp.getgrnam("nogroup").gr_gid,
    )
    assert info.st_mode & 0o777 == 0o666
    assert connect_as("nobody", "nogroup", path) == 0
    assert server.stop() == 0


@pytest.mark.parametrize(
    ("value", "mode"), [("660", 0o660), ("0660", 0o660), ("0o640", 0o640), (0o600, 0o600)]
)
def test_uds_permissions_is_octal_text_or_a_number_as_toml_writes_0o600(value, mode):
    assert WebConfig(app="main:app", uds_permissions=value).uds_permissions == mode


@pytest.mark.parametrize("value", ["999", "rw-rw-rw-", "0o1777"])
def test_a_bad_uds_permissions_exits_2_naming_it(corral, short_dir, value):
    server = corral(
        "run", "clients:app", "--uds", str(short_dir / "app.sock"), "--uds-permissions", value
    )
    assert server.wait(15) == 2
    assert server.count(r"--uds-permissions.*octal|--uds-permissions.*file mode") == 1, (
        server.output
    )


# -- inherited sockets -------------------------------------------------------------


def test_bind_fd_serves_on_a_socket_the_caller_passed(corral):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = corral("run", "plain:app", "-b", f"fd://{sock.fileno()}", pass_fds=[sock.fileno()])
        assert server.url() == f"http://127.0.0.1:{port}"
        server.wait_workers(1)
        served_by_worker(httpx.get(f"http://127.0.0.1:{port}/"), server)
        assert listening_ports(server) == {("127.0.0.1", port)}
        assert server.stop() == 0


SYSTEMD_WRAPPER = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "corral", "run", *sys.argv[2:]])
"""


def test_systemd_socket_activation_serves_on_the_passed_socket_and_binds_nothing(launch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        fd = sock.fileno()
        server = launch(
            [sys.executable, "-c", SYSTEMD_WRAPPER, str(fd), "plain:app"],
            env={"LISTEN_FDS": "1"},
            pass_fds=[fd],
        )
        assert server.url() == f"http://127.0.0.1:{port}"
        server.wait_workers(1)
        # The manager is the wrapper's process (exec keeps the pid) and took fd 3 for itself.
        assert psutil.Process(server.pid).cmdline()[0].startswith("corral: manager")
        served_by_worker(httpx.get(f"http://127.0.0.1:{port}/"), server)
        assert listening_ports(server) == {("127.0.0.1", port)}, "bound more than it was given"
        assert server.count(r"listening on ") == 1
        assert server.stop() == 0


# -- what cannot be bound ----------------------------------------------------------


def test_a_port_in_use_exits_2_at_once_naming_the_address(corral):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        server = corral("run", "plain:app", "--host", "127.0.0.1", "--port", str(port))
        assert server.wait(10) == 2
        assert time.monotonic() - started < 5
    assert server.count("already in use") == 1, server.output
    line = next(line for line in server.lines if "already in use" in line)
    assert f"127.0.0.1:{port}" in line
    assert server.count(r"listening on|started \(pid") == 0, server.output
    assert not server.wait_until_gone(2)


def test_a_port_in_use_releases_the_addresses_bound_before_it(corral):
    with socket.socket() as free, socket.socket() as taken:
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
        free.close()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        server = corral(
            "run", "plain:app", "-b", f"127.0.0.1:{free_port}", "-b", f"127.0.0.1:{taken_port}"
        )
        assert server.wait(10) == 2
    assert server.count(rf"127\.0\.0\.1:{taken_port}.*already in use") == 1, server.output
    assert port_is_free("127.0.0.1", free_port)
    assert not server.wait_until_gone(2)


def test_a_bad_bind_spec_exits_2_naming_it(corral):
    server = corral("run", "plain:app", "-b", "nonsense:port")
    assert server.wait(10) == 2
    assert server.count(r"error: .*nonsense:port") == 1, server.output
    assert server.count("Traceback") == 0, server.output
    assert not server.wait_until_gone(2)


# -- listen queue ------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read the backlog")
@pytest.mark.parametrize(("args", "expected"), [([], 2048), (["--backlog", "37"], 37)])
def test_backlog_sizes_the_listen_queue(corral, args, expected):
    server = corral("run", "plain:app", "--port", "0", *args)
    port = int(server.url().rpartition(":")[2])
    server.wait_workers(1)
    listing = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    # State Recv-Q Send-Q Local Peer: for a listening socket Send-Q is the backlog.
    assert listing[0] == "LISTEN" and listing[3] == f"127.0.0.1:{port}", listing
    assert int(listing[2]) == min(expected, int(Path("/proc/sys/net/core/somaxconn").read_text()))
    assert server.stop() == 0


# -- HTTPS -------------------------------------------------------------------------


def test_https_with_certfile_and_keyfile(corral, tmp_path):
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(certfile))
    for blob in certificate.cert_chain_pems[1:]:
        blob.write_to_path(str(certfile), append=True)
    certificate.private_key_pem.write_to_path(str(keyfile))

    server = corral(
        "run", "plain:app", "--port", "0", "--certfile", str(certfile), "--keyfile", str(keyfile)
    )
    url = server.url()
    assert url.startswith("https://127.0.0.1:"), url
    server.wait_workers(1)
    context = ssl.create_default_context()
    authority.configure_trust(context)
    with httpx.Client(verify=context) as client:
        response = client.get(url)
    served_by_worker(response, server)
    assert response.text.split()[3] == "https"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url)  # the system's CAs do not know the test's CA: verification is real
    assert server.stop() == 0
