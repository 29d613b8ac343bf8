"""What the heating state machine asks the world to do: commands, state, alarms, the end.

The machine returns these values instead of doing I/O, so every rule is a row in a
table-driven test and the runner is a thin loop that carries them out in order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union


class Outcome(str, enum.Enum):
    """How a heating job ends; each maps to one exit code of the platform's table."""

    DONE = "done"
    FAILED = "failed"
    LOCKOUT = "lockout"


class Phase(str, enum.Enum):
    """Where the burner sequence is. ``state`` is the ``heatingJobState`` value shown to others."""

    NEW = "new"
    WAITING = "waiting"
    IGNITING = "igniting"
    PAUSE = "pause"
    HEATING = "heating"
    DONE = "done"
    FAILED = "failed"
    LOCKOUT = "lockout"

    @property
    def state(self) -> str:
        return _PUBLISHED[self]

    @property
    def finished(self) -> bool:
        return self in (Phase.DONE, Phase.FAILED, Phase.LOCKOUT)

    @property
    def wants_gas(self) -> bool:
        """The valve is (or is being) open: the lease must be renewed."""
        return self in (Phase.IGNITING, Phase.HEATING)


_PUBLISHED: dict[Phase, str] = {
    Phase.NEW: "idle",
    Phase.WAITING: "idle",
    Phase.IGNITING: "igniting",
    Phase.PAUSE: "igniting",
    Phase.HEATING: "heating",
    Phase.DONE: "done",
    Phase.FAILED: "failed",
    Phase.LOCKOUT: "failed",
}


@dataclass(frozen=True)
class Relay:
    """One ``I2CHeating`` command: ``action`` is a :class:`~streams.records.RelayAction` value."""

    action: str
    on: bool
    lease_s: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class Publish:
    """A transition to announce on ``heatingJobState``."""

    state: str
    reason: str = ""


@dataclass(frozen=True)
class RaiseAlarm:
    code: str
    severity: str
    message: str


@dataclass(frozen=True)
class ClearAlarm:
    code: str
    reason: str = ""


@dataclass(frozen=True)
class Finish:
    """The job is over: the runner flushes what came before, then exits with the outcome's code."""

    outcome: Outcome
    reason: str


Effect = Union[Relay, Publish, RaiseAlarm, ClearAlarm, Finish]

#: Alarm codes of the heating job (its alarm ids are ``heating-job/<code>``).
HEATING_ALARM = "heating"
LOCKOUT_ALARM = "lockout"
NO_CHANGE_ALARM = "no-temperature-change"
FLAME_LOSS_ALARM = "flame-loss"
NO_DATA_ALARM = "no-sensor-data"
