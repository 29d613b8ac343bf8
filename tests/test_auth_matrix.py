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

Each app is served as its process serves it (:func:`streams.tls.sites`): the API port with
mTLS, the plain probe port beside it. On the API port every route, open ones included, is
refused to a caller without a client certificate (401), with a revoked one (403, from the
CRL the service fetched from Vault) and at the handshake with one from another CA; the
probe port answers only liveness, readiness and metrics and refuses every other route (403).
Certificates come from the session's Vault (its real PKI); tokens from tests/tokens.py's
issuer; no Kafka.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib
import re
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import aiohttp
import pytest
from aiohttp import web

from heater.runtime import pki
from heater.runtime.pki import tls_dir
from heater.runtime.processes import free_ports
from heater.runtime.vault import EmbeddedVault
from streams import auth, tls
from streams.auth import OPEN, TICKET, Role
from streams.settings import Settings
from streams.tls import TLSFiles
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
    from streams.secrets_rotator import SPEC as SECRETS_SPEC
    from streams.secrets_rotator import SecretsRotator

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
    rotator = SecretsRotator(EdgeService(SECRETS_SPEC, settings), client=None)  # type: ignore[arg-type]
    rotator.install()
    halted = web_app(CAN_SPEC, ServiceStatus)  # a control service that came up halted (streams.halted)
    controller_app = web_app(CAN_SPEC, ServiceStatus)
    mount(controller_app, HeatingController(_NoLauncher(), _NoWatch()))
    return {"can": can.service.web, "i2c": i2c.service.web, "heating-job": job.service.web, "homekit": bridge.web,
            "secrets": rotator.service.web, "halted": halted, "heating-controller": controller_app}


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
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, web.Application]]:
    built = {name: faust_app(name) for name in sorted(SERVICE_MODULES)}
    built.update(edge_apps(tmp_path_factory.mktemp("matrix")))
    for app in built.values():
        tokens.authorize(app)
    yield built
    # The Faust apps are the service modules' own, shared with later tests in this process that serve them plain.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the matrix started (froze) them
        for app in built.values():
            app.pop(tls.TLS, None)


@dataclass
class Callers:
    """Client contexts: the platform CLI's certificate, a revoked one, one from another CA, none."""

    good: ssl.SSLContext
    revoked: ssl.SSLContext
    foreign: ssl.SSLContext
    none: ssl.SSLContext


@pytest.fixture(scope="module")
def callers(vault: EmbeddedVault, tmp_path_factory: pytest.TempPathFactory) -> Callers:
    base = tmp_path_factory.mktemp("callers")
    revoked_dir = base / "revoked"
    pki.revoke(vault.admin(), pki.issue(vault.admin(), pki.CLI_SUBJECT, revoked_dir))
    platform_ca = str(vault.cli_tls_dir / "ca.crt")
    none = ssl.create_default_context(cafile=platform_ca)
    foreign = ssl.create_default_context(cafile=platform_ca)
    foreign.load_cert_chain(*foreign_certificate(base / "foreign", pki.CLI_SUBJECT))
    return Callers(TLSFiles(vault.cli_tls_dir).client_context(), TLSFiles(revoked_dir).client_context(), foreign, none)


def foreign_certificate(directory: Path, subject: str) -> tuple[str, str]:
    """A certificate for ``subject`` from a CA of its own (nothing to do with the platform's): (cert, key) files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("another CA")).issuer_name(name("another CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True)
    cert, key_file = directory / "tls.crt", directory / "tls.key"
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert), str(key_file)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def cases(apps: dict[str, web.Application]) -> Iterator[tuple[str, auth.Route]]:
    for name, app in apps.items():
        for route in auth.routes(app):
            yield name, route


HANDSHAKE_REFUSED = "refused at the TLS handshake"


class Served:
    """One app on its API port (mTLS) and its plain probe port, called with a given client context."""

    def __init__(self, session: aiohttp.ClientSession, api_port: int, probe_port: int) -> None:
        self.session, self.api_port, self.probe_port = session, api_port, probe_port

    async def call(self, route: auth.Route, token: str | None, caller: ssl.SSLContext | None) -> int | str:
        """The status, or :data:`HANDSHAKE_REFUSED`; ``caller`` None: over the plain probe port."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = b"{}" if route.method == "POST" else None
        base = f"http://127.0.0.1:{self.probe_port}" if caller is None else f"https://127.0.0.1:{self.api_port}"
        try:
            async with self.session.request(route.method, base + concrete(route.path), headers=headers, data=body,
                                            ssl=caller if caller is not None else False) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientConnectorError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            if caller is None:
                raise
            return HANDSHAKE_REFUSED


