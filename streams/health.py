"""Liveness, readiness, status and metrics handlers: the same four views in every process.

Plain aiohttp handlers, mounted on a Faust app's web server, on a halted service's
small server, and on every edge adapter. Liveness, readiness and metrics are open (their
callers, Kubernetes probes and Prometheus, present no token, and they show nothing secret);
``/status`` takes the viewer role like every other view (:mod:`streams.auth`).
"""

from __future__ import annotations

import os
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.auth import Role, install, open_route, requires
from streams.lifecycle import Phase, ServiceSpec, ServiceStatus

Handler = Callable[[web.Request], Awaitable[web.Response]]


def health_handlers(spec: ServiceSpec, status: Callable[[], ServiceStatus]) -> dict[str, Handler]:
    """Path → handler for ``/healthz``, ``/readyz``, ``/status`` and ``/metrics``."""

    def body() -> dict[str, object]:
        current = status()
        return {"service": spec.name, "kind": spec.kind.value, "pid": os.getpid(), "ready": current.phase is Phase.READY, **current.as_dict()}

    @open_route
    async def healthz(request: web.Request) -> web.Response:
        # The phase lets a plain-HTTP caller (a Kubernetes init container) wait for a stage without a certificate.
        return web.json_response({"service": spec.name, "alive": True, "pid": os.getpid(), "phase": status().phase.value})

    @open_route
    async def readyz(request: web.Request) -> web.Response:
        return web.json_response(body(), status=200 if status().phase is Phase.READY else 503)

    @requires(Role.VIEWER)
    async def status_view(request: web.Request) -> web.Response:
        return web.json_response(body())

    @open_route
    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return {"/healthz": healthz, "/readyz": readyz, "/status": status_view, "/metrics": metrics_view}


def web_app(spec: ServiceSpec, status: Callable[[], ServiceStatus]) -> web.Application:
    """A small aiohttp application with the four views behind the auth middleware (adapters add their own routes)."""
    app = web.Application()
    install(app)
    for path, handler in health_handlers(spec, status).items():
        app.router.add_get(path, handler)
    return app
