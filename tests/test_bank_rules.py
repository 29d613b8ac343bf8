"""The sensor bank's rules, pure: thresholds, hysteresis, quality, staleness, disagreement, windows, replays."""

from __future__ import annotations

import math
from typing import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.alarm_book import AlarmBook
from streams.bank_rules import (
    DISAGREEMENT,
    IMPLAUSIBLE,
    OVERTEMP,
    STALE,
    Bank,
    BankConfig,
    Effect,
    Quality,
    Reading,
    apply,
    window_key,
)
from streams.heater_config import HeaterLimits
from streams.records import Alarm, AlarmClear, occurrence_key

WARN, CRIT, FATAL = OVERTEMP["WARNING"], OVERTEMP["CRITICAL"], OVERTEMP["FATAL"]


def temps(values: Iterable[float], sensor: str = "water.0", t0: float = 1000.0, dt: float = 0.1) -> list[Reading]:
    return [Reading(sensor, "temperature", v, t0 + i * dt) for i, v in enumerate(values)]


def slow(values: Iterable[float], sensor: str = "water.0") -> list[Reading]:
    """Readings 2 s apart: longer than stale_after_s, so the jump rule never compares them."""
    return temps(values, sensor, dt=2.0)


def summary(effects: Iterable[Effect]) -> list[tuple[str, str, str]]:
    return [(e.kind, e.code, e.subject) for e in effects]


def kinds(effects: Iterable[Effect]) -> list[tuple[str, str]]:
    return [(e.kind, e.code) for e in effects]


def to_records(effects: Iterable[Effect]) -> list[Alarm | AlarmClear]:
    """The records the agent sends for these effects (what AlarmsServer receives)."""
    records: list[Alarm | AlarmClear] = []
    for e in effects:
        if e.kind == "raise":
            records.append(Alarm(alarm_id=e.alarm_id, source="bank", code=e.code, severity=e.severity,
                                 message=e.message, raised_at=e.at, details=dict(e.details)))
        else:
            records.append(AlarmClear(alarm_id=e.alarm_id, cleared_by="bank", cleared_at=e.at, reason=e.message))
    return records


def history_of(effects: Iterable[Effect]) -> dict[str, tuple[bool, float | None]]:
    """AlarmsServer's history (occurrence → active, cleared_at) for these effects, in any order."""
    book = AlarmBook({}, {}, {})
    for record in to_records(effects):
        book.apply(record)
    return {occ: (e.active, e.cleared_at) for occ, e in book.history.items()}


# -- over-temperature: thresholds, hysteresis, levels -------------------------------------

OVERTEMP_CASES = [
    ("below warning", [59.99], []),
    ("at warning raises", [60.0], [("raise", WARN)]),
    ("inside hysteresis stays", [60.0, 58.01, 58.0], [("raise", WARN)]),
    ("below hysteresis clears", [60.0, 57.99], [("raise", WARN), ("clear", WARN)]),
    ("raise again after clear", [61, 57, 61], [("raise", WARN), ("clear", WARN), ("raise", WARN)]),
    ("critical also warns", [61, 66, 71, 75], [("raise", WARN), ("raise", CRIT)]),
    ("critical clears before warning", [61, 66, 71, 75, 72.9, 57.9],
     [("raise", WARN), ("raise", CRIT), ("clear", CRIT), ("clear", WARN)]),
    ("fatal is never cleared here", [61, 66, 71, 75, 80, 85, 80, 60, 40],
     [("raise", WARN), ("raise", CRIT), ("raise", FATAL), ("clear", CRIT), ("clear", WARN)]),
]


@pytest.mark.parametrize("values,expected", [c[1:] for c in OVERTEMP_CASES], ids=[c[0] for c in OVERTEMP_CASES])
def test_overtemperature_levels_and_hysteresis(values: list[float], expected: list[tuple[str, str]]) -> None:
    effects = Bank().feed(slow(values))
    assert kinds(effects) == expected
    assert all(e.subject == "water.0" for e in effects)


def fatal_occurrence(effects: Iterable[Effect]) -> str:
    """The occurrence id of the FATAL these effects raise (as AlarmsServer names it for a reset)."""
    (raised,) = [e for e in effects if e.kind == "raise" and e.code == FATAL]
    return occurrence_key(raised.alarm_id, raised.at)


