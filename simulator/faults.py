"""Catalogue of injectable faults and the set of faults currently active.

Faults are keyed by ``(name, sensor)``; ``sensor=None`` on a per-sensor fault
means every sensor.  Parameters are validated here, once, so the hardware
models can trust them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

SENSOR_COUNT = 3


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """What a fault is and which parameters it takes (name -> default)."""

    description: str
    per_sensor: bool = False
    params: dict[str, float] = field(default_factory=dict)


FAULTS: dict[str, FaultSpec] = {
    "stuck_valve": FaultSpec("gas valve welded open whenever power is on (power cut ends it)"),
    "valve_leak": FaultSpec(
        "valve seat leaks: a lit burner keeps burning after the valve relay closes; the relay board "
        "cannot see it, only the water temperature shows it (power cut ends it)"
    ),
    "stuck_sensor": FaultSpec("sensor repeats its last value", per_sensor=True),
    "sensor_dropout": FaultSpec("sensor stops sending", per_sensor=True),
    "noisy_sensor": FaultSpec("sensor noise of `sigma` degC", per_sensor=True, params={"sigma": 4.0}),
    "sensor_fault": FaultSpec("sensor flags its own readings faulty (status bit0)", per_sensor=True),
    "overtemp": FaultSpec("sensor reads `value` degC", per_sensor=True, params={"value": 95.0}),
    "ignition_failure": FaultSpec("burner never lights"),
    "garbage_frames": FaultSpec("bad CAN frames at `rate` per second", params={"rate": 100.0}),
    "bus_off": FaultSpec("error frames, then the bus goes silent"),
    "i2c_nack": FaultSpec("every I2C transaction is NACKed"),
}

ACTIONS: dict[str, FaultSpec] = {
    "set_temperature": FaultSpec("one-shot: set the water temperature to `value` degC", params={"value": 20.0}),
}

_LIMITS: dict[str, tuple[float, float]] = {
    "sigma": (0.0, 50.0),
    "value": (-40.0, 150.0),
    "rate": (1.0, 5000.0),
}


class FaultError(ValueError):
    """An injection request that names no fault or carries bad parameters."""


@dataclass(frozen=True, slots=True)
class Fault:
    name: str
    sensor: int | None
    params: dict[str, float]
    since: float

    def as_dict(self) -> dict[str, Any]:
        return {"fault": self.name, "sensor": self.sensor, "since": self.since, **self.params}


def parse_name(spec: str, sensor: int | None = None) -> tuple[str, int | None]:
    """``"stuck_sensor:1"`` -> ``("stuck_sensor", 1)``; an explicit ``sensor`` wins."""
    name, _, suffix = spec.partition(":")
    if suffix:
        try:
            parsed = int(suffix)
        except ValueError:
            raise FaultError(f"bad sensor index in {spec!r}") from None
        sensor = parsed if sensor is None else sensor
    return name, sensor


def build(spec: str, sensor: int | None = None, params: dict[str, Any] | None = None) -> Fault:
    """Validate an injection request into a :class:`Fault`."""
    name, sensor = parse_name(spec, sensor)
    known = FAULTS.get(name) or ACTIONS.get(name)
    if known is None:
        raise FaultError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULTS | ACTIONS))}")
    if sensor is not None:
        if not known.per_sensor:
            raise FaultError(f"{name} does not take a sensor")
        if not 0 <= sensor < SENSOR_COUNT:
            raise FaultError(f"sensor {sensor} outside 0..{SENSOR_COUNT - 1}")
    values = dict(known.params)
    for key, raw in (params or {}).items():
        if raw is None:
            continue
        if key not in known.params:
            raise FaultError(f"{name} takes no parameter {key!r}")
        try:
            number = float(raw)
        except (TypeError, ValueError, OverflowError):
            raise FaultError(f"{key} must be a number, got {raw!r}") from None
        low, high = _LIMITS[key]
        if not low <= number <= high:
            raise FaultError(f"{key}={number} outside {low}..{high}")
        values[key] = number
    return Fault(name=name, sensor=sensor, params=values, since=time.time())


class FaultSet:
    """The faults currently active."""

    def __init__(self) -> None:
        self._active: dict[tuple[str, int | None], Fault] = {}

    def add(self, fault: Fault) -> None:
        self._active[(fault.name, fault.sensor)] = fault

    def remove(self, name: str | None = None, sensor: int | None = None) -> list[Fault]:
        """Remove matching faults (all when ``name`` is None); returns what went."""
        gone = [
            f
            for key, f in self._active.items()
            if name is None or (key[0] == name and (sensor is None or key[1] == sensor))
        ]
        for f in gone:
            del self._active[(f.name, f.sensor)]
        return gone

    def get(self, name: str) -> Fault | None:
        for (fname, _), fault in self._active.items():
            if fname == name:
                return fault
        return None

    def for_sensor(self, name: str, sensor: int) -> Fault | None:
        """The fault ``name`` as it applies to ``sensor`` (own entry beats 'all sensors')."""
        return self._active.get((name, sensor)) or self._active.get((name, None))

    def __contains__(self, name: object) -> bool:
        return any(key[0] == name for key in self._active)

    def as_list(self) -> list[dict[str, Any]]:
        return [f.as_dict() for f in self._active.values()]
