"""The controller's Kubernetes path, against a small fake API server, with the real client.

The fake answers the Job create/read/list and pod list endpoints the way the API
server does (status codes, ``Status`` bodies, ``JobList``/``PodList`` shapes, Job
conditions) and decides a finished pod's fate from the Job spec it was given — the
``podFailurePolicy`` rules and ``backoffLimit`` — so the tests show what the spec we
send makes Kubernetes do. Every Job body the client sends is validated offline by
``kubernetes-validate`` (strict, Kubernetes 1.30).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator, Callable

import kubernetes_validate
import pytest
import pytest_asyncio
from aiohttp import web
from kubernetes.aio import client as k8s

from streams.heating.controller import HeatingController, HeatingRefused, mount
from streams.heating.k8s import (
    PROBE_PORT, TLS_DIR, WEB_PORT, JobTemplate, KubernetesLauncher, job_manifest, job_name, production_launcher,
    production_template,
)
from streams.heating.launch import LaunchError, LocalLauncher, launcher_for
from streams.latch import LatchView
from streams.records import Alarm
from streams.settings import Settings, SettingsError
from tests.fake_kubernetes import NAMESPACE, FakeApiServer, api_client, serving

pytestmark = pytest.mark.timeout(60)

TEMPLATE = JobTemplate(image="registry.local/heater:1.0", namespace=NAMESPACE, env={"HEATER_PROFILE": "production"})


class Latch:
    """A latch source for the controller: a real :class:`LatchView` fed FATAL alarms by hand."""

    def __init__(self) -> None:
        self.latch = LatchView()

    def fatal(self, reason: str) -> None:
        self.latch.on_alarm(Alarm(alarm_id="test/fatal", source="test", code="fatal", severity="FATAL", message=reason, raised_at=time.time()))


@pytest_asyncio.fixture(loop_scope="function")
async def fake() -> AsyncIterator[tuple[FakeApiServer, str]]:
    async with serving() as running:
        yield running


@pytest_asyncio.fixture(loop_scope="function")
async def api(fake: tuple[FakeApiServer, str]) -> AsyncIterator[k8s.ApiClient]:
    async with api_client(fake[1]) as client:
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


def test_production_job_serves_its_api_with_its_own_certificate() -> None:
    """The job's API needs mTLS: its cert-manager Secret at TLS_DIR, and the plain probe port declared beside it."""
    manifest = job_manifest("abc123", 45.0, production_template("registry.local/heater:1.0", NAMESPACE))
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    pod = manifest["spec"]["template"]["spec"]
    [container] = pod["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == TLS_DIR]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "heating-job-tls" and mount["readOnly"] is True
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"https": WEB_PORT, "probe": PROBE_PORT}


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

    from streams import auth
    from tests import tokens

    server, _ = fake
    controller = controller_for(api)
    app = web.Application()
    auth.install(app)  # behind the auth middleware, as the controller's service serves it
    tokens.authorize(app)
    mount(app, controller)
    operator = tokens.headers("operator")
    async with TestClient(TestServer(app)) as client:
        assert (await client.post("/heating", json={"target_c": 42})).status == 401
        assert (await client.post("/heating", json={"target_c": 42}, headers=tokens.headers("viewer"))).status == 403
        accepted = await client.post("/heating", json={"target_c": 42}, headers=operator)
        assert accepted.status == 202
        job = await accepted.json()
        assert job["outcome"] == "running" and job["target_c"] == 42.0
        busy = await client.post("/heating", json={"target_c": 43}, headers=operator)
        assert busy.status == 409 and "already running" in (await busy.json())["error"]
        for bad in ({"target_c": "hot"}, {"target": 40}, {"target_c": 80}):
            assert (await client.post("/heating", json=bad, headers=operator)).status == 400
        server.finish(job_name(job["job_id"]), 3)
        await controller.wait(job["job_id"])
        view = await (await client.get("/heating", headers=tokens.headers("viewer"))).json()
        assert view["current"] is None and view["jobs"][0]["outcome"] == "fatal"
    await controller.close()


# -- the bridge's production launcher --------------------------------------------------

