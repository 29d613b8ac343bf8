"""The phone's writes, turned into heating requests through the heating controller.

The same path as ``heater heat``: :class:`~streams.heating.controller.HeatingController`
refuses while the FATAL latch is set, for a target out of range, or while a job runs, and
launches the job otherwise; the job drives the burner through ``I2CHeating``. The bridge
itself never sends a relay command. While the bridge is read-only (after a FATAL) a
write is refused at once, and the phone sees the write fail.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from homekit import metrics
from streams.heating.controller import HeatingController, HeatingRefused
from streams.heating.launch import Launcher, LaunchError

log = logging.getLogger(__name__)


class ReadOnly(RuntimeError):
    """The bridge only shows state now (the platform is latched, or the feed is away)."""


class HeatingCommands:
    """``start`` (a heating job to a target) and ``stop`` (the job this bridge started)."""

    def __init__(self, controller: HeatingController, launcher: Launcher, read_only: Callable[[], str],
                 on_refused: Callable[[], None]) -> None:
        self.controller = controller
        self.launcher = launcher
        self.read_only = read_only
        self.on_refused = on_refused
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, kind: str, args: dict[str, Any]) -> None:
        """Called by an accessory on a phone's write (in the event loop): refuse now, or run the request."""
        why = self.read_only()
        if why:
            metrics.COMMANDS.labels(kind, "read-only").inc()
            log.warning("phone asked to %s %s: refused, the bridge is read-only (%s)", kind, args, why)
            raise ReadOnly(why)
        task = asyncio.ensure_future(self._run(kind, args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, kind: str, args: dict[str, Any]) -> None:
        try:
            if kind == "start":
                run = await self.controller.request_heating(float(args["target_c"]))
                log.info("phone started heating job %s to %.1f °C", run.job_id, run.target_c)
            elif kind == "stop":
                current = self.controller.current
                if current is None:
                    raise HeatingRefused("no heating job started from HomeKit is running")
                try:
                    await self.launcher.terminate(current.job_id)
                except LaunchError as exc:
                    raise HeatingRefused(str(exc), status=503) from exc
                log.info("phone stopped heating job %s", current.job_id)
            else:
                raise HeatingRefused(f"unknown command {kind!r}", status=400)
            metrics.COMMANDS.labels(kind, "accepted").inc()
        except HeatingRefused as refused:
            metrics.COMMANDS.labels(kind, "refused").inc()
            log.warning("phone asked to %s %s: refused: %s", kind, args, refused.reason)
            self.on_refused()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.controller.close()