def test_a_reset_releases_the_occurrence_it_names_and_a_persisting_overheat_is_a_new_one() -> None:
    bank = Bank()
    first = fatal_occurrence(bank.feed(temps([80, 86, 87, 88])))
    assert bank.conditions[f"{FATAL}/water.0"].active
    bank.released = {first: {}}
    effects = bank.feed(temps([88], t0=1000.5))
    assert [(e.kind, e.code, e.at) for e in effects] == [("raise", FATAL, 1000.5)], "still over the limit: FATAL again"
    assert fatal_occurrence(effects) != first, "a new occurrence, which no reset has named"


def test_readings_the_reset_covered_do_not_raise_it_again() -> None:
    """Restarted after the reset, the bank works through readings the operator had already seen (offsets
    below where the input ended when the reset was issued): the released FATAL is not raised again from
    them — only from a reading past them, if the water is still too hot."""
    bank = Bank()
    hot = temps([86] * 6)
    first = fatal_occurrence(e for i, r in enumerate(hot[:2]) for e in bank.reading(r, ("sensorData:0", i)))
    bank.released = {first: {"sensorData:0": 5}}
    backlog = [e for i, r in enumerate(hot[2:5], start=2) for e in bank.reading(r, ("sensorData:0", i))]
    assert backlog == [] and not bank.conditions[f"{FATAL}/water.0"].active
    past = bank.reading(hot[5], ("sensorData:0", 5))
    assert [(e.kind, e.code, e.at) for e in past] == [("raise", FATAL, hot[5].received_at)]


def test_replayed_readings_name_the_same_occurrence() -> None:
    """A restart decides the same readings again from the same state: the reset already released that id."""
    readings = temps([80, 86, 87, 88])
    assert fatal_occurrence(Bank().feed(readings)) == fatal_occurrence(Bank().feed(readings))


def test_a_released_fatal_stays_ended_until_the_water_overheats_again() -> None:
    bank = Bank()
    bank.released = {fatal_occurrence(bank.feed(slow([80, 86]))): {}}
    assert kinds(bank.feed(temps([70, 50], t0=1004, dt=2.0))) == [("clear", CRIT), ("clear", WARN)], "no clear is sent for FATAL"
    assert not bank.conditions[f"{FATAL}/water.0"].active
    assert kinds(bank.feed(temps([86], t0=1010))) == [("raise", WARN), ("raise", CRIT), ("raise", FATAL)]


def test_a_reset_that_names_other_occurrences_ends_nothing() -> None:
    """No clock decides: a reset released some other occurrence, later than this reading — the FATAL holds."""
    bank = Bank()
    bank.released = {occurrence_key(f"bank/{FATAL}/water.0", 1100.0): {}, occurrence_key("disaster/rise/job-1", 999.0): {}}
    assert kinds(bank.feed(temps([86]))) == [("raise", WARN), ("raise", CRIT), ("raise", FATAL)]
    assert bank.feed(temps([86, 84], t0=1001)) == [], "FATAL stays active; nothing else changes"


def test_raise_and_clear_carry_the_time_of_their_reading() -> None:
    readings = slow([61, 57])
    raised, cleared = Bank().feed(readings)
    assert (raised.at, cleared.at) == (readings[0].received_at, readings[1].received_at)
    assert raised.alarm_id == "bank/overtemp-warning/water.0" and raised.severity == "WARNING"
    assert cleared.severity == "WARNING"


def test_limits_come_from_the_config() -> None:
    config = BankConfig(limits=HeaterLimits(warning_c=50, critical_c=60, fatal_c=70), hysteresis_c=1.0)
    assert summary(Bank(config).feed(slow([50, 49.5, 48.9]))) == [
        ("raise", WARN, "water.0"), ("clear", WARN, "water.0")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=58.01, max_value=63.0), min_size=1, max_size=60))
def test_noise_above_the_clear_level_never_toggles(noise: list[float]) -> None:
    effects = Bank().feed(temps([61.0, *noise], dt=0.1))
    assert summary(effects) == [("raise", WARN, "water.0")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=55.0, max_value=59.99), min_size=1, max_size=60))
def test_noise_below_the_limit_never_raises(noise: list[float]) -> None:
    assert Bank().feed(temps(noise, dt=0.1)) == []


# -- quality: implausible jumps -------------------------------------------------------------