BRIDGE_POD = "homekit-7d9c5-x2k4q"
DEPLOYED_IMAGE = "registry.local:5000/heater:0.1.0"


def production(**changes: str) -> Settings:
    return Settings(profile="production", namespace=NAMESPACE, **changes)


def bridge_pod(server: FakeApiServer) -> None:
    """The bridge's pod as the Deployment made it: the image the overlay set, on the worker container."""
    server.add_pod(BRIDGE_POD, {"app.kubernetes.io/name": "homekit", "app.kubernetes.io/part-of": "heater"},
                   containers={"worker": DEPLOYED_IMAGE})


async def test_production_jobs_run_the_bridges_own_image_and_the_scheduled_jobs_spec(
    fake: tuple[FakeApiServer, str], api: k8s.ApiClient
) -> None:
    from deploy.gen.heating import TEMPLATE as SCHEDULED

    server, _ = fake
    bridge_pod(server)
    launcher = await production_launcher(production(pod_name=BRIDGE_POD), api)
    controller = HeatingController(launcher, Latch())
    run = await controller.request_heating(45.0)
    [sent] = server.received
    kubernetes_validate.validate(sent, "1.30", strict=True)
    assert sent["spec"]["template"]["spec"]["containers"][0]["image"] == DEPLOYED_IMAGE
    # The CronJob's template (deploy/gen) with the deployed image: one Job spec for both.
    assert sent == job_manifest(run.job_id, 45.0, replace(SCHEDULED, image=DEPLOYED_IMAGE))
    await controller.close()


async def test_production_launcher_fails_clearly_without_its_pod(fake: tuple[FakeApiServer, str], api: k8s.ApiClient) -> None:
    with pytest.raises(SettingsError, match="HEATER_POD_NAME is not set"):
        await production_launcher(production(), api)
    with pytest.raises(LaunchError, match=f"cannot read this pod {NAMESPACE}/{BRIDGE_POD} .*404"):
        await production_launcher(production(pod_name=BRIDGE_POD), api)
    from heater.runtime.processes import free_port

    async with api_client(f"http://127.0.0.1:{free_port()}") as nobody:  # no API server there
        with pytest.raises(LaunchError, match="the API server did not answer"):
            await production_launcher(production(pod_name=BRIDGE_POD), nobody)


async def test_the_production_profile_never_launches_a_local_process(tmp_path: Path) -> None:
    assert isinstance(await launcher_for(Settings(profile="local"), tmp_path), LocalLauncher)
    # Outside a cluster there is no service account: production refuses instead of falling back.
    with pytest.raises(LaunchError, match="no in-cluster Kubernetes configuration"):
        await launcher_for(Settings.from_env({"HEATER_PROFILE": "production", "HEATER_POD_NAME": BRIDGE_POD}), tmp_path)


async def test_the_phone_starts_and_stops_a_job_on_the_api_server(fake: tuple[FakeApiServer, str], api: k8s.ApiClient) -> None:
    """HomeKit's start and stop in production: a Job created, then deleted so its pod gets SIGTERM."""
    from homekit.commands import HeatingCommands

    server, _ = fake
    bridge_pod(server)
    launcher = await production_launcher(production(pod_name=BRIDGE_POD), api)
    controller = HeatingController(launcher, Latch())
    refused: list[bool] = []
    commands = HeatingCommands(controller, launcher, lambda: "", lambda: refused.append(True))
    commands("start", {"target_c": 40.0})
    await until(lambda: controller.current is not None)
    run = controller.current
    assert run is not None
    commands("stop", {})
    await until(lambda: server.deletions != [])
    # Foreground: the Job stays, counted as running, until its pod is gone; a new request waits for that.
    assert server.deletions == [(job_name(run.job_id), "Foreground")]
    assert await launcher.running() == [run.job_id]
    server.collect(job_name(run.job_id))
    ended = await asyncio.wait_for(controller.wait(run.job_id), 5)
    assert ended.outcome == "failed" and "disappeared" in ended.detail
    assert await launcher.running() == [] and refused == []
    commands("stop", {})  # nothing left to stop: refused, and the phone's switch reverts
    await until(lambda: refused == [True])
    await commands.close()


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
