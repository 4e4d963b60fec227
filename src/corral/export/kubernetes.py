"""corral.toml as Kubernetes objects (Kubernetes 1.30 or newer: the preStop sleep action).

- web: a Deployment of one-worker pods (`corral run --only web --workers 1`),
  replicas = workers, and a Service; startup and readiness probes on /readyz,
  liveness on /livez (the manager's loop, never the app's dependencies); a
  preStop sleep so the endpoints go before SIGTERM; a grace period covering
  the sleep and the graceful timeout; rolling updates that never remove a pod
  before its replacement is ready.
- each process group: a Deployment of its replicas, one per pod.
- each job a CronJob can express: a CronJob (`corral job NAME`); the others, in
  one Deployment of 1 replica with the Recreate strategy, so that two
  schedulers never run at once.
- prestart: one Job, named after a hash of its steps.
- [env]: a ConfigMap; env_file: a Secret, mounted where corral reads it.
"""

from __future__ import annotations

from typing import Any

from corral.export.common import (
    STOP_MARGIN,
    Environment,
    Export,
    Target,
    cron_of,
    dns_names,
    graceful_stop,
    ports,
    prestart_hash,
    probes_port,
    replica_note,
    seconds,
    tcp_addresses,
    why_kept,
)
from corral.export.documents import dump_all
from corral.settings import System
from corral.settings.declared import jobs_stop_timeout
from corral.words import counted

ENGINE = "kubernetes"
PRESTOP_SLEEP = 5  # seconds for the endpoints to drop a stopping pod before it gets SIGTERM
STARTING_DEADLINE = 30  # seconds: a run that cannot start this long after its tick is skipped
PROBE_PERIOD = 5
STARTUP_PERIOD = 2


def export(system: System, target: Target, environment: Environment) -> Export:
    assert target.image is not None, "corral.export.export() asks for the image"
    result = Export()
    objects = _Objects(system, target, environment, result.notes)
    documents: dict[str, list[dict[str, Any]]] = {}
    if environment.table:
        documents["env.configmap"] = [objects.config_map()]
    if environment.file is not None:
        documents["env-file.secret"] = [objects.secret()]
    if system.prestart.steps:
        documents["prestart.job"] = [objects.prestart()]
    if system.web is not None:
        documents["web.deployment"] = [objects.web()]
        documents["web.service"] = [objects.service()]
    for name in sorted(system.processes):
        documents[f"{name}.deployment"] = [objects.process(name)]
    kept = []
    for name in sorted(system.jobs):
        config = system.jobs[name]
        cron = cron_of(config)
        if cron is None or config.jitter:
            kept.append(name)
            result.notes.append(
                f"kubernetes: job {name}: kept in corral, in Deployment {objects.name('jobs')} "
                f"(a CronJob cannot express {why_kept(config, cron)})"
            )
        else:
            documents[f"{name}.cronjob"] = [objects.cron_job(name, cron.expression, cron.timezone)]
            result.notes.append(
                f"kubernetes: job {name}: CronJob {objects.job_names[name]} ({cron.said})"
            )
    if kept:
        documents["jobs.deployment"] = [objects.jobs(kept)]
    result.files = {
        f"{target.name}-{stem}.yaml": dump_all(docs) for stem, docs in sorted(documents.items())
    }
    return result