QUALITY_CASES = [
    ("small steps are fresh", [40, 44, 48, 52], []),
    ("jump at the limit is fresh", [40, 45.0], []),
    ("jump over the limit", [40, 45.01], [("raise", IMPLAUSIBLE)]),
    ("single spike raises and clears", [40, 70, 40, 40.5], [("raise", IMPLAUSIBLE), ("clear", IMPLAUSIBLE)]),
    ("a real step is believed one reading later", [50, 62, 62.5],
     [("raise", IMPLAUSIBLE), ("clear", IMPLAUSIBLE), ("raise", WARN)]),
    ("a spike does not trip over-temperature", [55, 90, 55], [("raise", IMPLAUSIBLE)]),
]


@pytest.mark.parametrize("values,expected", [c[1:] for c in QUALITY_CASES], ids=[c[0] for c in QUALITY_CASES])
def test_implausible_jumps(values: list[float], expected: list[tuple[str, str]]) -> None:
    assert [(e.kind, e.code) for e in Bank().feed(temps(values))] == expected


def test_spike_then_return_clears_when_consecutive_readings_agree_again() -> None:
    bank = Bank()
    bank.feed(temps([40, 70, 40]))
    assert bank.sensors["water.0"].quality is Quality.IMPLAUSIBLE
    assert summary(bank.reading(Reading("water.0", "temperature", 40.2, 1000.3))) == [("clear", IMPLAUSIBLE, "water.0")]
    assert bank.sensors["water.0"].quality is Quality.FRESH


def test_a_jump_across_a_gap_is_not_implausible() -> None:
    assert Bank().feed([Reading("water.0", "temperature", 20, 0.0), Reading("water.0", "temperature", 40, 5.0)]) == []


@pytest.mark.parametrize("value,implausible", [(0.0, False), (1.0, False), (0.5, True), (2.0, True)])
def test_flame_must_be_on_or_off(value: float, implausible: bool) -> None:
    effects = Bank().feed([Reading("burner.flame", "flame", value, 10.0, unit="")])
    assert summary(effects) == ([("raise", IMPLAUSIBLE, "burner.flame")] if implausible else [])


# -- staleness: timer ticks with an explicit now --------------------------------------------

def test_stale_boundary_raise_time_and_clear_on_next_reading() -> None:
    bank = Bank()
    bank.reading(Reading("water.0", "temperature", 40, 100.0))
    assert bank.tick(101.0) == ()  # exactly stale_after_s: still fresh
    (raised,) = bank.tick(101.001)
    assert (raised.kind, raised.code, raised.subject, raised.at) == ("raise", STALE, "water.0", 101.0)
    assert bank.sensors["water.0"].quality is Quality.STALE
    assert bank.tick(105.0) == ()  # once per condition start
    (cleared,) = bank.reading(Reading("water.0", "temperature", 40, 106.0))
    assert (cleared.kind, cleared.code, cleared.at) == ("clear", STALE, 106.0)
    assert bank.sensors["water.0"].quality is Quality.FRESH


def test_raise_time_does_not_depend_on_when_the_tick_runs() -> None:
    times = []
    for now in (101.5, 130.0, 4000.0):
        bank = Bank()
        bank.reading(Reading("water.1", "temperature", 40, 100.0))
        times.append(bank.tick(now)[0].at)
    assert times == [101.0, 101.0, 101.0]


def test_late_reading_never_clears_before_the_raise() -> None:
    """A reading delivered after the tick but received before the stale time: clear at the raise time."""
    bank = Bank()
    bank.reading(Reading("water.0", "temperature", 40, 100.0))
    (raised,) = bank.tick(101.5)
    (cleared,) = bank.reading(Reading("water.0", "temperature", 40, 100.9))
    assert cleared.at == raised.at == 101.0
    assert history_of([raised, cleared]) == {f"bank/{STALE}/water.0@101.0": (False, 101.0)}


def test_old_readings_played_back_go_stale_between_ticks_yet_overheat_raises_the_same_fatal() -> None:
    """A recorded incident played back into a running bank: its ticks run on the wall clock, hours
    after the readings, so each sensor looks stale between two readings and the next one clears that;
    the overheat is judged on the readings' own times and raises the FATAL occurrence the incident did."""
    incident = temps([40, 40, 93, 93, 93])
    live = Bank().feed(incident)
    played, bank, wall_clock = [], Bank(), incident[-1].received_at + 3600.0
    for reading in incident:
        played += bank.reading(reading)
        played += bank.tick(wall_clock)
    assert fatal_occurrence(played) == fatal_occurrence(live)
    stale = [e for e in played if e.code == STALE]
    assert stale and all(e.severity == "WARNING" for e in stale) and not [e for e in live if e.code == STALE]


