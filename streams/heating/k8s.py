"""Heating jobs as Kubernetes Jobs, through the official client's asyncio API.

The Job runs the same image and command as the controller's local launcher
(``python -m streams.heating --target C --job-id ID``) and is never retried:
``backoffLimit: 0``, ``restartPolicy: Never``, and a ``podFailurePolicy`` that fails
the Job on exit code 1 (heating failed) or 3 (FATAL: stay down) so neither a new pod
nor a count against a backoff limit can ever start the burner again by itself.
The outcome is read back from the Job's conditions (``Complete`` / ``Failed``) and the
pod's terminated container (its exit code).

In production the controller lives in the HomeKit bridge's pod and builds its Jobs from
:func:`production_template` — the template ``deploy/gen`` renders the scheduled CronJob
from — with the image of its own pod (:func:`own_image`), so a Job runs exactly the image
the overlay deployed, whatever registry or tag it names.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes.aio import client as k8s
from kubernetes.aio.client.exceptions import ApiException

from streams.heating.launch import JobEnd, LaunchError, job_args
from streams.settings import Settings, SettingsError

log = logging.getLogger(__name__)

CONTAINER = "heating-job"
APP_LABEL = "app.kubernetes.io/name"
JOB_ID_LABEL = "heater.local/job-id"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
#: Exit codes after which the Job fails at once (streams.exitcodes HEATING_FAILED, STAY_DOWN).
FAIL_JOB_EXIT_CODES = (1, 3)
#: How long the bridge waits at start-up for the API server to show its own pod.
API_TIMEOUT_S = 10.0
#: The long-running container of every platform pod (``deploy/gen`` names it so).
WORKER_CONTAINER = "worker"
#: Where production pods find their Kafka client certificate (Strimzi's KafkaUser Secret) and the cluster CA.
KAFKA_CLUSTER = "heater-kafka"
KAFKA_USER_DIR = "/etc/heater/kafka-user"
KAFKA_CA_DIR = "/etc/heater/kafka-ca"
#: Where production pods find their own certificate (cert-manager's Secret NAME-tls: tls.crt, tls.key, ca.crt).
TLS_DIR = "/etc/heater/tls"
#: The ports every production pod serves (the heater-settings ConfigMap sets them): the API, with mTLS,
#: and the plain-HTTP port that serves only /healthz, /readyz and /metrics.
WEB_PORT = 8080
PROBE_PORT = 9090


@dataclass(frozen=True)
class JobTemplate:
    """Where and how a heating Job runs; everything but the target and the id."""

    image: str
    namespace: str = "heater"
    command: tuple[str, ...] = ("python", "-m", "streams.heating")
    service_account: str = "heating-job"
    env_config_maps: tuple[str, ...] = ("heater-settings",)
    env: dict[str, str] = field(default_factory=dict)
    active_deadline_s: int = 900
    ttl_after_finished_s: int = 3600
    cpu: str = "100m"
    memory: str = "128Mi"
    #: Secrets mounted read-only, secret name → path: the job's Kafka client certificate and
    #: the cluster's CA (the production profile connects with TLS client authentication), and
    #: its own certificate for its API (mTLS).
    secrets: dict[str, str] = field(default_factory=dict)
    #: Container ports the job serves, name → number (declared, so they show in the pod spec).
    ports: dict[str, int] = field(default_factory=dict)


def production_template(image: str, namespace: str) -> JobTemplate:
    """The production heating Job: its own Kafka user, identity and certificate, the cluster CA (the CronJob's too)."""
    return JobTemplate(
        image=image, namespace=namespace,
        env={"HEATER_SERVICE_IDENTITY": f"CN={CONTAINER}", "HEATER_BROKER_SSL_CERTFILE": f"{KAFKA_USER_DIR}/user.crt",
             "HEATER_BROKER_SSL_KEYFILE": f"{KAFKA_USER_DIR}/user.key"},
        secrets={CONTAINER: KAFKA_USER_DIR, f"{KAFKA_CLUSTER}-cluster-ca-cert": KAFKA_CA_DIR, f"{CONTAINER}-tls": TLS_DIR},
        ports={"https": WEB_PORT, "probe": PROBE_PORT},
    )


def volume_name(secret: str) -> str:
    return f"secret-{secret}"[:63]


def job_name(job_id: str) -> str:
    return f"heating-{job_id}"


def build_job(job_id: str, target_c: float, template: JobTemplate) -> k8s.V1Job:
    """The Job object for one heating cycle."""
    labels = {APP_LABEL: CONTAINER, "app.kubernetes.io/part-of": "heater", JOB_ID_LABEL: job_id}
    container = k8s.V1Container(
        name=CONTAINER,
        image=template.image,
        command=list(template.command),
        args=job_args(job_id, target_c),
        env=[k8s.V1EnvVar(name=k, value=v) for k, v in sorted(template.env.items())] or None,
        ports=[k8s.V1ContainerPort(name=name, container_port=number, protocol="TCP")
               for name, number in sorted(template.ports.items())] or None,
        env_from=[k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=n)) for n in template.env_config_maps] or None,
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": template.cpu, "memory": template.memory}, limits={"memory": template.memory}
        ),
        volume_mounts=[k8s.V1VolumeMount(name=volume_name(secret), mount_path=path, read_only=True)
                       for secret, path in sorted(template.secrets.items())] or None,
        security_context=k8s.V1SecurityContext(
            run_as_non_root=True,
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
    )
    pod_spec = k8s.V1PodSpec(
        restart_policy="Never",
        service_account_name=template.service_account,
        containers=[container],
        volumes=[k8s.V1Volume(name=volume_name(secret), secret=k8s.V1SecretVolumeSource(secret_name=secret))
                 for secret in sorted(template.secrets)] or None,
    )
    spec = k8s.V1JobSpec(
        backoff_limit=0,
        active_deadline_seconds=template.active_deadline_s,
        ttl_seconds_after_finished=template.ttl_after_finished_s,
        pod_failure_policy=k8s.V1PodFailurePolicy(
            rules=[
                k8s.V1PodFailurePolicyRule(
                    action="FailJob",
                    on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(
                        container_name=CONTAINER, operator="In", values=list(FAIL_JOB_EXIT_CODES)
                    ),
                )
            ]
        ),
        template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod_spec),
    )
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=k8s.V1ObjectMeta(
            name=job_name(job_id),
            namespace=template.namespace,
            labels=labels,
            annotations={"heater.local/target-c": f"{float(target_c):.1f}"},
        ),
        spec=spec,
    )


