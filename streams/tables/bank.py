"""BankManager's changelog-backed tables, and the in-memory state the rules read.

The decision state — every sensor's latest reading, quality and open window, and every
condition with its outbox flag — is **one row** (``bank-state``/``bank``), written once per
input. One row because Faust writes tables without transactions: after kill -9, recovery
replays the changelog tail over the local RocksDB copy, so separate rows can come back
from different moments (measured: a condition row older than the sensor row that marks
its reading as applied lost a clear/raise pair). One row always comes back whole, from
one moment, and the rules' replay rules take it from there. Closed one-minute windows are
not decisions; they get their own table, written once per window.

A condition is ``pending`` from the moment its transition is written until its effect is
known delivered: the outbox a restarted worker resends.

The row also holds ``next_offset``, the ``sensorData`` offset of the first reading it does
not hold yet. A restarted worker resumes its input there, whatever offset the consumer
group committed: the state and its input position come back from the same moment.
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
    pending: set[str] = field(default_factory=set)
    next_offset: int | None = None

    @property
    def view(self) -> BankView:
        return BankView(self.sensors, self.conditions)

    def apply(self, step: Step) -> None:
        """Take a step's state changes; its condition transitions become pending."""
        self.conditions.update(step.conditions)
        self.pending.update(step.conditions)
        self.sensors.update(step.sensors)

    def active(self) -> list[Condition]:
        return [c for _, c in sorted(self.conditions.items()) if c.active]

    def to_row(self) -> dict[str, Any]:
        return {
            "sensors": {name: sensor_row(s) for name, s in self.sensors.items()},
            "conditions": {key: condition_row(c, key in self.pending) for key, c in self.conditions.items()},
            "next_offset": self.next_offset,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any] | None) -> "BankState":
        if not row:
            return cls()
        conditions = row.get("conditions", {})
        return cls(
            sensors={name: sensor_from_row(s) for name, s in row.get("sensors", {}).items()},
            conditions={key: condition_from_row(c) for key, c in conditions.items()},
            pending={key for key, c in conditions.items() if c.get("pending")},
            next_offset=row.get("next_offset"),
        )

    @classmethod
    def load(cls, table: MutableMapping[str, Any]) -> "BankState":
        return cls.from_row(table.get(STATE_KEY))

    def restore(self, table: MutableMapping[str, Any]) -> None:
        """Replace this state, in place, by the one stored in ``table``."""
        loaded = self.load(table)
        self.sensors, self.conditions, self.pending = loaded.sensors, loaded.conditions, loaded.pending
        self.next_offset = loaded.next_offset

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


def condition_row(condition: Condition, pending: bool = False) -> dict[str, Any]:
    return asdict(condition) | {"pending": pending}


def condition_from_row(row: dict[str, Any]) -> Condition:
    return Condition(**{k: v for k, v in row.items() if k != "pending"})


def window_row(stats: WindowStats) -> dict[str, Any]:
    return {
        "sensor": stats.sensor, "start": stats.start, "end": stats.end, "count": stats.count,
        "minimum": stats.minimum, "maximum": stats.maximum, "total": stats.total, "last_at": stats.last_at,
    }


def window_from_row(row: dict[str, Any]) -> WindowStats:
    return WindowStats(**row)
