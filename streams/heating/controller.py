"""The heating controller: accepts heating requests and runs at most one job at a time.

A request is refused, with a reason an operator can act on, while the FATAL latch is
set (rule 2: no heating until the operator reset), when the target is out of range,
or while a job runs. An accepted request launches one job (a child process locally,
a Kubernetes Job in production) and its exit code becomes the outcome:
``0`` done, ``1`` failed, ``3`` fatal; anything else is reported as failed.

Mount the HTTP API with :func:`mount`: ``POST /heating {"target_c": 45}`` answers
202 with the job, 400 for a bad target, 409 when refused; ``GET /heating`` shows the
current and recent jobs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web

from streams import exitcodes, topics
from streams.auth import Role, requires
from streams.heater_config import HeaterLimits
from streams.heating.job import STATE_KEY
from streams.heating.launch import JobEnd, Launcher, LaunchError
from streams.heating.machine import target_refusal
from streams.latch import LatchView
from streams.records import HeatingJobState

log = logging.getLogger(__name__)

OUTCOMES: dict[int, str] = {exitcodes.DONE: "done", exitcodes.HEATING_FAILED: "failed", exitcodes.STAY_DOWN: "fatal"}
HISTORY = 20


class LatchSource(Protocol):
    """Anything that follows the FATAL latch (a :class:`~streams.platform_watch.PlatformWatch`)."""

    latch: LatchView


class HeatingRefused(Exception):
    """A heating request that was not accepted; ``status`` is the HTTP status to answer."""

    def __init__(self, reason: str, status: int = 409) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass
class HeatingRun:
    """One accepted request and what became of it."""

    job_id: str
    target_c: float
    requested_at: float
    outcome: str = "running"
    exit_code: int | None = None
    detail: str = ""
    ended_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


EndHook = Callable[[HeatingRun], Awaitable[None]]


class HeatingController:
    """At most one heating job at a time, refused while the platform is latched."""

    def __init__(self, launcher: Launcher, watch: LatchSource, limits: HeaterLimits | None = None) -> None:
        self.launcher = launcher
        self.watch = watch
        self.limits = limits or HeaterLimits()
        self.runs: dict[str, HeatingRun] = {}
        self.on_end: list[EndHook] = []
        self._lock = asyncio.Lock()
        self._tasks: dict[str, asyncio.Task[HeatingRun]] = {}

    @property
    def current(self) -> HeatingRun | None:
        return next((r for r in self.runs.values() if r.outcome == "running"), None)

    async def request_heating(self, target_c: float) -> HeatingRun:
        """Launch a heating job to ``target_c`` or raise :class:`HeatingRefused` saying why not."""
        async with self._lock:
            latch = self.watch.latch
            if latch.latched:
                raise HeatingRefused(f"platform latched ({latch.reason}); heating needs the operator reset first")
            refusal = target_refusal(target_c, self.limits)
            if refusal is not None:
                raise HeatingRefused(refusal, status=400)
            busy = self.current
            if busy is not None:
                raise HeatingRefused(f"heating job {busy.job_id} is already running (target {busy.target_c:.1f} °C)")
            run = HeatingRun(job_id=uuid.uuid4().hex[:12], target_c=float(target_c), requested_at=time.time())
            try:
                others = await self.launcher.running()
                if others:
                    raise HeatingRefused(f"heating job {others[0]} is already running")
                await self.launcher.start(run.job_id, run.target_c)
            except LaunchError as exc:
                log.error("heating job not started: %s", exc)
                raise HeatingRefused(str(exc), status=503) from exc
            self.runs[run.job_id] = run
            self._forget_old()
            self._tasks[run.job_id] = asyncio.ensure_future(self._follow(run))
            log.info("heating job %s launched: target %.1f °C", run.job_id, run.target_c)
            return run

    async def wait(self, job_id: str) -> HeatingRun:
        """The run once its job has ended."""
        return await asyncio.shield(self._tasks[job_id])

    async def _follow(self, run: HeatingRun) -> HeatingRun:
        try:
            end = await self.launcher.wait(run.job_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the job's fate is unknown: report it, never pretend it succeeded
            log.exception("following heating job %s failed", run.job_id)
            end = JobEnd(None, f"lost track of the job: {exc}")
        run.exit_code, run.detail, run.ended_at = end.exit_code, end.detail, time.time()
        run.outcome = OUTCOMES.get(end.exit_code, "failed") if end.exit_code is not None else "failed"
        level = logging.INFO if run.outcome == "done" else logging.ERROR
        log.log(level, "heating job %s %s (exit %s): %s", run.job_id, run.outcome, end.exit_code, end.detail)
        for hook in self.on_end:
            try:
                await hook(run)
            except Exception:  # every hook runs; one failing is logged
                log.exception("heating end hook failed")
        return run

    def _forget_old(self) -> None:
        ended = [r for r in self.runs.values() if r.outcome != "running"]
        for run in ended[: max(0, len(self.runs) - HISTORY)]:
            self.runs.pop(run.job_id, None)
            self._tasks.pop(run.job_id, None)

    async def close(self) -> None:
        """Stop following jobs (the jobs themselves run on and close their gas on their own)."""
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


# -- HTTP ------------------------------------------------------------------------------

CONTROLLER = web.AppKey("heating_controller", HeatingController)


@requires(Role.OPERATOR)
async def post_heating(request: web.Request) -> web.Response:
    """``POST {"target_c": 45}`` → 202 with the job; 400 bad target; 409 refused; 503 not started."""
    try:
        body = await request.json()
        target = body["target_c"]
    except (ValueError, KeyError, TypeError, LookupError, RecursionError):
        return web.json_response({"error": 'expected a JSON body {"target_c": <number>}'}, status=400)
    if not isinstance(target, (int, float)) or isinstance(target, bool):
        return web.json_response({"error": f"target_c must be a number, got {target!r}"}, status=400)
    try:
        target = float(target)
    except OverflowError:
        return web.json_response({"error": "target_c is out of range"}, status=400)
    try:
        run = await request.app[CONTROLLER].request_heating(target)
    except HeatingRefused as refused:
        return web.json_response({"error": refused.reason, "refused": True}, status=refused.status)
    return web.json_response(run.as_dict(), status=202)


@requires(Role.VIEWER)
async def get_heating(request: web.Request) -> web.Response:
    """The running job (if any) and the recent ones, newest first."""
    controller = request.app[CONTROLLER]
    current = controller.current
    runs = sorted(controller.runs.values(), key=lambda r: r.requested_at, reverse=True)
    return web.json_response({
        "current": current.as_dict() if current else None,
        "latched": controller.watch.latch.latched,
        "jobs": [r.as_dict() for r in runs],
    })


def announce_ends(send: Callable[[str, bytes, bytes], Awaitable[None]]) -> Callable[[HeatingRun], Awaitable[None]]:
    """An ``on_end`` hook publishing the end of a job that did not finish well.

    A job killed outright (SIGKILL, out of memory, a lost node) never says it stopped:
    its last word stays "heating", and DisasterDetector keeps watching the water as if
    the burner could be lit. The controller saw the process end, so it says it. A job
    that failed on its own has already said so; the second "failed" changes nothing.
    """
    async def hook(run: HeatingRun) -> None:
        if run.outcome == "done":
            return
        record = HeatingJobState(job_id=run.job_id, state="failed", target_c=float(run.target_c),
                                 at=run.ended_at or time.time(), reason=f"ended: {run.detail}")
        await send(topics.HEATING_STATE.name, STATE_KEY, record.dumps())

    return hook


def mount(app: web.Application, controller: HeatingController, path: str = "/heating") -> None:
    """Add the heating API to an aiohttp application (authentication is the app's middleware)."""
    app[CONTROLLER] = controller
    app.router.add_post(path, post_heating)
    app.router.add_get(path, get_heating)
