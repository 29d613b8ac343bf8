"""Control API of the simulator: the bench's hands on the hardware.

Loopback only and unauthenticated on purpose: it plays the role of a
technician with a screwdriver, not of a platform service.

    GET  /healthz   200 once the CAN server, the Pico and this API all listen (else 503)
    GET  /state     relays, latch, watchdog, timestamps, temperatures, flame, faults, counters
                    (``can.water_temp``: per sensor, the first frame carrying its current value)
    GET  /faults    the injectable faults and their parameters
    POST /inject    {"fault": "stuck_sensor", "sensor": 1, ...params}  or  {"fault": "stuck_sensor:1"}
    POST /clear     {"fault": "stuck_sensor", "sensor": 1}  or  {} for all
    POST /burst     {"count": 45000, "rate": 9000, "sensor": 0}
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .board import Board
from .faults import ACTIONS, FAULTS, FaultError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(board: Board, ready: Callable[[], bool], info: dict[str, Any]) -> web.Application:
    """The aiohttp application; ``ready`` gates /healthz, ``info`` is echoed in /state."""

    async def healthz(_: web.Request) -> web.Response:
        if ready():
            return web.json_response({"ok": True, **info})
        return web.json_response({"ok": False}, status=503)

    async def state(_: web.Request) -> web.Response:
        await board.settle()
        return web.json_response({**board.state(), "simulator": info})

    async def faults(_: web.Request) -> web.Response:
        catalogue = {
            name: {"description": spec.description, "per_sensor": spec.per_sensor, "params": spec.params}
            for name, spec in (FAULTS | ACTIONS).items()
        }
        return web.json_response(catalogue)

    async def inject(request: web.Request) -> web.Response:
        body = await _body(request)
        name = body.pop("fault", None)
        if not isinstance(name, str):
            raise FaultError('body needs "fault": NAME')
        sensor = _sensor(body.pop("sensor", None))
        injected = board.inject(name, sensor, body)
        await board.settle()
        return web.json_response({"injected": injected})

    async def clear(request: web.Request) -> web.Response:
        body = await _body(request)
        name = body.get("fault")
        if name is not None and not isinstance(name, str):
            raise FaultError('"fault" must be a name')
        cleared = board.clear(name, _sensor(body.get("sensor")))
        await board.settle()
        return web.json_response({"cleared": cleared})

    async def burst(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            count = int(body.get("count", 0))
            rate = float(body.get("rate", 9000.0))
        except (TypeError, ValueError, OverflowError):
            raise FaultError("count and rate must be numbers") from None
        sensor = _sensor(body.get("sensor", 0)) or 0
        return web.json_response({"burst": board.start_burst(count, rate, sensor)})

    app = web.Application(middlewares=[_errors])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/state", state)
    app.router.add_get("/faults", faults)
    app.router.add_post("/inject", inject)
    app.router.add_post("/clear", clear)
    app.router.add_post("/burst", burst)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bad requests get a 400 with the reason instead of a traceback."""
    try:
        return await handler(request)
    except FaultError as exc:
        log.info("%s %s refused: %s", request.method, request.path, exc)
        return web.json_response({"error": str(exc)}, status=400)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (ValueError, LookupError, RecursionError):  # bad JSON, bad UTF-8 or charset, too deep
        raise FaultError("body is not JSON") from None
    if not isinstance(body, dict):
        raise FaultError("body must be a JSON object")
    return body


def _sensor(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultError(f"sensor must be an integer, got {value!r}")
    return value
