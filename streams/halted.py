"""A control service started while the platform is latched: alive, not ready, doing nothing.

Kubernetes Deployments always restart pods, so "no auto-restart after FATAL" holds by
coming up halted: no Faust app, no consumer group, no commands — only liveness,
readiness (503, with the reason), status and metrics, and a watch on the latch. When
the operator reset releases the latch the process exits with ``RELEASED`` so that the
process manager starts it afresh.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams import exitcodes, metrics
from streams.latch import LatchView
from streams.platform_watch import PlatformWatch
from streams.settings import Settings

log = logging.getLogger(__name__)


def run_halted(service: str, settings: Settings, watch_fetch_wait_ms: int = 100) -> int:
    """Serve health while halted; return ``RELEASED`` after a reset, ``DONE`` on SIGTERM."""
    return asyncio.run(_serve(service, settings, watch_fetch_wait_ms))


async def _serve(service: str, settings: Settings, fetch_wait_ms: int) -> int:
    watch = PlatformWatch(settings.broker_bootstrap, service, fetch_wait_ms)
    await watch.start()
    released = asyncio.Event()
    stop = asyncio.Event()

    async def on_change(view: LatchView) -> None:
        if not view.latched:
            released.set()

    watch.on_change.append(on_change)
    watch.run_in_background()
    metrics.SERVICE_HALTED.labels(service).set(1)
    metrics.SERVICE_READY.labels(service).set(0)
    runner = web.AppRunner(_web_app(service, watch))
    await runner.setup()
    await web.TCPSite(runner, settings.web_host, settings.web_port).start()
    log.critical("%s came up halted: %s; waiting for an operator reset", service, watch.latch.reason)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if not watch.latch.latched:
        released.set()
    done, _ = await asyncio.wait(
        [asyncio.ensure_future(released.wait()), asyncio.ensure_future(stop.wait())],
        return_when=asyncio.FIRST_COMPLETED,
    )
    await runner.cleanup()
    await watch.stop()
    if released.is_set() and not stop.is_set():
        log.warning("%s: latch released by %s; restarting", service, watch.latch.released_by)
        return exitcodes.RELEASED
    return exitcodes.DONE


def _web_app(service: str, watch: PlatformWatch) -> web.Application:
    def status_body() -> dict[str, object]:
        return {"service": service, "phase": "halted", "ready": False, "reason": watch.latch.reason, "pid": os.getpid()}

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"service": service, "alive": True, "pid": os.getpid()})

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response(status_body(), status=503)

    async def status(request: web.Request) -> web.Response:
        return web.json_response(status_body())

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics_view)
    return app
