"""CPU per reading of BankManager's decision path without Kafka: rules + state write-through.

Feeds readings of the three water sensors, the flame and the outdoor sensor (quiet, then
crossing the WARNING limit back and forth) through :class:`streams.bank_rules.BankRules`
and :class:`streams.tables.bank.BankState` the way the agent does (decide, apply, save
into a table), with a dict standing in for the table. Reports µs per reading and the bytes
of state written per reading (JSON), the cost a changelog pays per reading.

Ends with one JSON line. Run: ``python bench/bank_state_cost.py [--n N]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.bank_rules import BankConfig, BankRules  # noqa: E402
from streams.heater_config import WATER_SENSORS, HeaterLimits  # noqa: E402
from streams.records import SensorReading  # noqa: E402
from streams.tables.bank import BankState  # noqa: E402


class CountingTable(dict):  # type: ignore[type-arg]
    """A dict that counts what is written to it, as JSON bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.writes = 0

    def __setitem__(self, key: str, value: Any) -> None:
        self.bytes += len(json.dumps(value)) + len(key)
        self.writes += 1
        super().__setitem__(key, value)


def readings(n: int, toggling: bool) -> list[SensorReading]:
    sensors = [(s, "temperature") for s in WATER_SENSORS] + [("flame", "flame"), ("outdoor", "temperature")]
    out = []
    t0 = 1_700_000_000.0
    for i in range(n):
        round_, k = divmod(i, len(sensors))
        name, kind = sensors[k]
        if kind == "flame":
            value = 1.0
        elif toggling and name in WATER_SENSORS:
            value = 61.0 if (round_ // 2) % 2 == 0 else 56.5
        else:
            value = 40.0 + (i % 7) * 0.1
        out.append(SensorReading(sensor=name, kind=kind, value=value, unit="C", received_at=t0 + i * 0.002, sequence=i))
    return out


def run(n: int, toggling: bool) -> dict[str, float]:
    rules = BankRules(BankConfig(limits=HeaterLimits()))
    state, table = BankState(), CountingTable()
    batch = readings(n, toggling)
    effects = 0
    started = time.perf_counter()
    for offset, reading in enumerate(batch):
        result = rules.on_reading(state.view, reading, ("sensorData:0", offset))
        if result.sensors or result.conditions:
            state.apply(result)
            state.save(table)
        effects += len(result.effects)
    elapsed = time.perf_counter() - started
    restored = BankState.load(table)
    assert restored.sensors == state.sensors and restored.conditions == state.conditions, "state did not round-trip"
    return {"us_per_reading": round(elapsed / n * 1e6, 2), "state_bytes_per_reading": round(table.bytes / n, 1),
            "effects": effects}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    args = parser.parse_args()
    quiet, toggling = run(args.n, False), run(args.n, True)
    print(json.dumps({"us_per_reading": quiet["us_per_reading"], "us_per_reading_toggling": toggling["us_per_reading"],
                      "state_bytes_per_reading": quiet["state_bytes_per_reading"], "n": args.n,
                      "quiet": quiet, "toggling": toggling}))


if __name__ == "__main__":
    main()
