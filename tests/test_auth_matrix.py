"""The auth matrix over every route of every service, discovered from the apps as they are built.

Each service's web application is built the way its process builds it — the Faust services'
apps with their blueprints mounted (Faust's table views and router, as the worker does on
start), the edge adapters, the heating job, the HomeKit bridge, a halted control service and
the heating controller's API — and every route it serves is taken from its router, so a new
route is in the matrix without anyone adding it here. For each route:

* it declares access (a route without one fails here, and the middleware refuses it anyway);
* open routes (liveness, readiness, metrics) answer without a token;
* the dashboard's ticket route refuses (401) a request without a valid one-time ticket, and
  anything but a ticket (a token of any role) gets no further;
* every other route: no token → 401, an expired token → 401, a token one role too low (or
  with no heater role, for viewer routes) → 403, the declared role → not refused.

Tokens come from tests/tokens.py's issuer; no Kafka, no Vault.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streams import auth
from streams.auth import OPEN, TICKET, Role
from streams.settings import Settings
from streams.worker import SERVICE_MODULES
from tests import tokens

REFUSED = (401, 403)


def faust_app(name: str) -> web.Application:
    web_driver = importlib.import_module(SERVICE_MODULES[name]).app.web
    web_driver.init_server()  # mounts the blueprints (table views, router), as the worker does on start
    return web_driver.web_app


def edge_apps(tmp: Path) -> dict[str, web.Application]:
    from adapters.can.service import SPEC as CAN_SPEC
    from adapters.can.service import CanAdapter
    from adapters.i2c.board import RelayBoard
    from adapters.i2c.service import SPEC as I2C_SPEC
    from adapters.i2c.service import RelayAdapter
    from homekit.config import BridgeSettings
    from homekit.service import BridgeService
    from streams.edge import EdgeService
    from streams.health import web_app
    from streams.heating.controller import HeatingController, mount
    from streams.heating.job import SPEC as JOB_SPEC
    from streams.heating.job import HeatingJob
    from streams.heating.machine import HeatingMachine
    from streams.lifecycle import ServiceStatus

    settings = Settings.from_env({"HEATER_RUN_DIR": str(tmp)})
    can = CanAdapter(EdgeService(CAN_SPEC, settings), bus=None)
    can.install()
    i2c = RelayAdapter(EdgeService(I2C_SPEC, settings), RelayBoard(None))  # type: ignore[arg-type]
    i2c.install()
    i2c.io._executor.shutdown(wait=False)
    job = HeatingJob(EdgeService(JOB_SPEC, settings), HeatingMachine(45.0), "matrix")
    job.install()
    bridge = BridgeService(settings, BridgeSettings.from_env({"HEATER_RUN_DIR": str(tmp), "HEATER_HOMEKIT_PORT": "1",
                                                               "HEATER_HOMEKIT_FEED_URL": "ws://127.0.0.1:1/homekit/feed"}))
    halted = web_app(CAN_SPEC, ServiceStatus)  # a control service that came up halted (streams.halted)
    controller_app = web_app(CAN_SPEC, ServiceStatus)
    mount(controller_app, HeatingController(_NoLauncher(), _NoWatch()))
    return {"can": can.service.web, "i2c": i2c.service.web, "heating-job": job.service.web, "homekit": bridge.web,
            "halted": halted, "heating-controller": controller_app}


class _NoLauncher:
    async def start(self, job_id: str, target_c: float) -> None:
        raise RuntimeError("no jobs in the auth matrix")

    async def wait(self, job_id: str) -> Any:
        raise RuntimeError("no jobs in the auth matrix")

    async def running(self) -> list[str]:
        return []


class _NoWatch:
    def __init__(self) -> None:
        from streams.latch import LatchView

        self.latch = LatchView()


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, web.Application]:
    built = {name: faust_app(name) for name in sorted(SERVICE_MODULES)}
    built.update(edge_apps(tmp_path_factory.mktemp("matrix")))
    for app in built.values():
        tokens.authorize(app)
    return built


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def cases(apps: dict[str, web.Application]) -> Iterator[tuple[str, auth.Route]]:
    for name, app in apps.items():
        for route in auth.routes(app):
            yield name, route


async def call(client: TestClient, route: auth.Route, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = b"{}" if route.method == "POST" else None
    async with client.request(route.method, concrete(route.path), headers=headers, data=body) as response:
        await response.read()
        return response.status


def test_every_route_of_every_service_declares_its_access(apps: dict[str, web.Application]) -> None:
    undeclared = [f"{name}: {r.method} {r.path}" for name, r in cases(apps) if r.need is None]
    assert not undeclared, f"routes without a declared role (default deny): {undeclared}"
    assert len(list(cases(apps))) > 60  # the discovery found the services' routes


def test_only_liveness_readiness_and_metrics_are_open(apps: dict[str, web.Application]) -> None:
    open_paths = {r.path for _, r in cases(apps) if r.need is OPEN}
    assert open_paths == {"/healthz", "/readyz", "/metrics"}
    assert {(name, r.path) for name, r in cases(apps) if r.need is TICKET} == {("alarms", "/dashboard/open")}


def test_the_operator_reset_needs_operator_and_config_changes_need_admin(apps: dict[str, web.Application]) -> None:
    needs = {(name, r.method, r.path): r.need for name, r in cases(apps)}
    assert needs[("alarms", "POST", "/reset")] is Role.OPERATOR
    assert needs[("config", "POST", "/config")] is Role.ADMIN
    assert needs[("config", "GET", "/config")] is Role.VIEWER
    assert needs[("homekit", "GET", "/homekit")] is Role.ADMIN  # it shows the pairing setup code


def test_auth_matrix(apps: dict[str, web.Application], loop: asyncio.AbstractEventLoop) -> None:
    """No token / expired / too low a role → refused with 401/401/403; the declared role → not refused."""
    async def run() -> list[str]:
        wrong: list[str] = []
        for name, app in apps.items():
            async with TestClient(TestServer(app)) as client:
                for route in auth.routes(app):
                    need = route.need
                    where = f"{name}: {route.method} {route.path}"
                    if need is OPEN:
                        if (status := await call(client, route, None)) in REFUSED:
                            wrong.append(f"{where} open but refused {status}")
                        continue
                    if need is TICKET:  # only a one-time ticket opens it; a token of any role does not
                        for token in (None, tokens.token("admin")):
                            if (got := await call(client, route, token)) != 401:
                                wrong.append(f"{where} without a ticket: {got}, expected 401")
                        continue
                    assert isinstance(need, Role), where
                    lower = tokens.token(Role(need - 1).label) if need > Role.VIEWER else tokens.token(None)
                    expect = {"no token": (None, 401), "expired": (tokens.token(need.label, ttl=-120), 401),
                              "role too low": (lower, 403)}
                    for case, (token, status) in expect.items():
                        if (got := await call(client, route, token)) != status:
                            wrong.append(f"{where} {case}: {got}, expected {status}")
                    if (got := await call(client, route, tokens.token(need.label))) in REFUSED:
                        wrong.append(f"{where} with role {need.label}: refused {got}")
        return wrong

    wrong = loop.run_until_complete(run())
    assert not wrong, "\n".join(wrong)
