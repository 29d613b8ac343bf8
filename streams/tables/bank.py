"""BankManager's changelog-backed tables, and the in-memory state the rules read.

The decision state — every sensor's latest reading, quality and open window, and every
condition — is one row (``bank-state``/``bank``); closed one-minute windows have their
own table, written once per window. Both are written through the service's ledger
(:mod:`streams.consistency`), which keeps them, the input position and the alarms a step
owes from the same moment across a crash.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, MutableMapping

import faust

from streams.bank_rules import BankView, Condition, Quality, SensorState, Step, WindowStats

STATE_KEY = "bank"


def state_table(app: faust.App) -> faust.Table:
    """``bank`` → the decision state (:class:`BankState` as a JSON object)."""
    return app.Table("bank-state", key_type=str, partitions=1)


def windows_table(app: faust.App) -> faust.Table:
    """``sensor@window_start`` → a closed one-minute :class:`WindowStats` (the open one is in the state)."""
    return app.Table("bank-windows", key_type=str, partitions=1)


@dataclass
class BankState:
    """The decision state in memory: what the rules read and what one row stores."""

    sensors: dict[str, SensorState] = field(default_factory=dict)
    conditions: dict[str, Condition] = field(default_factory=dict)

    @property
    def view(self) -> BankView:
        return BankView(self.sensors, self.conditions)

    def apply(self, step: Step) -> None:
        """Take a step's state changes."""
        self.conditions.update(step.conditions)
        self.sensors.update(step.sensors)

    def active(self) -> list[Condition]:
        return [c for _, c in sorted(self.conditions.items()) if c.active]

    def to_row(self) -> dict[str, Any]:
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
        return cls.from_row(table.get(STATE_KEY))

    def restore(self, table: MutableMapping[str, Any]) -> None:
        """Replace this state, in place, by the one stored in ``table``."""
        loaded = self.load(table)
        self.sensors, self.conditions = loaded.sensors, loaded.conditions

    def save(self, table: MutableMapping[str, Any]) -> None:
        """Write the whole state as one row (must run inside a stream event)."""
        table[STATE_KEY] = self.to_row()


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
    return asdict(condition)


def condition_from_row(row: dict[str, Any]) -> Condition:
    return Condition(**{k: v for k, v in row.items() if k != "pending"})


def window_row(stats: WindowStats) -> dict[str, Any]:
    return {
        "sensor": stats.sensor, "start": stats.start, "end": stats.end, "count": stats.count,
        "minimum": stats.minimum, "maximum": stats.maximum, "total": stats.total, "last_at": stats.last_at,
    }


def window_from_row(row: dict[str, Any]) -> WindowStats:
    return WindowStats(**row)