def test_only_sensors_seen_can_go_stale() -> None:
    bank = Bank()
    bank.reading(Reading("water.0", "temperature", 40, 100.0))
    bank.reading(Reading("burner.flame", "flame", 1.0, 100.5))
    assert summary(bank.tick(101.2)) == [("raise", STALE, "water.0")]
    assert summary(bank.tick(101.6)) == [("raise", STALE, "burner.flame")]


# -- disagreement between the redundant water sensors ---------------------------------------

def water(values: tuple[float, float, float], t: float) -> list[Reading]:
    return [Reading(f"water.{i}", "temperature", v, t + i * 0.01) for i, v in enumerate(values)]


DISAGREEMENT_CASES = [
    ("agreeing", [(40, 41, 42)], []),
    ("spread at the limit", [(40, 41, 43.0)], []),
    ("spread over the limit", [(40, 41, 43.01)], [("raise", DISAGREEMENT)]),
    ("hysteresis holds", [(40, 41, 43.5), (40, 41, 42.6)], [("raise", DISAGREEMENT)]),
    ("clears below limit minus hysteresis", [(40, 41, 43.5), (40, 41, 42.4)], [("raise", DISAGREEMENT), ("clear", DISAGREEMENT)]),
]


@pytest.mark.parametrize("rows,expected", [c[1:] for c in DISAGREEMENT_CASES], ids=[c[0] for c in DISAGREEMENT_CASES])
def test_disagreement(rows: list[tuple[float, float, float]], expected: list[tuple[str, str]]) -> None:
    readings = [r for i, row in enumerate(rows) for r in water(row, 100.0 + i * 0.1)]
    effects = Bank().feed(readings)
    assert [(e.kind, e.code) for e in effects] == expected
    assert all(e.subject == "water" and e.severity == "CRITICAL" for e in effects)


def test_disagreement_ignores_old_and_implausible_values() -> None:
    bank = Bank()
    bank.feed(water((40, 40, 40), 100.0))
    bank.reading(Reading("water.2", "temperature", 46, 100.1))  # a jump of 6: implausible, not compared
    assert bank.active() == [f"{IMPLAUSIBLE}/water.2"]
    # water.1 falls silent; 2 s later its old value is no evidence of disagreement
    assert bank.feed([Reading("water.0", "temperature", 50, 102.0), Reading("water.2", "temperature", 50.5, 102.05)]) != []
    assert f"{DISAGREEMENT}/water" not in bank.active()


# -- windows: one-minute tumbling min/max/mean ----------------------------------------------

def test_tumbling_windows_min_max_mean_and_boundaries() -> None:
    bank = Bank()
    bank.feed([Reading("water.0", "temperature", v, t) for v, t in [(40, 60.0), (44, 90.0), (42, 119.999), (45, 120.0)]])
    assert list(bank.windows) == [window_key("water.0", 60)]  # closed by the first reading of the next one
    first, second = bank.windows[window_key("water.0", 60)], bank.stats()[window_key("water.0", 120)]
    assert (first.start, first.end, first.count, first.minimum, first.maximum) == (60.0, 120.0, 3, 40, 44)
    assert first.mean == pytest.approx(42.0)
    assert (second.count, second.mean) == (1, 45)


def test_windows_skip_implausible_and_replayed_readings() -> None:
    bank = Bank()
    readings = temps([40, 40.5, 70, 41])
    bank.feed(readings)
    bank.feed(readings)  # a replay counts nothing twice
    stats = bank.stats()[window_key("water.0", 960)]
    assert (stats.count, stats.maximum) == (2, 40.5)


# -- exactly-once under replays and crashes ------------------------------------------------

reading_values = st.lists(
    st.tuples(st.sampled_from(["water.0", "water.1", "water.2"]), st.floats(min_value=50, max_value=68)),
    min_size=1, max_size=80,
)


def as_readings(values: list[tuple[str, float]]) -> list[Reading]:
    return [Reading(s, "temperature", v, 1000.0 + i * 0.05) for i, (s, v) in enumerate(values)]


