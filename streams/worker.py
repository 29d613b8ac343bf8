"""Run one service as a process: what `heater worker NAME` and Kubernetes run."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from pathlib import Path

import faust

from streams import exitcodes
from streams.app import HeaterService

log = logging.getLogger(__name__)

#: Service name → module whose ``service`` attribute is its :class:`HeaterService`.
SERVICE_MODULES: dict[str, str] = {
    "alarms": "streams.agents.alarms",
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
            await self.crash(exc)


def request_exit(service: HeaterService, code: int) -> None:
    """Stop this process gracefully and leave with ``code`` (e.g. stay-down after FATAL)."""
    service.status.exit_code = code
    os.kill(os.getpid(), signal.SIGTERM)


def run(name: str, loglevel: str = "info") -> int:
    """Run the named service until it stops; return its exit code."""
    service = load_service(name)
    Path(service.app.conf.datadir).mkdir(parents=True, exist_ok=True)
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
