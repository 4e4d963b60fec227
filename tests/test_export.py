"""`corral export`: the same corral.toml, as Kubernetes objects, systemd units and a compose file.

Each engine's output is validated offline with its own tools (kubernetes-validate,
systemd-analyze, the compose specification's schema), then checked for what
schemas do not say: the probes' paths, the grace periods, which job went where.
The generated web unit is run under socket activation, as systemd would.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from croniter import croniter
from kubernetes_validate.utils import latest_version

from conftest import APPS
from corral.export.common import Cron, cron_of
from corral.export.systemd import on_calendar
from corral.settings import JobConfig

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"
OLDEST_KUBERNETES = "1.30.0"  # the preStop sleep action is on by default from 1.30

SYSTEM = """
[web]
app = "plain:app"
bind = ["127.0.0.1:8000"]
workers = 3
graceful_timeout = "20s"
boot_timeout = "30s"

[prestart]
steps = ["echo migrating", { call = "plain:app" }]

[processes.consumer]
command = "sleep 600"
replicas = 2
stop_timeout = "7s"

[processes.mail_out]
command = "sleep 600"
restart = "on-failure"

[jobs.report]
command = "echo report"
schedule = "30 9 * * mon-fri"
timezone = "Europe/Paris"
timeout = "90s"

[jobs.beat]
command = "echo tick"
every = "1s"
"""


def export(directory: Path, engine: str, *args: str) -> tuple[dict[str, str], str]:
    """Run `corral export ENGINE -o OUT ARGS` in `directory`; the files written, and stderr."""
    out = directory / f"out-{engine}"
    done = subprocess.run(
        [sys.executable, "-m", "corral", "export", engine, "-o", str(out), *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return {path.name: path.read_text() for path in sorted(out.iterdir())}, done.stderr


@pytest.fixture
def system(tmp_path: Path) -> Path:
    """A folder `shop` with the corral.toml above and the app it names."""
    directory = tmp_path / "shop"
    directory.mkdir()
    (directory / "corral.toml").write_text(SYSTEM)
    shutil.copy(APPS / "plain.py", directory / "plain.py")
    return directory


# -- Kubernetes ------------------------------------------------------------------------


def kubernetes_objects(files: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for text in files.values():
        for document in yaml.safe_load_all(text):
            objects[document["kind"], document["metadata"]["name"]] = document
    return objects


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, latest_version()])
def test_kubernetes_objects_validate_strictly(system, version):
    files, _ = export(system, "kubernetes", "--image", "shop:1")
    paths = sorted((system / "out-kubernetes").iterdir())
    done = subprocess.run(
        [BIN / "kubernetes-validate", "--strict", "-k", version, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert report.count(" passed for resource ") == sum(
        text.count("\nkind: ") + text.startswith("kind: ") for text in files.values()
    ), report
    assert "WARN" not in report and "ERROR" not in report, report


def test_kubernetes_web_is_one_worker_per_pod_with_probes_that_cannot_kill_it_for_the_app(system):
    files, notes = export(system, "kubernetes", "--image", "shop:1")
    objects = kubernetes_objects(files)
    web = objects["Deployment", "shop-web"]
    spec = web["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    command = container["command"]
    assert command[:6] == ["corral", "run", "--only", "web", "--workers", "1"], command
    assert web["spec"]["replicas"] == 3  # the configured workers
    assert web["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000, "probes": 9000}
    assert "--bind" in command and command[command.index("--bind") + 1] == "0.0.0.0:8000"
    assert command[command.index("--probes") + 1] == "0.0.0.0:9000"
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "probes"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30  # the boot timeout
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep >= 1
    assert spec["terminationGracePeriodSeconds"] >= sleep + 20  # + the graceful timeout
    service = objects["Service", "shop-web"]
    assert service["spec"]["selector"] == web["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert "Deployment shop-web of 3 pods of 1 worker each" in notes


def test_kubernetes_objects_hold_together(system):
    """What no schema checks: enum values, selectors, probe ports, a Job's restartPolicy."""
    objects = kubernetes_objects(export(system, "kubernetes", "--image", "shop:1")[0])
    for (kind, name), document in objects.items():
        labels = document["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "shop", name
        if kind == "Deployment":
            spec = document["spec"]
            assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
            assert spec["strategy"]["type"] in ("RollingUpdate", "Recreate")
            assert spec["template"]["spec"]["restartPolicy"] == "Always"
            pod = spec["template"]["spec"]
        elif kind == "CronJob":
            assert document["spec"]["concurrencyPolicy"] in ("Allow", "Forbid", "Replace")
            assert croniter.is_valid(document["spec"]["schedule"])
            pod = document["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            assert pod["restartPolicy"] in ("Never", "OnFailure"), name
        elif kind == "Job":
            pod = document["spec"]["template"]["spec"]
            assert pod["restartPolicy"] in ("Never", "OnFailure"), name
        else:
            continue
        for container in pod["containers"]:
            named = {port["name"] for port in container.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    check = container[probe]["httpGet"]
                    assert check["port"] in named, (name, probe)
                    assert check["path"] == ("/livez" if probe == "livenessProbe" else "/readyz")


def test_kubernetes_jobs_go_to_cronjobs_when_they_can_and_stay_in_corral_otherwise(system):
    files, notes = export(system, "kubernetes", "--image", "shop:1")
    objects = kubernetes_objects(files)
    report = objects["CronJob", "shop-report"]["spec"]
    assert report["schedule"] == "30 9 * * mon-fri"
    assert report["timeZone"] == "Europe/Paris"
    assert report["concurrencyPolicy"] == "Forbid"  # overlap = "skip"
    assert report["startingDeadlineSeconds"] > 0
    job = report["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    assert job["activeDeadlineSeconds"] == 90
    assert job["template"]["spec"]["containers"][0]["command"] == ["corral", "job", "report"]
    assert ("CronJob", "shop-beat") not in objects
    jobs = objects["Deployment", "shop-jobs"]["spec"]
    assert jobs["replicas"] == 1 and jobs["strategy"] == {"type": "Recreate"}
    command = jobs["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["corral", "run", "--only", "jobs.beat"], command
    assert "job beat: kept in corral, in Deployment shop-jobs" in notes
    assert "every = 1s" in notes
    assert "job report: CronJob shop-report" in notes


def test_kubernetes_process_groups_are_deployments_and_say_what_they_change(system):
    files, notes = export(system, "kubernetes", "--image", "shop:1")
    objects = kubernetes_objects(files)
    consumer = objects["Deployment", "shop-consumer"]["spec"]
    assert consumer["replicas"] == 2
    assert consumer["template"]["spec"]["terminationGracePeriodSeconds"] >= 7
    command = consumer["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["corral", "run", "--only", "consumer.1"]
    assert ("Deployment", "shop-mail-out") in objects  # `_` is not a DNS name's
    assert "CORRAL_REPLICA is 1 in each" in notes
    assert "mail_out: restart = 'on-failure' is kept in corral" in notes


def test_kubernetes_prestart_is_one_job_named_after_its_steps(system):
    first = [
        name
        for kind, name in kubernetes_objects(export(system, "kubernetes", "--image", "shop:1")[0])
        if kind == "Job"
    ]
    config = system / "corral.toml"
    config.write_text(config.read_text().replace("echo migrating", "echo migrating again"))
    shutil.rmtree(system / "out-kubernetes")
    files, notes = export(system, "kubernetes", "--image", "shop:1")
    second = [name for kind, name in kubernetes_objects(files) if kind == "Job"]
    assert len(first) == len(second) == 1
    assert first[0].startswith("shop-prestart-") and second[0] != first[0]
    job = kubernetes_objects(files)["Job", second[0]]["spec"]
    assert job["template"]["spec"]["containers"][0]["command"] == ["corral", "prestart"]
    assert job["backoffLimit"] == 0
    assert "the Deployments do not wait for" in notes


def test_kubernetes_environment_goes_to_a_config_map_and_a_secret(system):
    config = system / "corral.toml"
    config.write_text('env_file = "app.env"\n[env]\nMODE = "prod"\n' + config.read_text())
    (system / "app.env").write_text("TOKEN=s3cret\n")
    refused = subprocess.run(
        [sys.executable, "-m", "corral", "export", "kubernetes", "--image", "shop:1"],
        cwd=system,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 1
    assert "--workdir" in refused.stderr and "app.env" in refused.stderr
    files, notes = export(system, "kubernetes", "--image", "shop:1", "--workdir", "/srv/shop")
    objects = kubernetes_objects(files)
    assert objects["ConfigMap", "shop-env"]["data"] == {"MODE": "prod"}
    assert objects["Secret", "shop-env-file"]["stringData"] == {"env": "TOKEN=s3cret\n"}
    pod = objects["Deployment", "shop-web"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": "shop-env"}}]
    assert container["volumeMounts"][0]["mountPath"] == "/srv/shop/app.env"
    assert pod["volumes"] == [{"name": "env-file", "secret": {"secretName": "shop-env-file"}}]
    assert "keep that file out of version control" in notes


def test_an_unexpressible_web_address_is_refused(system):
    config = system / "corral.toml"
    config.write_text(config.read_text().replace('["127.0.0.1:8000"]', '["unix:/tmp/shop.sock"]'))
    done = subprocess.run(
        [sys.executable, "-m", "corral", "export", "compose", "--image", "shop:1"],
        cwd=system,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "unix:/tmp/shop.sock" in done.stderr and "TCP" in done.stderr


# -- systemd ---------------------------------------------------------------------------


def systemd_units(system: Path) -> tuple[dict[str, str], str]:
    return export(system, "systemd", "--executable", str(BIN / "corral"))


def test_systemd_units_verify_without_a_word(system):
    files, _ = systemd_units(system)
    out = system / "out-systemd"
    instances = [out / "shop-consumer@1.service", out / "shop-mail_out@1.service"]
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *map(str, sorted(out.iterdir())), *map(str, instances)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == "", done.stderr  # a warning is a failure too
    assert set(files) == {
        "shop.target",
        "shop-prestart.service",
        "shop-web.socket",
        "shop-web.service",
        "shop-consumer@.service",
        "shop-mail_out@.service",
        "shop-report.timer",
        "shop-report.service",
        "shop-jobs.service",
    }


def test_systemd_units_say_what_systemd_needs_to_know(system):
    files, notes = systemd_units(system)
    corral = str(BIN / "corral")
    target = files["shop.target"]
    for unit in (
        "shop-prestart.service",
        "shop-web.socket",
        "shop-web.service",
        "shop-consumer@1.service",
        "shop-consumer@2.service",
        "shop-mail_out@1.service",
        "shop-report.timer",
        "shop-jobs.service",
    ):
        assert f"Wants={unit}\n" in target, unit
    for name, text in files.items():
        if name != "shop.target":
            assert "PartOf=shop.target\n" in text, name
    web = files["shop-web.service"]
    for line in (
        "Type=notify",
        f"ExecStart={corral} run --only web",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillMode=mixed",
        "Restart=on-failure",
        "Requires=shop-prestart.service",
        "After=shop-prestart.service",
        f"WorkingDirectory={system}",
    ):
        assert f"{line}\n" in web, line
    stop = int(re.search(r"TimeoutStopSec=(\d+)s", web)[1])
    assert stop >= 20  # the graceful timeout
    assert "ListenStream=127.0.0.1:8000\n" in files["shop-web.socket"]
    assert f"ExecStart={corral} run --only consumer.%i\n" in files["shop-consumer@.service"]
    prestart = files["shop-prestart.service"]
    assert "Type=oneshot\n" in prestart and "RemainAfterExit=yes\n" in prestart
    timer = files["shop-report.timer"]
    assert "OnCalendar=Mon,Tue,Wed,Thu,Fri *-*-* 09:30:00 Europe/Paris\n" in timer
    assert f"ExecStart={corral} job report\n" in files["shop-report.service"]
    assert f"ExecStart={corral} run --only jobs.beat\n" in files["shop-jobs.service"]
    assert "job beat: kept in corral, in shop-jobs.service" in notes
    assert "mail_out: shop-mail_out@.service, instances 1..1; restart = 'on-failure'" in notes


IDENTITIES = """
[corral]
user = "nobody"
group = "nogroup"

[web]
app = "plain:app"
bind = ["127.0.0.1:{port}"]
user = "www-data"

[processes.worker]
command = "sleep 600"

[jobs.hourly]
command = "true"
schedule = "0 * * * *"
"""


def _unit_setting(unit: str, key: str) -> str:
    return re.search(rf"^{key}=(.*)$", unit, re.MULTILINE)[1]


def test_each_systemd_unit_runs_as_the_identity_its_children_need_and_corral_keeps_it(
    launch, nobody_python, public_dir, free_port
):
    """[corral]'s user for every unit, [web]'s for web's (group: [corral]'s); corral started
    by each as that user runs its part without trying to switch user again."""
    (public_dir / "corral.toml").write_text(IDENTITIES.format(port=free_port))
    shutil.copy(APPS / "plain.py", public_dir / "plain.py")
    files, _ = export(public_dir, "systemd", "--executable", str(nobody_python.parent / "corral"))
    name = next(n.removesuffix("-web.service") for n in files if n.endswith("-web.service"))
    web = files[f"{name}-web.service"]
    assert (_unit_setting(web, "User"), _unit_setting(web, "Group")) == ("www-data", "nogroup")
    for unit in (f"{name}-worker@.service", f"{name}-hourly.service"):
        text = files[unit]
        assert (_unit_setting(text, "User"), _unit_setting(text, "Group")) == (
            "nobody",
            "nogroup",
        ), unit

    def as_unit(unit: str, instance: str = "") -> list[str]:
        """The unit's ExecStart as systemd runs it: as its User= and Group=, with the user's
        groups."""
        argv = shlex.split(_unit_setting(unit, "ExecStart").replace("%i", instance))
        user, group = _unit_setting(unit, "User"), _unit_setting(unit, "Group")
        return ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", *argv]

    served = launch(as_unit(web), cwd=public_dir)
    assert served.url() == f"http://127.0.0.1:{free_port}"
    replica = launch(as_unit(files[f"{name}-worker@.service"], "1"), cwd=public_dir)
    replica.wait_for(r"worker\.1 started")
    job = subprocess.run(
        as_unit(files[f"{name}-hourly.service"]),
        cwd=public_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 0, job.stdout + job.stderr
    assert "hourly run ok" in job.stdout, job.stdout
    assert served.stop() == 0 and replica.stop() == 0
    for started in (served, replica):
        assert "only root can" not in started.output, started.output

    # Started as web's user, a corral for the worker cannot become [corral]'s: it says so.
    wrong = [*as_unit(web)[:4], *as_unit(files[f"{name}-worker@.service"], "1")[4:]]
    refused = subprocess.run(wrong, cwd=public_dir, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith(
        "corral: error: corral.toml: [corral] user: 'nobody': only root can run the children"
    ), refused.stderr


def _identities(system: Path, corral_user: str, corral_group: str, web_user: str) -> None:
    toml = (system / "corral.toml").read_text()
    toml = toml.replace("[web]\n", f'[web]\nuser = "{web_user}"\n')
    table = f'[corral]\nuser = "{corral_user}"\ngroup = "{corral_group}"\n\n'
    (system / "corral.toml").write_text(table + toml)


def test_compose_services_run_as_the_identity_their_children_need(system):
    _identities(system, "nobody", "nogroup", "www-data")
    files, notes = export(system, "compose", "--image", "shop:1")
    services = yaml.safe_load(files["compose.yaml"])["services"]
    users = {name: service.get("user") for name, service in services.items()}
    assert users == {
        "prestart": "nobody:nogroup",
        "web": "www-data:nogroup",
        "consumer": "nobody:nogroup",
        "mail_out": "nobody:nogroup",
        "jobs": "nobody:nogroup",
    }
    assert "compose: web: user www-data:nogroup, the identity its children run as" in notes


@pytest.mark.parametrize("numeric", [True, False], ids=["numbers", "names"])
def test_kubernetes_pods_run_as_their_childrens_identity_when_it_is_a_number(system, numeric):
    ids = ("65534", "65534", "33") if numeric else ("nobody", "nogroup", "www-data")
    _identities(system, *ids)
    files, notes = export(system, "kubernetes", "--image", "shop:1")
    contexts = {}
    for (kind, name), document in kubernetes_objects(files).items():
        spec = document["spec"]
        template = spec["jobTemplate"]["spec"] if kind == "CronJob" else spec
        if "template" in template:
            contexts[name] = template["template"]["spec"].get("securityContext")
    others = {"runAsUser": 65534, "runAsGroup": 65534} if numeric else None
    web = {"runAsUser": 33, "runAsGroup": 65534} if numeric else None
    assert contexts.pop("shop-web") == web
    assert contexts and all(context == others for context in contexts.values()), contexts
    said = "user 'www-data' and group 'nogroup' (names)" in notes
    assert said is not numeric, notes
    paths = sorted((system / "out-kubernetes").iterdir())
    done = subprocess.run(
        [BIN / "kubernetes-validate", "--strict", "-k", OLDEST_KUBERNETES, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "WARN" not in done.stdout, done.stdout + done.stderr


CALENDARS = [
    "30 9 * * mon-fri",
    "*/15 * * * *",
    "0 9-17/2 * * *",
    "5 4 1,15 * sun",  # a day of the month or a day of the week: two OnCalendar=
    "0 0 1 jan,jul *",
    "@hourly",
]


@pytest.mark.parametrize("expression", CALENDARS)
@pytest.mark.parametrize("zone", ["Etc/UTC", "America/New_York"])
def test_a_timer_fires_when_the_cron_expression_does(expression, zone):
    cron = cron_of(JobConfig(command="true", schedule=expression, timezone=zone))
    assert cron is not None
    base = datetime(2024, 3, 9, 12, 0, tzinfo=timezone.utc)  # a US clock change follows
    expected = croniter(expression, base.astimezone(ZoneInfo(zone)))
    wanted = [expected.get_next(datetime).astimezone(timezone.utc) for _ in range(8)]
    fired: set[datetime] = set()
    since = f"--base-time=@{int(base.timestamp())}"
    for spec in on_calendar(cron):
        done = subprocess.run(
            [SYSTEMD_ANALYZE, "calendar", "--iterations=8", since, spec],
            capture_output=True,
            text=True,
            timeout=30,
            env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 0, (spec, done.stderr)
        for found in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", done.stdout):
            fired.add(datetime.fromisoformat(found).replace(tzinfo=timezone.utc))
    assert sorted(fired)[:8] == wanted, on_calendar(cron)


@pytest.mark.parametrize(
    ("job", "kept"),
    [
        (JobConfig(command="true", every=300), False),
        (JobConfig(command="true", every=7200), False),
        (JobConfig(command="true", every=1), True),
        (JobConfig(command="true", every=90), True),
        (JobConfig(command="true", schedule="*/5 * * * * *"), True),  # seconds
        (JobConfig(command="true", schedule="0 0 L * *"), True),
        (JobConfig(command="true", schedule="0 0 15W * *"), True),
        (JobConfig(command="true", schedule="0 0 * * 1#2"), True),
    ],
)
def test_schedules_a_cron_expression_cannot_say_stay_in_corral(job, kept):
    cron = cron_of(job)
    assert (cron is None) is kept
    if cron is not None:
        assert isinstance(cron, Cron) and croniter.is_valid(cron.expression)


def test_the_generated_web_unit_serves_under_socket_activation(system, launch):
    files, _ = systemd_units(system)
    service = files["shop-web.service"]
    argv = shlex.split(re.search(r"^ExecStart=(.*)$", service, re.MULTILINE)[1])
    workdir = re.search(r"^WorkingDirectory=(.*)$", service, re.MULTILINE)[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(system / "notify.sock"))
    notify.settimeout(20)
    server = launch(
        [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}", "-E", "NOTIFY_SOCKET", *argv],
        cwd=Path(workdir),
        env={"NOTIFY_SOCKET": str(system / "notify.sock")},
    )
    server.wait_for(f"Listening on 127.0.0.1:{port}")
    # The first connection starts corral, which serves it from the socket it was handed.
    response = httpx.get(f"http://127.0.0.1:{port}/", timeout=20)
    assert response.status_code == 200
    assert notify.recv(4096) == b"READY=1"
    assert server.wait_for(r"listening on (\S+)")[1] == f"http://127.0.0.1:{port}"
    assert "cannot listen" not in server.output
    assert server.stop() == 0, server.output
    assert notify.recv(4096) == b"STOPPING=1"
    notify.close()


# -- compose ---------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification(system):
    export(system, "compose", "--image", "shop:1")
    done = subprocess.run(
        [
            BIN / "check-jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(system / "out-compose" / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_services_wait_for_prestart_and_scale_without_host_ports(system):
    files, notes = export(system, "compose", "--image", "shop:1")
    compose = yaml.safe_load(files["compose.yaml"])
    assert compose["name"] == "shop"
    services = compose["services"]
    assert set(services) == {"prestart", "web", "consumer", "mail_out", "jobs"}
    assert services["prestart"]["command"] == ["corral", "prestart"]
    assert services["prestart"]["restart"] == "no"
    for name in ("web", "consumer", "mail_out", "jobs"):
        assert services[name]["depends_on"] == {
            "prestart": {"condition": "service_completed_successfully"}
        }
    web = services["web"]
    assert web["ports"] == ["127.0.0.1:8000:8000"]  # as corral.toml binds it, on the host
    assert "/readyz" in " ".join(web["healthcheck"]["test"])
    assert int(web["stop_grace_period"].removesuffix("s")) >= 20
    consumer = services["consumer"]
    assert "ports" not in consumer and consumer["deploy"] == {"replicas": 2}
    assert consumer["command"][:4] == ["corral", "run", "--only", "consumer.1"]
    assert services["jobs"]["command"][:4] == ["corral", "run", "--only", "jobs"]
    assert "jobs beat, report: kept in corral, in service jobs" in notes


# -- the same bytes wherever the folder is -----------------------------------------------

MOVABLE = """
env_file = ".env"

[web]
app = "plain:app"
bind = ["127.0.0.1:8000"{unix}]

[processes.consumer]
command = "sleep 600"
cwd = "work"
"""
MOVABLE_OPTIONS = {
    "kubernetes": ["--image", "shop:1", "--workdir", "/app"],
    "compose": ["--image", "shop:1", "--workdir", "/app"],
    "systemd": ["--workdir", "/srv/shop"],
}


@pytest.mark.parametrize("engine", sorted(MOVABLE_OPTIONS))
def test_a_copy_of_the_folder_elsewhere_exports_the_same_bytes(tmp_path, engine):
    """No path in an export says where the configuration's folder is on this machine."""
    exported = []
    for parent in ("here", "there/deeper"):
        folder = tmp_path / parent / "shop"
        (folder / "work").mkdir(parents=True)
        unix = ', "unix:run/shop.sock"' if engine == "systemd" else ""
        (folder / "corral.toml").write_text(MOVABLE.format(unix=unix))
        (folder / ".env").write_text("SECRET=1\n")
        shutil.copy(APPS / "plain.py", folder / "plain.py")
        options = MOVABLE_OPTIONS[engine]
        if engine == "systemd":  # a corral in the folder's own virtualenv
            corral = folder / ".venv" / "bin" / "corral"
            corral.parent.mkdir(parents=True)
            corral.write_text("#!/bin/sh\n")
            options = [*options, "--executable", str(corral)]
        files, _ = export(folder, engine, *options)
        assert str(tmp_path) not in "".join(files.values()), files
        exported.append(files)
    assert exported[0] == exported[1]
    text = "".join(exported[0].values())
    if engine == "systemd":
        assert "ExecStart=/srv/shop/.venv/bin/corral run --only web\n" in text
        assert "ListenStream=/srv/shop/run/shop.sock\n" in text
    elif engine == "compose":
        assert "source: ../.env\n" in text  # from out-compose/, where compose.yaml is
        assert "target: /app/.env\n" in text


# -- the committed example ----------------------------------------------------------------

EXAMPLE = ROOT / "examples" / "queue"
# How examples/queue/deploy was made, from the repository's root (and how to remake it).
EXAMPLE_EXPORTS = {
    "kubernetes": ["--image", "corral-queue:latest"],
    "systemd": ["--executable", "/usr/local/bin/corral", "--workdir", "/srv/queue"],
    "compose": ["--image", "corral-queue:latest"],
}


@pytest.mark.parametrize("engine", sorted(EXAMPLE_EXPORTS))
def test_the_committed_example_exports_are_what_corral_export_writes_today(engine, tmp_path):
    config = EXAMPLE / "corral.toml"
    out = tmp_path / engine
    done = subprocess.run(
        [sys.executable, "-m", "corral", "export", engine, "-c", str(config), "-o", str(out)]
        + EXAMPLE_EXPORTS[engine],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    committed = EXAMPLE / "deploy" / engine
    remake = textwrap.dedent(
        f"""
        regenerate with: corral export {engine} -c examples/queue/corral.toml
        -o examples/queue/deploy/{engine} {" ".join(EXAMPLE_EXPORTS[engine])}
        """
    )
    assert sorted(p.name for p in committed.iterdir()) == sorted(p.name for p in out.iterdir()), (
        remake
    )
    for path in out.iterdir():
        assert (committed / path.name).read_bytes() == path.read_bytes(), remake
