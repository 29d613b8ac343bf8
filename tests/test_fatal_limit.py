"""The FATAL limit checked at the edge, pure: it names the reading the bank names, and a reset of it holds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.bank_rules import OVERTEMP, Bank, Reading
from streams.fatal_limit import CODE, LIMITER_PREFIX, SOURCE, FatalLimiter, fresh
from streams.heater_config import HeaterLimits
from streams.ids import alarm_id_for, occurrence_key
from streams.latch import LatchView

FATAL = OVERTEMP["FATAL"]
LIMITS = HeaterLimits()


def limiter_occurrence(sensor: str, at: float) -> str:
    """The occurrence id of the limiter's FATAL for ``sensor``'s reading received at ``at`` (as AlarmsServer names it)."""
    return occurrence_key(alarm_id_for(SOURCE, CODE, sensor), at)


def temps(values: list[float], t0: float = 1000.0, dt: float = 0.1, sensor: str = "water.0") -> list[Reading]:
    return [Reading(sensor, "temperature", v, t0 + i * dt) for i, v in enumerate(values)]


def trips(limiter: FatalLimiter, readings: list[Reading]) -> list[float]:
    return [t.at for r in readings if (t := limiter.on_reading(r.sensor, r.value, r.received_at))]


def bank_fatal_raises(bank: Bank, readings: list[Reading]) -> list[float]:
    return [e.at for e in bank.feed(readings) if e.kind == "raise" and e.code == FATAL]


def test_the_first_believed_reading_over_the_limit_trips_once() -> None:
    limiter = FatalLimiter(LIMITS)
    readings = temps([84.0, 84.9, 85.0, 86.0, 87.0])
    assert trips(limiter, readings) == [readings[2].received_at], "at the limit, once"
    assert limiter.tripped == {"water.0"}


def test_a_jump_is_not_believed_and_the_next_reading_that_holds_is() -> None:
    limiter = FatalLimiter(LIMITS)
    readings = temps([70.0, 90.0, 90.5])
    assert trips(limiter, readings) == [readings[2].received_at], "a 20 °C jump in 0.1 s is a glitch until it holds"


def test_after_a_gap_the_first_reading_is_believed() -> None:
    limiter = FatalLimiter(LIMITS)
    assert trips(limiter, temps([70.0, 90.0], dt=LIMITS.stale_after_s + 0.5)) == [1000.0 + LIMITS.stale_after_s + 0.5]


def test_sensors_trip_on_their_own_and_old_readings_are_skipped() -> None:
    limiter = FatalLimiter(LIMITS)
    assert trips(limiter, temps([86.0], sensor="water.1")) == [1000.0]
    assert trips(limiter, temps([86.0], t0=999.0)) == [999.0], "water.0 has its own history"
    assert trips(limiter, temps([86.0], t0=998.0, sensor="water.2")) == [998.0]
    assert limiter.on_reading("water.2", 86.0, 997.0) is None, "not newer than the last: skipped, as the bank does"


def test_a_lower_limit_applies_to_the_next_reading() -> None:
    limiter = FatalLimiter(LIMITS)
    assert trips(limiter, temps([80.0])) == []
    limiter.limits = HeaterLimits(warning_c=50.0, critical_c=60.0, fatal_c=70.0, disaster_c=80.0, max_target_c=45.0)
    assert trips(limiter, temps([80.5], t0=1000.1)) == [1000.1]


def test_a_trip_that_could_not_be_sent_trips_again() -> None:
    limiter = FatalLimiter(LIMITS)
    (trip,) = [t for r in temps([86.0]) if (t := limiter.on_reading(r.sensor, r.value, r.received_at))]
    limiter.failed(trip)
    assert trips(limiter, temps([86.0], t0=1000.1)) == [1000.1]


def test_fresh_is_the_banks_rule() -> None:
    assert fresh(None, 90.0, 1.0, LIMITS)
    assert fresh((80.0, 1.0), 80.0 + LIMITS.implausible_jump_c, 1.1, LIMITS)
    assert not fresh((80.0, 1.0), 80.1 + LIMITS.implausible_jump_c, 1.1, LIMITS)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(60.0, 100.0), st.sampled_from([0.05, 0.1, 0.5, 2.0])), min_size=1, max_size=40))
def test_both_channels_name_the_same_reading(steps: list[tuple[float, float]]) -> None:
    """Any reading sequence: the limiter trips on exactly the reading the bank first raises FATAL for."""
    at, readings = 1000.0, []
    for value, dt in steps:
        at += dt
        readings.append(Reading("water.0", "temperature", round(value, 1), at))
    bank_first = bank_fatal_raises(Bank(), readings)[:1]
    assert trips(FatalLimiter(LIMITS), readings) == bank_first


def test_a_reset_of_the_limiters_fatal_covers_the_readings_up_to_it() -> None:
    """The limiter tripped on water.0 and every service stopped before anyone decided water.1 and water.2.
    The bank, catching up after the reset, latches nothing from the readings it covered; past them, still over, it does."""
    readings = sorted(temps([84.0, 86.0, 86.5], sensor="water.0") + temps([84.0, 86.0, 86.5], t0=1000.03, sensor="water.1")
                      + temps([84.0, 86.0, 86.5], t0=1000.06, sensor="water.2"), key=lambda r: r.received_at)
    (trip_at,) = trips(FatalLimiter(LIMITS), [r for r in readings if r.sensor == "water.0"])[:1]
    bank = Bank()
    bank.released = {limiter_occurrence("water.0", trip_at): {"sensorData:0": len(readings)}}
    effects = [e for i, r in enumerate(readings) for e in bank.reading(r, ("sensorData:0", i))]
    assert [e for e in effects if e.code == FATAL] == [], "the operator saw this overheat: no second latch"
    past = bank.reading(Reading("water.1", "temperature", 87.0, 1000.5), ("sensorData:0", len(readings)))
    assert [(e.kind, e.code, e.subject) for e in past if e.code == FATAL] == [("raise", FATAL, "water.1")], "still over past it"


def test_a_limiter_reset_that_covers_no_readings_holds_nothing() -> None:
    readings = temps([84.0, 86.0])
    bank = Bank()
    bank.released = {limiter_occurrence("water.0", readings[1].received_at): {}}
    assert [e.at for e in (e for i, r in enumerate(readings) for e in bank.reading(r, ("sensorData:0", i)))
            if e.code == FATAL] == [readings[1].received_at]


def test_the_latch_tells_what_the_resets_of_limiter_fatals_cover() -> None:
    latch = LatchView(released={limiter_occurrence("water.0", 1.0): "r1", limiter_occurrence("water.1", 2.0): "r2",
                                "bank/overtemp-fatal/water.0@3.0": "r3"},
                      covered={"r1": {"sensorData:0": 10}, "r2": {"sensorData:0": 7, "sensorData:1": 4}, "r3": {"sensorData:0": 99}})
    assert latch.covered_by_releases_of(LIMITER_PREFIX) == {"sensorData:0": 10, "sensorData:1": 4}
    assert LatchView().covered_by_releases_of(LIMITER_PREFIX) is None
