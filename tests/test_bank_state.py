"""BankManager's stored state: one row per sensor and per condition, written only when changed.

* the rows round-trip: what is saved loads back equal, after any step;
* a step writes only the rows it changed, and a reading a few hundred bytes;
* the whole-state row of earlier versions is read and replaced on the first save;
* the rules stay exact: deciding against state restored from its rows after every
  reading gives the same effects as deciding in memory, and over-temperature follows
  its thresholds and hysteresis reading by reading (checked by an independent model).
"""

from __future__ import annotations

import json
import random
from typing import Any

from streams.bank_rules import OVERTEMP, Bank, BankConfig, BankRules, Condition, Quality, Reading, SensorState
from streams.bank_rules import WindowStats
from streams.heater_config import WATER_SENSORS, HeaterLimits
from streams.tables.bank import CONDITION_PREFIX, SENSOR_PREFIX, STATE_KEY, BankState

LIMITS = HeaterLimits()


class Table(dict):  # type: ignore[type-arg]
    """A dict standing in for the table, remembering the keys each save wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[str] = []

    def __setitem__(self, key: str, value: Any) -> None:
        json.dumps(value)  # a table row must be JSON
        self.written.append(key)
        super().__setitem__(key, value)


def walk(n: int, seed: int, sensors: tuple[str, ...] = WATER_SENSORS) -> list[Reading]:
    """Random walks around the over-temperature limits, with implausible spikes and gaps."""
    rnd = random.Random(seed)
    values = {s: LIMITS.warning_c - 3 for s in sensors}
    out, t = [], 1_000.0
    for i in range(n):
        sensor = rnd.choice(sensors)
        values[sensor] = min(LIMITS.fatal_c + 3, max(LIMITS.warning_c - 8, values[sensor] + rnd.uniform(-1.5, 1.6)))
        value = values[sensor] + (30.0 if rnd.random() < 0.02 else 0.0)  # a spike now and then
        t += rnd.choice((0.01, 0.05, 0.2, 0.2, 0.5, 3.0))
        out.append(Reading(sensor, "temperature", round(value, 2), round(t, 3), sequence=i))
    return out


def decide_with_rows(readings: list[Reading], config: BankConfig) -> tuple[list[Any], BankState, Table]:
    """The agent's path: decide against the state, apply, save; reload the state from its rows every time."""
    rules, table = BankRules(config), Table()
    state, effects = BankState(), []
    for offset, reading in enumerate(readings):
        step = rules.on_reading(state.view, reading, ("sensorData:0", offset))
        if step.sensors or step.conditions:
            state.apply(step)
            state.save(table)
        effects.extend(step.effects)
        state = BankState.load(table)
    return effects, state, table


def test_state_round_trips_through_its_rows() -> None:
    window = WindowStats("water.0", 60.0, 120.0, 3, 40.0, 42.5, 123.5, 100.0)
    state = BankState(
        sensors={"water.0": SensorState("water.0", "temperature", 42.5, 100.0, Quality.FRESH, "C", 7, window),
                 "flame": SensorState("flame", "flame", 1.0, 99.0, Quality.STALE)},
        conditions={"overtemp-fatal/water.0": Condition("overtemp-fatal", "water.0", "FATAL", False, 90.0, "reset: x",
                                                        {"sensorData:0": 12}),
                    "sensor-stale/flame": Condition("sensor-stale", "flame", "WARNING", True, 95.0, "silent")},
    )
    state.dirty_sensors.update(state.sensors)
    state.dirty_conditions.update(state.conditions)
    table = Table()
    state.save(table)
    assert BankState.load(table) == state
    assert sorted(table) == sorted([SENSOR_PREFIX + "water.0", SENSOR_PREFIX + "flame",
                                    CONDITION_PREFIX + "overtemp-fatal/water.0", CONDITION_PREFIX + "sensor-stale/flame"])
    assert BankState.from_row(state.to_row()) == state


