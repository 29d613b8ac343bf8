"""What every process of the platform is and reports: kind, phase, readiness. No Faust here."""

from __future__ import annotations

import enum
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from streams import metrics
from streams.settings import PROMPT_INPUT, InputFetch

log = logging.getLogger(__name__)


class ServiceKind(str, enum.Enum):
    """Rule 2 of the design: control services stop on FATAL, display services stay up read-only."""

    CONTROL = "control"
    DISPLAY = "display"


class Phase(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    HALTED = "halted"
    STOPPING = "stopping"


@dataclass(frozen=True)
class ServiceSpec:
    """What a service is: its name and its kind, and how promptly its input must reach it."""

    name: str
    kind: ServiceKind
    description: str = ""
    input_fetch: InputFetch = PROMPT_INPUT


@dataclass
class ServiceStatus:
    """The live state a service reports on ``/status`` (and through readiness)."""

    phase: Phase = Phase.STARTING
    reason: str = ""
    started_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    exit_code: int | None = None

    def mark_ready(self, service: str) -> None:
        self.phase = Phase.READY
        self.reason = ""
        if self.ready_at is None:  # start-up time; a release after FATAL does not restart it
            self.ready_at = time.time()
            log.info("%s ready in %.2f s", service, self.ready_at - self.started_at)
        metrics.SERVICE_READY.labels(service).set(1)
        metrics.SERVICE_HALTED.labels(service).set(0)

    def halt(self, service: str, reason: str) -> None:
        """Stop acting: alive, not ready, doing nothing until an operator reset."""
        if self.phase is not Phase.HALTED:
            log.critical("%s halted: %s", service, reason)
        self.phase = Phase.HALTED
        self.reason = reason
        metrics.SERVICE_READY.labels(service).set(0)
        metrics.SERVICE_HALTED.labels(service).set(1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "reason": self.reason,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "ready_s": None if self.ready_at is None else round(self.ready_at - self.started_at, 3),
        }


def freeze_imported_objects() -> None:
    """Keep what the imports built out of every later garbage collection.

    A service's modules, classes and Faust app are some 90k objects that live as long as
    the process, and each full collection walked them all: about 45 ms on this machine.
    Faust collects once per table on every rebalance (five tables: a quarter second of a
    restart), and the interpreter's own full collections paused the reading path for as
    long. Frozen, a full collection takes under a millisecond.
    """
    gc.collect()
    gc.freeze()
