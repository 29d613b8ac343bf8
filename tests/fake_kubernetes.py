"""A small Kubernetes API server in memory, answering like the real one for what the platform calls.

Jobs and pods live in dictionaries; the endpoints return the API server's status codes,
``Status`` bodies and ``JobList``/``PodList`` shapes, and ``finish`` plays the kubelet and the
Job controller from the Job spec it was given. Requests need the bearer :data:`TOKEN`.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from aiohttp import web
from kubernetes.aio import client as k8s

TOKEN = "test-token"
NAMESPACE = "heater"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def status_body(code: int, reason: str, message: str, **details: str) -> dict[str, Any]:
    return {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": details, "code": code,
    }


@dataclass
class FakeApiServer:
    """Jobs and their pods in memory; ``finish`` plays the kubelet and the Job controller."""

    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)
    #: Every Job deletion: (name, propagation policy).
    deletions: list[tuple[str, str]] = field(default_factory=list)
    versions: Any = field(default_factory=lambda: itertools.count(1000))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/apis/batch/v1/namespaces/{ns}/jobs", self.create_job)
        app.router.add_get("/apis/batch/v1/namespaces/{ns}/jobs", self.list_jobs)
        app.router.add_get("/apis/batch/v1/namespaces/{ns}/jobs/{name}", self.read_job)
        app.router.add_get("/apis/batch/v1/namespaces/{ns}/jobs/{name}/status", self.read_job)
        app.router.add_delete("/apis/batch/v1/namespaces/{ns}/jobs/{name}", self.delete_job)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self.list_pods)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", self.read_pod)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response(status_body(401, "Unauthorized", "Unauthorized"), status=401)
        return await handler(request)

    async def create_job(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        body = await request.json()
        self.received.append(body)
        name = (body.get("metadata") or {}).get("name")
        if body.get("kind") != "Job" or body.get("apiVersion") != "batch/v1" or not name:
            return web.json_response(status_body(422, "Invalid", "Job is invalid: metadata.name: Required value"), status=422)
        spec = body.get("spec", {})
        if spec.get("podFailurePolicy") and spec["template"]["spec"].get("restartPolicy") != "Never":
            return web.json_response(
                status_body(422, "Invalid", "spec.template.spec.restartPolicy: Invalid value: only Never is supported with podFailurePolicy"),
                status=422,
            )
        if (ns, name) in self.jobs:
            return web.json_response(
                status_body(409, "AlreadyExists", f'jobs.batch "{name}" already exists', name=name, group="batch", kind="jobs"),
                status=409,
            )
        job = {
            **body,
            "metadata": {
                **body["metadata"], "namespace": ns, "uid": str(uuid.uuid4()),
                "resourceVersion": str(next(self.versions)), "creationTimestamp": _now(), "generation": 1,
            },
            "status": {"startTime": _now(), "active": 1, "ready": 0, "terminating": 0, "uncountedTerminatedPods": {}},
        }
        self.jobs[(ns, name)] = job
        return web.json_response(job, status=201)

    async def read_job(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.jobs:
            return web.json_response(
                status_body(404, "NotFound", f'jobs.batch "{key[1]}" not found', name=key[1], group="batch", kind="jobs"), status=404
            )
        return web.json_response(self.jobs[key])

    async def delete_job(self, request: web.Request) -> web.Response:
        """As the API server deletes a Job: without a propagation policy its pods are orphaned (they run
        on); ``Foreground`` keeps the Job, marked, until the garbage collector (:meth:`collect`) has
        removed its pods; ``Background`` removes the Job at once and its pods later."""
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.jobs:
            return web.json_response(
                status_body(404, "NotFound", f'jobs.batch "{key[1]}" not found', name=key[1], group="batch", kind="jobs"), status=404
            )
        body = await request.json() if request.can_read_body else {}
        policy = request.query.get("propagationPolicy") or (body or {}).get("propagationPolicy") or "Orphan"
        self.deletions.append((key[1], policy))
        job = self.jobs[key]
        if policy == "Foreground":
            job["metadata"].update(deletionTimestamp=_now(), finalizers=["foregroundDeletion"])
            return web.json_response(job)
        del self.jobs[key]
        if policy == "Background":
            self.collect(key[1], key[0])
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                  "details": {"name": key[1], "group": "batch", "kind": "jobs"}})

    def collect(self, name: str, ns: str = NAMESPACE) -> None:
        """The garbage collector: a deleted Job's pods go (SIGTERM to their containers), then the Job."""
        for key in [k for k, pod in self.pods.items() if k[0] == ns and self._of_job(pod, name)]:
            del self.pods[key]
        job = self.jobs.get((ns, name))
        if job is not None and job["metadata"].get("deletionTimestamp"):
            del self.jobs[(ns, name)]

    @staticmethod
    def _of_job(pod: dict[str, Any], name: str) -> bool:
        return (pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == name

    async def read_pod(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.pods:
            return web.json_response(
                status_body(404, "NotFound", f'pods "{key[1]}" not found', name=key[1], kind="pods"), status=404
            )
        return web.json_response(self.pods[key])

    async def list_jobs(self, request: web.Request) -> web.Response:
        items = [j for (ns, _), j in self.jobs.items() if ns == request.match_info["ns"] and _selected(j, request)]
        return web.json_response(
            {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {"resourceVersion": str(next(self.versions))}, "items": items}
        )

    async def list_pods(self, request: web.Request) -> web.Response:
        items = [p for (ns, _), p in self.pods.items() if ns == request.match_info["ns"] and _selected(p, request)]
        return web.json_response(
            {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(next(self.versions))}, "items": items}
        )

    def add_pod(self, name: str, labels: dict[str, str], phase: str = "Running", ns: str = NAMESPACE,
                deleting: bool = False, containers: dict[str, str] | None = None) -> None:
        """A pod as the API server lists it (what a Deployment's pod looks like to discovery); ``containers``: name → image."""
        metadata: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels, "uid": str(uuid.uuid4()),
                                    "creationTimestamp": _now()}
        if deleting:
            metadata["deletionTimestamp"] = _now()
        self.pods[(ns, name)] = {
            "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": [{"name": c, "image": image} for c, image in
                                    (containers or {labels.get("app.kubernetes.io/name", name): "heater:test"}).items()]},
            "status": {"phase": phase},
        }

    def finish(self, name: str, exit_code: int, ns: str = NAMESPACE) -> None:
        """The pod's container exited with ``exit_code``: apply the Job's own failure rules."""
        job = self.jobs[(ns, name)]
        spec = job["spec"]
        container = spec["template"]["spec"]["containers"][0]["name"]
        pod_name = f"{name}-{uuid.uuid4().hex[:5]}"
        self.pods[(ns, pod_name)] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": ns, "labels": {"batch.kubernetes.io/job-name": name, "job-name": name}},
            "spec": spec["template"]["spec"],
            "status": {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [{
                    "name": container, "image": spec["template"]["spec"]["containers"][0]["image"], "imageID": "",
                    "ready": False, "restartCount": 0, "started": False,
                    "state": {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                             "startedAt": _now(), "finishedAt": _now()}},
                }],
            },
        }
        status = job["status"]
        status.update(active=0, ready=0)
        if exit_code == 0:
            status.update(succeeded=1, completionTime=_now(), conditions=[
                _condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                _condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
            ])
            return
        status["failed"] = 1
        rule = _matching_rule(spec, container, exit_code)
        if rule is not None and rule["action"] == "FailJob":
            message = (f"Container {container} for pod {ns}/{pod_name} failed with exit code {exit_code} "
                       f"matching FailJob rule at index {rule['index']}")
            reason = "PodFailurePolicy"
        elif spec.get("backoffLimit", 6) == 0:
            reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        else:
            raise AssertionError("this Job would be retried: a new pod would start the burner again")
        status["conditions"] = [_condition("FailureTarget", reason, message), _condition("Failed", reason, message)]


def _condition(kind: str, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": "True", "lastProbeTime": _now(), "lastTransitionTime": _now(), "reason": reason, "message": message}


def _matching_rule(spec: dict[str, Any], container: str, exit_code: int) -> dict[str, Any] | None:
    for index, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules", [])):
        codes = rule.get("onExitCodes")
        if codes and codes.get("containerName") in (None, container):
            hit = exit_code in codes["values"]
            if hit == (codes["operator"] == "In"):
                return {**rule, "index": index}
    return None


def _selected(obj: dict[str, Any], request: web.Request) -> bool:
    selector = request.query.get("labelSelector")
    if not selector:
        return True
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in (term.split("=", 1) for term in selector.split(",")))


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[FakeApiServer, str]]:
    """A fake API server on a free 127.0.0.1 port: the server and its URL."""
    server = FakeApiServer()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def api_client(host: str, token: str = TOKEN) -> k8s.ApiClient:
    """The official asyncio client, configured as a pod's service account would be."""
    configuration = k8s.Configuration(host=host)
    configuration.api_key = {"BearerToken": token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return k8s.ApiClient(configuration)