def test_a_reading_writes_only_its_sensors_row() -> None:
    rules, table, state = BankRules(BankConfig(limits=LIMITS)), Table(), BankState()
    for i, sensor in enumerate(WATER_SENSORS * 3):
        state.apply(rules.on_reading(state.view, Reading(sensor, "temperature", LIMITS.warning_c - 1, 1000.0 + i * 0.1)))
        state.save(table)
    table.written.clear()
    state.apply(rules.on_reading(state.view, Reading("water.1", "temperature", LIMITS.warning_c - 0.9, 1010.0)))
    state.save(table)
    assert table.written == [SENSOR_PREFIX + "water.1"]
    assert len(json.dumps(table[SENSOR_PREFIX + "water.1"])) < 500
    # a crossing writes the sensor and the condition it raised, nothing else
    table.written.clear()
    state.apply(rules.on_reading(state.view, Reading("water.1", "temperature", LIMITS.warning_c + 0.5, 1010.1)))
    state.save(table)
    assert sorted(table.written) == [CONDITION_PREFIX + f"{OVERTEMP['WARNING']}/water.1", SENSOR_PREFIX + "water.1"]


def test_the_whole_state_row_of_earlier_versions_is_read_then_replaced() -> None:
    bank = Bank(BankConfig(limits=LIMITS))
    bank.feed(walk(300, seed=3))
    old = BankState(dict(bank.sensors), dict(bank.conditions))
    table = Table()
    dict.__setitem__(table, STATE_KEY, old.to_row())
    loaded = BankState.load(table)
    assert loaded == old and loaded.legacy
    # the next step writes every row and drops the old one
    rules = BankRules(BankConfig(limits=LIMITS))
    last = max(s.received_at for s in loaded.sensors.values())
    loaded.apply(rules.on_reading(loaded.view, Reading("water.0", "temperature", 50.0, last + 1)))
    loaded.save(table)
    assert STATE_KEY not in table
    assert BankState.load(table) == loaded
    assert len(table) == len(loaded.sensors) + len(loaded.conditions)


def test_rules_are_exact_against_state_reloaded_from_rows_after_every_reading() -> None:
    config = BankConfig(limits=LIMITS)
    for seed in range(5):
        readings = walk(1_500, seed)
        in_memory = Bank(config)
        expected = in_memory.feed(readings)
        effects, state, _ = decide_with_rows(readings, config)
        assert effects == expected
        assert state.sensors == in_memory.sensors and state.conditions == in_memory.conditions
        assert any(e.kind == "clear" for e in expected) and any(e.code == OVERTEMP["FATAL"] for e in expected)


def test_over_temperature_follows_an_independent_model() -> None:
    """Per sensor and level: raise at >= limit, clear below limit - hysteresis, FATAL never cleared; implausible ignored."""
    config = BankConfig(limits=LIMITS)
    readings = walk(3_000, seed=11)
    effects, _, _ = decide_with_rows(readings, config)
    got = [(e.kind, e.code, e.subject, e.at) for e in effects if e.code in OVERTEMP.values()]
    want: list[tuple[str, str, str, float]] = []
    active: set[tuple[str, str]] = set()
    last: dict[str, Reading] = {}
    for r in readings:
        prev = last.get(r.sensor)
        last[r.sensor] = r
        if prev is not None and r.received_at - prev.received_at <= LIMITS.stale_after_s \
                and abs(r.value - prev.value) > LIMITS.implausible_jump_c:
            continue  # not believed
        for severity, limit in config.levels:
            code, key = OVERTEMP[severity], (OVERTEMP[severity], r.sensor)
            if key in active:
                if severity != "FATAL" and r.value < limit - config.hysteresis_c:
                    active.discard(key)
                    want.append(("clear", code, r.sensor, r.received_at))
            elif r.value >= limit:
                active.add(key)
                want.append(("raise", code, r.sensor, r.received_at))
    assert got == want
    assert len(want) > 20