async def serve(app: web.Application, server_dir: Path, crl_url: str) -> tuple[web.AppRunner, int, int]:
    """``app`` as its process serves it: :func:`streams.tls.sites` on two free ports."""
    tls.install(app, tls.ServiceTLS(TLSFiles(server_dir), crl_url))
    runner = web.AppRunner(app)
    await runner.setup()
    api_port, probe_port = free_ports(2)
    await tls.start_sites(runner, SimpleNamespace(web_host="127.0.0.1", web_port=api_port, probe_port=probe_port),
                          app[tls.TLS])
    return runner, api_port, probe_port


def server_subject(name: str) -> str:
    """Whose certificate an app of the matrix serves with (the halted service and the controller are others' views)."""
    return name if name in pki.tls_subjects() else {"halted": "can", "heating-controller": "homekit"}[name]


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


def test_auth_matrix(apps: dict[str, web.Application], callers: Callers, vault: EmbeddedVault,
                     loop: asyncio.AbstractEventLoop) -> None:
    """Certificates first (none → 401, revoked → 403, another CA → handshake refused, the probe port → only the
    open routes), then tokens with the platform's certificate (no token / expired / too low a role →
    401/401/403; the declared role → not refused)."""
    crl_url = f"{vault.addr}/v1/{pki.MOUNT}/crl/pem"

    async def check(name: str, app: web.Application, served: Served) -> list[str]:
        wrong: list[str] = []
        for route in auth.routes(app):
            need = route.need
            where = f"{name}: {route.method} {route.path}"
            for case, caller, status in (("no client certificate", callers.none, 401),
                                         ("a revoked certificate", callers.revoked, 403),
                                         ("a certificate from another CA", callers.foreign, HANDSHAKE_REFUSED)):
                if (got := await served.call(route, tokens.token("admin"), caller)) != status:
                    wrong.append(f"{where} with {case}: {got}, expected {status}")
            on_probe_port = await served.call(route, tokens.token("admin"), None)
            if (need is OPEN) == (on_probe_port in REFUSED):
                wrong.append(f"{where} on the probe port: {on_probe_port}")
            if need is OPEN:
                if (status := await served.call(route, None, callers.good)) in REFUSED:
                    wrong.append(f"{where} open but refused {status}")
                continue
            if need is TICKET:  # only a one-time ticket opens it; a token of any role does not
                for token in (None, tokens.token("admin")):
                    if (got := await served.call(route, token, callers.good)) != 401:
                        wrong.append(f"{where} without a ticket: {got}, expected 401")
                continue
            assert isinstance(need, Role), where
            lower = tokens.token(Role(need - 1).label) if need > Role.VIEWER else tokens.token(None)
            expect = {"no token": (None, 401), "expired": (tokens.token(need.label, ttl=-120), 401),
                      "role too low": (lower, 403)}
            for case, (token, status) in expect.items():
                if (got := await served.call(route, token, callers.good)) != status:
                    wrong.append(f"{where} {case}: {got}, expected {status}")
            if (got := await served.call(route, tokens.token(need.label), callers.good)) in REFUSED:
                wrong.append(f"{where} with role {need.label}: refused {got}")
        return wrong

    async def run() -> list[str]:
        wrong: list[str] = []
        async with aiohttp.ClientSession() as session:
            for name, app in apps.items():
                runner, api_port, probe_port = await serve(app, tls_dir(vault.secrets_dir, server_subject(name)),
                                                           crl_url)
                try:
                    assert app[tls.TLS].revoked, "the service read the revoked serials from Vault's CRL"
                    wrong += await check(name, app, Served(session, api_port, probe_port))
                finally:
                    await runner.cleanup()
        return wrong

    wrong = loop.run_until_complete(run())
    assert not wrong, "\n".join(wrong)