class _Objects:
    def __init__(
        self, system: System, target: Target, environment: Environment, notes: list[str]
    ) -> None:
        self.system = system
        self.target = target
        self.environment = environment
        self.notes = notes
        self.process_names = dns_names(target.name, sorted(system.processes), "process group")
        self.job_names = dns_names(target.name, sorted(system.jobs), "job")
        self.web_ports: list[int] = []
        if system.web is not None:
            self.web_ports = ports(tcp_addresses(system.web, ENGINE))
        self.probes = probes_port(system, self.web_ports, ENGINE)
        self.mount = environment.mount_path(target, ENGINE)
        # Each pod starts as the identity its children run as, so corral there keeps it.
        self.run_as = self._run_as("the pods but web's", system.manager.user, system.manager.group)
        self.web_run_as: dict[str, int] = {}
        if system.web is not None:
            self.web_run_as = self._run_as("the web pods", system.web.user, system.web.group)

    def name(self, part: str) -> str:
        return f"{self.target.name}-{part}"

    # -- the objects ---------------------------------------------------------------

    def config_map(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self._metadata(self.name("env"), "env"),
            "data": dict(sorted(self.environment.table.items())),
        }

    def secret(self) -> dict[str, Any]:
        assert self.environment.file is not None
        self.notes.append(
            f"kubernetes: env_file {str(self.environment.file)!r} is in Secret "
            f"{self.name('env-file')} with its values: keep that file out of version control"
        )
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self._metadata(self.name("env-file"), "env"),
            "type": "Opaque",
            "stringData": {"env": self.environment.file_text},
        }

    def prestart(self) -> dict[str, Any]:
        name = self.name(f"prestart-{prestart_hash(self.system)}")
        self.notes.append(
            f"kubernetes: prestart: Job {name}, which the Deployments do not wait for: apply it "
            f"first and wait for it (kubectl wait --for=condition=complete job/{name})"
        )
        container = self._container("prestart", self.target.corral("prestart"), probes=False)
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": self._metadata(name, "prestart"),
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": self._labels(name, "prestart")},
                    "spec": self._pod_spec([container], restart="Never", web=False),
                },
            },
        }

    def web(self) -> dict[str, Any]:
        web = self.system.web
        assert web is not None
        binds = [arg for port in self.web_ports for arg in ("--bind", f"0.0.0.0:{port}")]
        command = self.target.corral("run", "--only", "web", "--workers", "1", *binds)
        container = self._container("web", command, probes=True)
        container["ports"] = [
            {"name": _port_name(port, self.web_ports), "containerPort": port, "protocol": "TCP"}
            for port in self.web_ports
        ] + container["ports"]
        allowed = -(-seconds(web.boot_timeout) // STARTUP_PERIOD) + 1  # the boot timeout, and 1
        container["startupProbe"] = _probe("/readyz", STARTUP_PERIOD, allowed)
        container["readinessProbe"] = _probe("/readyz", PROBE_PERIOD, 1)
        container["livenessProbe"] = _probe("/livez", PROBE_PERIOD * 2, 3)
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP}}}
        self.notes.append(
            f"kubernetes: web: Deployment {self.name('web')} of {counted(web.workers, 'pod')} "
            f"of 1 worker each, listening on 0.0.0.0 in the pod (Service {self.name('web')}, port "
            f"{', '.join(map(str, self.web_ports))}); probes on port {self.probes}"
        )
        grace = PRESTOP_SLEEP + graceful_stop(web)
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        return self._deployment(
            self.name("web"), "web", web.workers, container, grace, strategy, web=True
        )

    def service(self) -> dict[str, Any]:
        name = self.name("web")
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self._metadata(name, "web"),
            "spec": {
                "selector": self._labels(name, "web"),
                "ports": [
                    {
                        "name": _port_name(port, self.web_ports),
                        "port": port,
                        "targetPort": _port_name(port, self.web_ports),
                        "protocol": "TCP",
                    }
                    for port in self.web_ports
                ],
            },
        }

    def process(self, group: str) -> dict[str, Any]:
        config = self.system.processes[group]
        name = self.process_names[group]
        command = self.target.corral("run", "--only", f"{group}.1")
        container = self._container("process", command, probes=True)
        container["livenessProbe"] = _probe("/livez", PROBE_PERIOD * 2, 3)
        if config.replicas > 1:
            self.notes.append(replica_note(ENGINE, group, config.replicas, "pods"))
        if config.restart != "always":
            self.notes.append(
                f"kubernetes: {group}: restart = {config.restart!r} is kept in corral, in each "
                "pod: a pod whose process has exited stays up with nothing to run (a "
                "Deployment restarts every pod that exits, so corral does not exit); a new "
                "pod (a node lost, a rollout) starts the process again"
            )
        grace = seconds(config.stop_timeout) + STOP_MARGIN
        strategy = {"type": "RollingUpdate"}
        return self._deployment(
            name, "process", config.replicas, container, grace, strategy, web=False
        )

    def cron_job(self, job: str, schedule: str, timezone: str) -> dict[str, Any]:
        config = self.system.jobs[job]
        name = self.job_names[job]
        container = self._container("job", self.target.corral("job", job), probes=False)
        spec: dict[str, Any] = {"backoffLimit": 0}
        if config.timeout is not None:
            spec["activeDeadlineSeconds"] = seconds(config.timeout)
        spec["template"] = {
            "metadata": {"labels": self._labels(name, "cronjob")},
            "spec": self._pod_spec([container], restart="Never", web=False),
        }
        return {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": self._metadata(name, "cronjob"),
            "spec": {
                "schedule": schedule,
                "timeZone": timezone,
                "concurrencyPolicy": "Forbid" if config.overlap == "skip" else "Allow",
                "startingDeadlineSeconds": STARTING_DEADLINE,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {"spec": spec},
            },
        }

    def jobs(self, kept: list[str]) -> dict[str, Any]:
        only = ",".join(f"jobs.{name}" for name in kept)
        command = self.target.corral("run", "--only", only)
        container = self._container("jobs", command, probes=True)
        container["livenessProbe"] = _probe("/livez", PROBE_PERIOD * 2, 3)
        stop_timeout = jobs_stop_timeout(self.system.jobs[name] for name in kept)
        grace = seconds(stop_timeout) + STOP_MARGIN
        name = self.name("jobs")
        return self._deployment(name, "jobs", 1, container, grace, {"type": "Recreate"}, web=False)

    # -- parts ---------------------------------------------------------------------

    def _deployment(
        self,
        name: str,
        component: str,
        replicas: int,
        container: dict[str, Any],
        grace: int,
        strategy: dict[str, Any],
        web: bool,
    ) -> dict[str, Any]:
        labels = self._labels(name, component)
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self._metadata(name, component),
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "strategy": strategy,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        **self._pod_spec([container], restart="Always", web=web),
                        "terminationGracePeriodSeconds": grace,
                    },
                },
            },
        }

    def _container(self, name: str, command: list[str], probes: bool) -> dict[str, Any]:
        container: dict[str, Any] = {"name": name, "image": self.target.image}
        if probes:
            command = [*command, "--probes", f"0.0.0.0:{self.probes}"]
        container["command"] = command
        if self.target.workdir is not None:
            container["workingDir"] = self.target.workdir
        if self.environment.table:
            container["envFrom"] = [{"configMapRef": {"name": self.name("env")}}]
        if self.mount is not None:
            container["volumeMounts"] = [
                {"name": "env-file", "mountPath": self.mount, "subPath": "env", "readOnly": True}
            ]
        if probes:
            container["ports"] = [
                {"name": "probes", "containerPort": self.probes, "protocol": "TCP"}
            ]
        return container

    def _pod_spec(
        self, containers: list[dict[str, Any]], restart: str, web: bool
    ) -> dict[str, Any]:
        """A pod's spec; `web`: it runs web's part (with web's identity, else [corral]'s)."""
        spec: dict[str, Any] = {"restartPolicy": restart, "containers": containers}
        run_as = self.web_run_as if web else self.run_as
        if run_as:
            spec["securityContext"] = run_as
        if self.mount is not None:
            spec["volumes"] = [
                {"name": "env-file", "secret": {"secretName": self.name("env-file")}}
            ]
        return spec

    def _metadata(self, name: str, component: str) -> dict[str, Any]:
        return {"name": name, "labels": self._labels(name, component)}

    def _labels(self, name: str, component: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": self.target.name,
            "app.kubernetes.io/managed-by": "corral",
        }

    def _run_as(self, whose: str, user: str | None, group: str | None) -> dict[str, int]:
        """securityContext's runAsUser and runAsGroup for `user` and `group`, those that are
        numbers; names are said in the notes (Kubernetes takes numbers only)."""
        found: dict[str, int] = {}
        named = []
        for key, value, kind in (("runAsUser", user, "user"), ("runAsGroup", group, "group")):
            if value is not None and value.isdigit():
                found[key] = int(value)
            elif value is not None:
                named.append(f"{kind} {value!r}")
        if named:
            self.notes.append(
                f"kubernetes: {whose} run the children as {' and '.join(named)} "
                f"({'names' if len(named) > 1 else 'a name'}), and securityContext "
                "(runAsUser, runAsGroup) takes numbers: they start as their "
                "image's user; corral there runs the children as asked if that user is root "
                "or already them, else it refuses to start (give numbers to set securityContext)"
            )
        return found


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "probes"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": max(1, failures),
    }


def _port_name(port: int, all_ports: list[int]) -> str:
    return "http" if len(all_ports) == 1 else f"http-{port}"
