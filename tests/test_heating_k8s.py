"""The controller's Kubernetes path, against a small fake API server, with the real client.

The fake answers the Job create/read/list and pod list endpoints the way the API
server does (status codes, ``Status`` bodies, ``JobList``/``PodList`` shapes, Job
conditions) and decides a finished pod's fate from the Job spec it was given — the
``podFailurePolicy`` rules and ``backoffLimit`` — so the tests show what the spec we
send makes Kubernetes do. Every Job body the client sends is validated offline by
``kubernetes-validate`` (strict, Kubernetes 1.30).
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import kubernetes_validate
import pytest
import pytest_asyncio
from aiohttp import web
from kubernetes.aio import client as k8s

from streams.heating.controller import HeatingController, HeatingRefused, mount
from streams.heating.k8s import JobTemplate, KubernetesLauncher, job_manifest, job_name
from streams.latch import LatchView
from streams.records import Alarm

pytestmark = pytest.mark.timeout(60)

TOKEN = "test-token"
NAMESPACE = "heater"
TEMPLATE = JobTemplate(image="registry.local/heater:1.0", namespace=NAMESPACE, env={"HEATER_PROFILE": "production"})


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
    versions: Any = field(default_factory=lambda: itertools.count(1000))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/apis/batch/v1/namespaces/{ns}/jobs", self.create_job)
        app.router.add_get("/apis/batch/v1/namespaces/{ns}/jobs", self.list_jobs)
        app.router.add_get("/apis/batch/v1/namespaces/{ns}/jobs/{name}", self.read_job)
        app.router.add_get("/apis/batch/v1/namespaces/{ns}/jobs/{name}/status", self.read_job)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self.list_pods)
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


class Latch:
    """A latch source for the controller: a real :class:`LatchView` fed FATAL alarms by hand."""

    def __init__(self) -> None:
        self.latch = LatchView()

    def fatal(self, reason: str) -> None:
        self.latch.on_alarm(Alarm(alarm_id="test/fatal", source="test", code="fatal", severity="FATAL", message=reason, raised_at=time.time()))


@pytest_asyncio.fixture(loop_scope="function")
async def fake() -> AsyncIterator[tuple[FakeApiServer, str]]:
    server = FakeApiServer()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield server, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="function")
async def api(fake: tuple[FakeApiServer, str]) -> AsyncIterator[k8s.ApiClient]:
    configuration = k8s.Configuration(host=fake[1])
    configuration.api_key = {"BearerToken": TOKEN}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    async with k8s.ApiClient(configuration) as client:
        yield client


def controller_for(api: k8s.ApiClient, latch: Latch | None = None) -> HeatingController:
    return HeatingController(KubernetesLauncher(api, TEMPLATE, poll_s=0.02), latch or Latch())


# -- the Job body ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.30", "1.33"])
def test_job_body_is_a_valid_job_strictly(version: str) -> None:
    manifest = job_manifest("abc123", 45.0, TEMPLATE)
    kubernetes_validate.validate(manifest, version, strict=True)


def test_job_is_never_retried_and_runs_the_job_module() -> None:
    manifest = job_manifest("abc123", 45.0, TEMPLATE)
    spec = manifest["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["podFailurePolicy"] == {
        "rules": [{"action": "FailJob", "onExitCodes": {"containerName": "heating-job", "operator": "In", "values": [1, 3]}}]
    }
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["command"] + container["args"] == [
        "python", "-m", "streams.heating", "--target", "45.0", "--job-id", "abc123"
    ]
    assert container["image"] == TEMPLATE.image
    assert manifest["metadata"]["name"] == "heating-abc123"


# -- the controller through the real client --------------------------------------------


@pytest.mark.parametrize(
    "exit_code, outcome, reason",
    [
        (0, "done", "Job complete"),
        (1, "failed", "PodFailurePolicy"),
        (3, "fatal", "PodFailurePolicy"),
        (137, "failed", "BackoffLimitExceeded"),
    ],
)
async def test_request_creates_a_job_and_reports_its_outcome(
    fake: tuple[FakeApiServer, str], api: k8s.ApiClient, exit_code: int, outcome: str, reason: str
) -> None:
    server, _ = fake
    controller = controller_for(api)
    run = await controller.request_heating(45.0)
    assert run.outcome == "running"
    [sent] = server.received
    kubernetes_validate.validate(sent, "1.30", strict=True)
    assert sent["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["--target", "45.0"]
    server.finish(job_name(run.job_id), exit_code)
    ended = await controller.wait(run.job_id)
    assert (ended.outcome, ended.exit_code) == (outcome, exit_code)
    assert reason in ended.detail
    await controller.close()


async def test_one_job_at_a_time_also_across_controller_restarts(fake: tuple[FakeApiServer, str], api: k8s.ApiClient) -> None:
    server, _ = fake
    controller = controller_for(api)
    run = await controller.request_heating(40.0)
    with pytest.raises(HeatingRefused, match="already running"):
        await controller.request_heating(41.0)
    restarted = controller_for(api)  # a new controller process: it asks the API server
    with pytest.raises(HeatingRefused, match=f"{run.job_id} is already running"):
        await restarted.request_heating(41.0)
    server.finish(job_name(run.job_id), 0)
    assert (await controller.wait(run.job_id)).outcome == "done"
    second = await restarted.request_heating(41.0)
    assert second.job_id != run.job_id and len(server.received) == 2
    await controller.close()
    await restarted.close()


async def test_refusals_never_reach_the_api(fake: tuple[FakeApiServer, str], api: k8s.ApiClient) -> None:
    server, _ = fake
    latch = Latch()
    controller = controller_for(api, latch)
    with pytest.raises(HeatingRefused) as too_hot:
        await controller.request_heating(60.0)
    assert too_hot.value.status == 400 and "above the limit of 55.0" in too_hot.value.reason
    latch.fatal("water over 85 °C")
    with pytest.raises(HeatingRefused) as latched:
        await controller.request_heating(40.0)
    assert latched.value.status == 409
    assert "platform latched" in latched.value.reason and "operator reset" in latched.value.reason
    assert "water over 85 °C" in latched.value.reason
    assert server.received == []


async def test_a_job_that_vanishes_is_reported_failed(fake: tuple[FakeApiServer, str], api: k8s.ApiClient) -> None:
    server, _ = fake
    controller = controller_for(api)
    run = await controller.request_heating(40.0)
    server.jobs.clear()
    ended = await controller.wait(run.job_id)
    assert ended.outcome == "failed" and ended.exit_code is None and "disappeared" in ended.detail


async def test_api_errors_are_refusals_with_the_reason(fake: tuple[FakeApiServer, str]) -> None:
    configuration = k8s.Configuration(host=fake[1])  # no token: 401
    async with k8s.ApiClient(configuration) as unauthorised:
        controller = HeatingController(KubernetesLauncher(unauthorised, TEMPLATE, poll_s=0.02), Latch())
        with pytest.raises(HeatingRefused) as failed:
            await controller.request_heating(40.0)
    assert failed.value.status == 503 and "401 Unauthorized" in failed.value.reason


async def test_http_api(fake: tuple[FakeApiServer, str], api: k8s.ApiClient) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    server, _ = fake
    controller = controller_for(api)
    app = web.Application()
    mount(app, controller)
    async with TestClient(TestServer(app)) as client:
        accepted = await client.post("/heating", json={"target_c": 42})
        assert accepted.status == 202
        job = await accepted.json()
        assert job["outcome"] == "running" and job["target_c"] == 42.0
        busy = await client.post("/heating", json={"target_c": 43})
        assert busy.status == 409 and "already running" in (await busy.json())["error"]
        for bad in ({"target_c": "hot"}, {"target": 40}, {"target_c": 80}):
            assert (await client.post("/heating", json=bad)).status == 400
        server.finish(job_name(job["job_id"]), 3)
        await controller.wait(job["job_id"])
        view = await (await client.get("/heating")).json()
        assert view["current"] is None and view["jobs"][0]["outcome"] == "fatal"
    await controller.close()
