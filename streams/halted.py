"""A control service started while the platform is latched: alive, not ready, doing nothing.

Kubernetes Deployments always restart pods, so "no auto-restart after FATAL" holds by
coming up halted: no Faust app, no consumer group, no commands — only liveness,
readiness (503, with the reason), status and metrics, and a watch on the latch. When
the operator reset releases the latch this returns ``RELEASED``, and the worker starts the
service in the same process (:func:`streams.worker.run`).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from streams import exitcodes, tls
from streams.health import web_app
from streams.latch import LatchView
from streams.lifecycle import ServiceSpec, ServiceStatus
from streams.platform_watch import PlatformWatch
from streams.settings import Settings

log = logging.getLogger(__name__)


def run_halted(spec: ServiceSpec, settings: Settings, watch: PlatformWatch) -> int:
    """Serve health while halted, following the latch with ``watch`` (started and stopped here);
    return ``RELEASED`` after a reset, ``DONE`` on SIGTERM."""
    return asyncio.run(_serve(spec, settings, watch))


async def _serve(spec: ServiceSpec, settings: Settings, watch: PlatformWatch) -> int:
    service = spec.name
    await watch.start()
    released = asyncio.Event()
    stop = asyncio.Event()

    async def on_change(view: LatchView) -> None:
        if not view.latched:
            released.set()

    watch.on_change.append(on_change)
    watch.run_in_background()
    status = ServiceStatus()
    status.halt(service, watch.latch.reason or "latched at start")
    runner = await tls.serve(web_app(spec, lambda: status), settings, service)
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
        log.warning("%s: latch released by %s; starting", service, watch.latch.released_by)
        return exitcodes.RELEASED
    return exitcodes.DONE
