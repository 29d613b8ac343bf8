"""BankManager's changelog-backed tables, and the in-memory state the rules read.

The decision state — every sensor's latest reading, quality and open window, and every
condition — is one row per sensor and one per condition in ``bank-state``, and a step
writes only the rows it changed; closed one-minute windows have their own table, written
once per window. Both are written through the service's ledger
(:mod:`streams.consistency`), which keeps them, the input position and the alarms a step
owes from the same moment across a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, MutableMapping

import faust

from streams.bank_rules import BankView, Condition, Quality, SensorState, Step, WindowStats

#: The row the state was kept in as a whole (one ~3 KB row per reading); read once, then replaced.
STATE_KEY = "bank"
#: Key prefixes of the state's rows: one per sensor and one per condition.
SENSOR_PREFIX = "sensor/"
CONDITION_PREFIX = "condition/"


def state_table(app: faust.App) -> faust.Table:
    """``sensor/<name>`` → a sensor's state, ``condition/<code>/<subject>`` → a condition (JSON objects)."""
    return app.Table("bank-state", key_type=str, partitions=1)


def windows_table(app: faust.App) -> faust.Table:
    """``sensor@window_start`` → a closed one-minute :class:`WindowStats` (the open one is in the state)."""
    return app.Table("bank-windows", key_type=str, partitions=1)


@dataclass
class BankState:
    """The decision state in memory: what the rules read, stored one row per sensor and per condition.

    A step writes only the rows it changed (a reading: its sensor's row, ~300 bytes),
    not the whole state: the changelog, the ledger row and the encoding cost per reading
    no longer grow with the number of sensors and conditions.
    """

    sensors: dict[str, SensorState] = field(default_factory=dict)
    conditions: dict[str, Condition] = field(default_factory=dict)
    #: Sensors and conditions changed since the last :meth:`save`.
    dirty_sensors: set[str] = field(default_factory=set, repr=False, compare=False)
    dirty_conditions: set[str] = field(default_factory=set, repr=False, compare=False)
    #: Loaded from the whole-state row: the next save writes every row and deletes it.
    legacy: bool = field(default=False, repr=False, compare=False)

    @property
    def view(self) -> BankView:
        return BankView(self.sensors, self.conditions)

    def apply(self, step: Step) -> None:
        """Take a step's state changes."""
        if step.conditions:
            self.conditions.update(step.conditions)
            self.dirty_conditions.update(step.conditions)
        if step.sensors:
            self.sensors.update(step.sensors)
            self.dirty_sensors.update(step.sensors)

    def active(self) -> list[Condition]:
        return [c for _, c in sorted(self.conditions.items()) if c.active]

    def to_row(self) -> dict[str, Any]:
        """The whole state as one JSON object (views, tools)."""
        return {
            "sensors": {name: sensor_row(s) for name, s in self.sensors.items()},
            "conditions": {key: condition_row(c) for key, c in self.conditions.items()},
        }

    @classmethod
    def from_row(cls, row: dict[str, Any] | None) -> "BankState":
        if not row:
            return cls()
        conditions = row.get("conditions", {})
        return cls(
            sensors={name: sensor_from_row(s) for name, s in row.get("sensors", {}).items()},
            conditions={key: condition_from_row(c) for key, c in conditions.items()},
        )

    @classmethod
    def load(cls, table: MutableMapping[str, Any]) -> "BankState":
        """The state stored in ``table``: its rows, over the whole-state row of earlier versions."""
        items = list(table.items())
        legacy = next((row for key, row in items if key == STATE_KEY), None)
        state = cls.from_row(legacy)
        state.legacy = legacy is not None
        for key, row in items:
            if key.startswith(SENSOR_PREFIX):
                state.sensors[key[len(SENSOR_PREFIX):]] = sensor_from_row(row)
            elif key.startswith(CONDITION_PREFIX):
                state.conditions[key[len(CONDITION_PREFIX):]] = condition_from_row(row)
        return state

    def restore(self, table: MutableMapping[str, Any]) -> None:
        """Replace this state, in place, by the one stored in ``table``."""
        loaded = self.load(table)
        self.sensors, self.conditions, self.legacy = loaded.sensors, loaded.conditions, loaded.legacy
        self.dirty_sensors.clear()
        self.dirty_conditions.clear()

    def save(self, table: MutableMapping[str, Any]) -> None:
        """Write the rows changed since the last save (must run inside a stream event)."""
        if self.legacy:
            self.dirty_sensors.update(self.sensors)
            self.dirty_conditions.update(self.conditions)
        for name in self.dirty_sensors:
            table[SENSOR_PREFIX + name] = sensor_row(self.sensors[name])
        for key in self.dirty_conditions:
            table[CONDITION_PREFIX + key] = condition_row(self.conditions[key])
        if self.legacy:
            if STATE_KEY in table:
                del table[STATE_KEY]
            self.legacy = False
        self.dirty_sensors.clear()
        self.dirty_conditions.clear()


def sensor_row(state: SensorState) -> dict[str, Any]:
    return {
        "sensor": state.sensor, "kind": state.kind, "value": state.value, "received_at": state.received_at,
        "quality": state.quality.value, "unit": state.unit, "sequence": state.sequence,
        "window": None if state.window is None else window_row(state.window),
    }


def sensor_from_row(row: dict[str, Any]) -> SensorState:
    window = row.get("window")
    return SensorState(**{
        **row, "quality": Quality(row["quality"]), "window": None if window is None else window_from_row(window),
    })


def condition_row(condition: Condition) -> dict[str, Any]:
    return {
        "code": condition.code, "subject": condition.subject, "severity": condition.severity,
        "active": condition.active, "since": condition.since, "message": condition.message,
        "covered": None if condition.covered is None else dict(condition.covered),
    }


def condition_from_row(row: dict[str, Any]) -> Condition:
    return Condition(**{k: v for k, v in row.items() if k != "pending"})


def window_row(stats: WindowStats) -> dict[str, Any]:
    return {
        "sensor": stats.sensor, "start": stats.start, "end": stats.end, "count": stats.count,
        "minimum": stats.minimum, "maximum": stats.maximum, "total": stats.total, "last_at": stats.last_at,
    }


def window_from_row(row: dict[str, Any]) -> WindowStats:
    return WindowStats(**row)
