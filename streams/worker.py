"""Run one service as a process: what `heater worker NAME` and Kubernetes run."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import faust
from aiokafka.errors import KafkaError

from streams import exitcodes
from streams.app import HeaterService, ServiceKind
from streams.halted import run_halted
from streams.lifecycle import freeze_imported_objects
from streams.platform_watch import PlatformWatch
from streams.settings import Settings
from streams.tables.bulk_restore import prerestore_sync

log = logging.getLogger(__name__)

#: Service name → module whose ``service`` attribute is its :class:`HeaterService`.
SERVICE_MODULES: dict[str, str] = {
    "alarms": "streams.agents.alarms",
    "bank": "streams.agents.bank",
    "disaster": "streams.agents.disaster",
    "exceptions": "streams.agents.exceptions",
    "registry": "streams.agents.registry",
    "config": "streams.agents.config",
}


class UnknownService(LookupError):
    """No service of that name exists."""


def load_service(name: str) -> HeaterService:
    """Import a service's module (no I/O) and return its service object."""
    try:
        module = importlib.import_module(SERVICE_MODULES[name])
    except KeyError:
        raise UnknownService(f"unknown service {name!r}; known: {', '.join(sorted(SERVICE_MODULES))}") from None
    return module.service


class HeaterWorker(faust.Worker):
    """A Faust worker that runs the service's startup self-check before it reports ready."""

    def __init__(self, service: HeaterService, **kwargs: object) -> None:
        self.service = service
        super().__init__(service.app, **kwargs)

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        try:
            await self.service.run_startup_checks()
        except Exception as exc:
            exit_within(SHUTDOWN_GRACE_S, exitcodes.DEPENDENCY_MISSING)
            await self.crash(exc)

    def _gather_all(self) -> None:
        """Cancel what is left once every service has stopped, and let it unwind.

        mode polls for up to a second for these tasks to end by themselves; ours (the
        platform watch, timers, background sends) run until cancelled, so that second was
        always spent, on every stop and every FATAL stay-down.
        """
        leftovers = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            self.loop.run_until_complete(asyncio.wait(leftovers, timeout=LEFTOVER_UNWIND_S))

    async def _sentinel_task(self) -> None:
        """mode sleeps a second here before closing the loop; nothing is left to wait for."""
        await asyncio.sleep(0)


#: How long a worker that decided to stop may take to shut down before it leaves anyway.
SHUTDOWN_GRACE_S = 15.0
#: How long tasks left after the services stopped may take to unwind once cancelled.
LEFTOVER_UNWIND_S = 0.5


def exit_within(seconds: float, code: int) -> None:
    """Leave with ``code`` after ``seconds`` if the graceful shutdown has not ended the process by then.

    Faust's shutdown can hang (seen: its consumer's stop waiting for ever after a failed
    start-up check), and a process that has decided to stop must not linger half-stopped:
    the process manager would neither restart it nor see it exit.
    """
    timer = threading.Timer(seconds, lambda: (log.error("shutdown took more than %.0f s: leaving now", seconds),
                                              logging.shutdown(), os._exit(code)))
    timer.daemon = True
    timer.start()


def request_exit(service: HeaterService, code: int) -> None:
    """Stop this process gracefully and leave with ``code`` (e.g. stay-down after FATAL)."""
    service.status.exit_code = code
    exit_within(SHUTDOWN_GRACE_S, code)
    os.kill(os.getpid(), signal.SIGTERM)


def watch_at_start(service: HeaterService, settings: Settings) -> PlatformWatch:
    """Read the latch before anything starts, so a control service never acts while latched.

    The watch comes back stopped: what it read (the latch, and where it read to) is where
    the process's next watch goes on from.
    """

    async def look() -> PlatformWatch:
        watch = PlatformWatch(settings.broker_bootstrap, service.spec.name)
        try:
            await watch.start()
            return watch
        finally:
            await watch.stop()

    watch = asyncio.run(look())
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its own; Faust needs one
    return watch


def run(name: str, loglevel: str = "info") -> int:
    """Run the named service until it stops; return its exit code."""
    service = load_service(name)
    freeze_imported_objects()
    settings = Settings.from_env()
    if service.spec.kind is ServiceKind.CONTROL:
        try:
            watch = watch_at_start(service, settings)
        except (OSError, asyncio.TimeoutError, KafkaError) as exc:
            log.error("%s: cannot read the platform latch from %s: %s", name, settings.broker_bootstrap, exc)
            return exitcodes.DEPENDENCY_MISSING
        if watch.latch.latched:
            watch = PlatformWatch(settings.broker_bootstrap, name, resume=watch)
            code = run_halted(service.spec, settings, watch)
            if code != exitcodes.RELEASED:
                return code
            # Released: start here and now. The halted process acted on nothing and holds
            # no state, so this is the fresh start a new process would make, without a new
            # interpreter's imports, and without a restart that Kubernetes would delay by
            # its back-off after the stay-down exit.
            asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its own; Faust needs one
            service.status.started_at = time.time()
        service.watch_read = watch
    service.on_stay_down = lambda: request_exit(service, exitcodes.STAY_DOWN)
    Path(service.app.conf.datadir).mkdir(parents=True, exist_ok=True)
    prerestore_sync(service.app)  # tables rebuilt in bulk: Faust's own recovery applies ~3k records/s
    worker = HeaterWorker(service, loglevel=loglevel, redirect_stdouts=False, override_logging=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:
        code = exitcodes.DONE
    if service.status.exit_code is not None:
        return service.status.exit_code
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return run(args[0])