def job_manifest(job_id: str, target_c: float, template: JobTemplate) -> dict[str, Any]:
    """The Job as the JSON the API server receives (what ``kubernetes-validate`` checks)."""
    return k8s.ApiClient().sanitize_for_serialization(build_job(job_id, target_c, template))


def terminal(job: k8s.V1Job) -> str | None:
    """``Complete`` or ``Failed`` once the Job has ended, else None."""
    for condition in (job.status.conditions if job.status else None) or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition.type
    return None


class KubernetesLauncher:
    """Creates heating Jobs and follows them to their end."""

    def __init__(self, api: k8s.ApiClient, template: JobTemplate, poll_s: float = 1.0) -> None:
        self.batch = k8s.BatchV1Api(api)
        self.core = k8s.CoreV1Api(api)
        self.template = template
        self.poll_s = poll_s

    @property
    def namespace(self) -> str:
        return self.template.namespace

    async def start(self, job_id: str, target_c: float) -> None:
        body = build_job(job_id, target_c, self.template)
        try:
            created = await self.batch.create_namespaced_job(self.namespace, body)
        except ApiException as exc:
            raise LaunchError(f"the API server refused Job {job_name(job_id)}: {exc.status} {exc.reason}") from exc
        log.info("heating Job %s/%s created (uid %s)", self.namespace, created.metadata.name, created.metadata.uid)

    async def running(self) -> list[str]:
        """Heating Jobs in the namespace that have not ended (also those of a previous controller)."""
        try:
            jobs = await self.batch.list_namespaced_job(self.namespace, label_selector=f"{APP_LABEL}={CONTAINER}")
        except ApiException as exc:
            raise LaunchError(f"cannot list heating Jobs: {exc.status} {exc.reason}") from exc
        return [
            (job.metadata.labels or {}).get(JOB_ID_LABEL, job.metadata.name)
            for job in jobs.items
            if terminal(job) is None
        ]

    async def terminate(self, job_id: str) -> None:
        """Delete the Job in the foreground: its pod gets SIGTERM (the job closes the gas on the way
        out), and the Job stays listed — counted as running — until that pod is gone."""
        try:
            await self.batch.delete_namespaced_job(job_name(job_id), self.namespace, propagation_policy="Foreground")
        except ApiException as exc:
            if exc.status != 404:  # already gone: nothing left to stop
                raise LaunchError(f"the API server refused to delete Job {job_name(job_id)}: {exc.status} {exc.reason}") from exc
        log.info("heating Job %s/%s deleted (stop requested)", self.namespace, job_name(job_id))

    async def wait(self, job_id: str) -> JobEnd:
        name = job_name(job_id)
        while True:
            try:
                job = await self.batch.read_namespaced_job_status(name, self.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return JobEnd(None, f"Job {name} disappeared")
                log.warning("reading Job %s failed (%s); retrying", name, exc.status)
                await asyncio.sleep(self.poll_s)
                continue
            ended = terminal(job)
            if ended == "Complete":
                return JobEnd(0, "Job complete")
            if ended == "Failed":
                return await self._failed(job)
            await asyncio.sleep(self.poll_s)

    async def _failed(self, job: k8s.V1Job) -> JobEnd:
        condition = next(c for c in job.status.conditions if c.type == "Failed" and c.status == "True")
        why = f"Job failed: {condition.reason or ''} {condition.message or ''}".strip()
        pods = await self.core.list_namespaced_pod(self.namespace, label_selector=f"{JOB_NAME_LABEL}={job.metadata.name}")
        for pod in pods.items:
            for status in (pod.status.container_statuses if pod.status else None) or []:
                terminated = status.state.terminated if status.state else None
                if status.name == CONTAINER and terminated is not None:
                    return JobEnd(terminated.exit_code, why)
        return JobEnd(None, why)


async def own_image(api: k8s.ApiClient, namespace: str, pod: str) -> str:
    """The image of this pod's worker container (one image runs every service and the heating job)."""
    try:
        found = await asyncio.wait_for(k8s.CoreV1Api(api).read_namespaced_pod(pod, namespace), API_TIMEOUT_S)
    except ApiException as exc:
        raise LaunchError(f"cannot read this pod {namespace}/{pod} for its image: {exc.status} {exc.reason}") from exc
    except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
        raise LaunchError(f"the API server did not answer for pod {namespace}/{pod}: {exc!r}") from exc
    for container in found.spec.containers:
        if container.name == WORKER_CONTAINER:
            return str(container.image)
    raise LaunchError(f"pod {namespace}/{pod} has no {WORKER_CONTAINER!r} container to take the image from")


async def production_launcher(settings: Settings, api: k8s.ApiClient | None = None) -> KubernetesLauncher:
    """Heating Jobs on the API server (the pod's service account unless ``api`` is given), with this pod's image.

    Raises :class:`SettingsError` without ``HEATER_POD_NAME`` and :class:`LaunchError` when the
    API server cannot be reached or refuses: the bridge does not start without its way to heat.
    """
    if not settings.pod_name:
        raise SettingsError("HEATER_POD_NAME is not set: the Deployment passes the pod's name (Downward API metadata.name)")
    if api is None:
        from kubernetes.aio.config.config_exception import ConfigException

        try:
            api = incluster_client()
        except ConfigException as exc:
            raise LaunchError(f"no in-cluster Kubernetes configuration: {exc}") from exc
    image = await own_image(api, settings.namespace, settings.pod_name)
    log.info("heating Jobs will run image %s in namespace %s", image, settings.namespace)
    return KubernetesLauncher(api, production_template(image, settings.namespace))


def incluster_client() -> k8s.ApiClient:
    """An API client from the pod's service account (production)."""
    from kubernetes.aio import config

    configuration = k8s.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return k8s.ApiClient(configuration)