@settings(max_examples=150, deadline=None)
@given(reading_values)
def test_effects_alternate_per_alarm_and_never_go_back_in_time(values: list[tuple[str, float]]) -> None:
    last: dict[str, Effect] = {}
    for effect in Bank().feed(as_readings(values)):
        before = last.get(effect.alarm_id)
        assert before is None or (before.kind != effect.kind and before.at <= effect.at)
        assert before is not None or effect.kind == "raise"
        last[effect.alarm_id] = effect


class Worker:
    """BankManager's write protocol over the pure rules, with what kill -9 can do to it.

    State (sensors + conditions + outbox) is one row, saved before the step's effects are
    sent; the outbox is settled only once everything sent is delivered, and before a
    condition with an unsettled transition changes again. A crash may lose any effect
    still in flight and bring the row back from any moment since the last commit.
    """

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.bank = Bank()
        self.pending: set[str] = set()
        self.in_flight: list[Effect] = []
        self.delivered: list[Effect] = []
        self.saved: list[tuple[int, dict, dict, set]] = []
        self.committed = 0

    def step(self, position: int, reading: Reading) -> None:
        step = self.bank.rules.on_reading(self.bank.view, reading)
        if not step.duplicate:
            if self.pending & step.conditions.keys():
                self.settle()
            apply(step, self.bank.sensors, self.bank.conditions, self.bank.windows)
            self.pending |= step.conditions.keys()
            self.in_flight.extend(step.effects)
        self.saved.append((position + 1, dict(self.bank.sensors), dict(self.bank.conditions), set(self.pending)))
        if self.data.draw(st.integers(0, 19)) == 0:  # a tick
            self.settle()
        if self.data.draw(st.integers(0, 9)) == 0:  # Faust commits after flushing the producer
            self.delivered.extend(self.in_flight)
            self.in_flight.clear()
            self.committed = position + 1

    def settle(self) -> None:
        self.delivered.extend(self.in_flight)
        self.in_flight.clear()
        self.pending.clear()

    def crash(self) -> int:
        """Kill -9 and restart; return the position to resume from (the last commit)."""
        self.delivered.extend(e for e in self.in_flight if self.data.draw(st.booleans()))
        self.in_flight.clear()
        candidates = [s for s in self.saved if s[0] >= self.committed]
        if candidates:
            _, sensors, conditions, pending = self.data.draw(st.sampled_from(candidates))
            self.bank.sensors, self.bank.conditions, self.pending = dict(sensors), dict(conditions), set(pending)
        for key in sorted(self.pending):  # the startup check resends the outbox
            c = self.bank.conditions[key]
            self.delivered.append(Effect("raise" if c.active else "clear", c.code, c.subject, c.severity, c.since, c.message))
        self.saved = [s for s in self.saved if s[0] <= self.committed]
        return self.committed


@settings(max_examples=400, deadline=None)
@given(reading_values, st.data())
def test_kill_9_protocol_loses_and_doubles_nothing(values: list[tuple[str, float]], data: st.DataObject) -> None:
    """Kill at random points, lose in-flight effects, restore the row from any moment since the commit."""
    readings = as_readings(values)
    expected = history_of(Bank().feed(readings))
    worker = Worker(data)
    crashes = data.draw(st.lists(st.integers(0, len(readings)), max_size=5))
    position = 0
    for crash in crashes:
        while position < max(crash, position):
            worker.step(position, readings[position])
            position += 1
        position = worker.crash()
    while position < len(readings):
        worker.step(position, readings[position])
        position += 1
    worker.settle()
    assert history_of(worker.delivered) == expected


def test_replaying_everything_sends_nothing_new() -> None:
    readings = as_readings([("water.0", 61), ("water.1", 61), ("water.0", 57), ("water.1", 57.5)])
    bank = Bank()
    first = bank.feed(readings)
    assert len(first) >= 4 and bank.feed(readings) == []


def test_equal_times_from_different_causes_still_order_correctly() -> None:
    """A raise right after a clear at the same instant is moved just past it, never merged."""
    bank = Bank()
    bank.feed(water((40, 40, 40), 100.0))
    bank.reading(Reading("water.2", "temperature", 43.5, 100.2))
    (cleared,) = bank.reading(Reading("water.2", "temperature", 40.0, 100.3))
    (raised,) = bank.reading(Reading("water.1", "temperature", 43.5, 100.3))
    assert cleared.kind == "clear" and raised.kind == "raise"
    assert raised.at == math.nextafter(100.3, math.inf)
    assert len(history_of([*Bank().feed([]), cleared, raised])) == 1
