"""The heating job's burner control, rule by rule, without Kafka or a clock.

Time is explicit: every reading and tick carries ``now``. The limits are the
platform's defaults (spark 1 s, ignition safety 3 s, 3 attempts, no change 0.5 °C in
6 s, lease 3 s renewed every 1 s); the job's own bounds are data wait 5 s, data
timeout 2 s and a 1 s pause between ignition attempts.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.heater_config import HeaterLimits
from streams.heating.effects import ClearAlarm, Effect, Finish, Outcome, Phase, Publish, RaiseAlarm, Relay
from streams.heating.machine import HeatingMachine, JobTiming, target_refusal

LIMITS = HeaterLimits()
SENSORS = ("water.0", "water.1", "water.2")


def feed(m: HeatingMachine, now: float, water: float | tuple[float, ...] | None = 20.0, flame: bool | None = False) -> list[Effect]:
    """One round of readings taken at ``now`` (all sensors, the flame), then a tick."""
    effects: list[Effect] = []
    if water is not None:
        values = water if isinstance(water, tuple) else (water,) * len(SENSORS)
        for sensor, value in zip(SENSORS, values):
            effects += m.on_temperature(sensor, value, now, now)
    if flame is not None:
        effects += m.on_flame(flame, now, now)
    return effects + m.tick(now)


def run(m: HeatingMachine, start: float, stop: float, step: float = 0.1, **readings: object) -> list[Effect]:
    """Readings every ``step`` s from ``start`` up to and including ``stop``."""
    effects: list[Effect] = []
    n = 0
    while start + n * step <= stop + 1e-9:
        effects += feed(m, round(start + n * step, 6), **readings)  # type: ignore[arg-type]
        n += 1
    return effects


def relays(effects: list[Effect]) -> list[tuple[str, bool]]:
    return [(e.action, e.on) for e in effects if isinstance(e, Relay)]


def of(effects: list[Effect], kind: type) -> list:
    return [e for e in effects if isinstance(e, kind)]


def started(target: float = 45.0) -> tuple[HeatingMachine, list[Effect]]:
    m = HeatingMachine(target)
    return m, m.start(0.0)


def igniting(target: float = 45.0) -> HeatingMachine:
    """A machine that passed the pre-check at t=0.1 and opened the valve (attempt 1)."""
    m, _ = started(target)
    effects = feed(m, 0.1)
    assert relays(effects) == [("power", True), ("valve", True), ("spark", True)]
    return m


def heating(target: float = 45.0, water: float = 20.0) -> HeatingMachine:
    """Flame proven at t=0.4 with the water at ``water``."""
    m = igniting(target)
    feed(m, 0.4, water=water, flame=True)
    assert m.phase is Phase.HEATING
    return m


# -- start and pre-check ----------------------------------------------------------------


@pytest.mark.parametrize(
    "target, refused",
    [
        (55.0, False),
        (54.9, False),
        (55.01, True),
        (90.0, True),
        (0.0, True),
        (-5.0, True),
        (math.nan, True),
        (math.inf, True),
        (0.5, False),
    ],
)
def test_target_above_the_limit_is_refused_at_start(target: float, refused: bool) -> None:
    m = HeatingMachine(target)
    effects = m.start(0.0)
    assert (target_refusal(target, LIMITS) is not None) is refused
    if refused:
        assert relays(effects) == [] and of(effects, RaiseAlarm) == []
        assert of(effects, Publish)[0].state == "failed"
        assert effects[-1] == m.finish and m.finish.outcome is Outcome.FAILED
    else:
        assert of(effects, RaiseAlarm) == [RaiseAlarm("heating", "INFO", f"heating the water to {target:.1f} °C")]
        assert of(effects, Publish) == [Publish("idle", "pre-check: waiting for sensor data")]
        assert m.finish is None


def test_starts_once() -> None:
    m, _ = started()
    with pytest.raises(RuntimeError):
        m.start(1.0)


@pytest.mark.parametrize(
    "water, flame, outcome",
    [
        (None, None, None),      # nothing at all
        (20.0, None, None),      # no flame reading: cannot rule out a false flame
        (None, False, None),     # no temperature
    ],
)
def test_pre_check_waits_for_data_then_fails_at_the_bound(water: float | None, flame: bool | None, outcome: None) -> None:
    m, _ = started()
    assert run(m, 0.0, 4.9, water=water, flame=flame) == []
    effects = feed(m, 5.0, water=water, flame=flame)
    assert relays(effects) == [], "gas was never let in: nothing to switch off"
    assert of(effects, RaiseAlarm)[0].code == "no-sensor-data" and of(effects, RaiseAlarm)[0].severity == "CRITICAL"
    assert effects[-2:] == [ClearAlarm("heating", m.finish.reason), m.finish]
    assert m.finish.outcome is Outcome.FAILED


def test_stale_readings_do_not_pass_the_pre_check() -> None:
    m, _ = started()
    for sensor in SENSORS:
        m.on_temperature(sensor, 20.0, -3.0, 0.0)
    m.on_flame(False, -3.0, 0.0)
    assert m.tick(0.1) == [] and m.phase is Phase.WAITING


def test_false_flame_before_the_valve_opens_locks_out() -> None:
    m, _ = started()
    effects = feed(m, 0.1, flame=True)
    assert relays(effects) == [], "the valve never opens on a false flame"
    alarm = of(effects, RaiseAlarm)
    assert [(a.code, a.severity) for a in alarm] == [("lockout", "FATAL")]
    assert "false flame" in alarm[0].message and "operator reset" in alarm[0].message
    assert m.finish.outcome is Outcome.LOCKOUT and m.phase is Phase.LOCKOUT
    assert of(effects, ClearAlarm) == [], "no alarm clearing on the way to FATAL"
    assert of(effects, Publish)[-1].state == "failed"


@pytest.mark.parametrize("water, done", [(45.0, True), (50.0, True), (44.9, False)])
def test_water_already_at_target_is_done_without_gas(water: float, done: bool) -> None:
    m, _ = started(45.0)
    effects = feed(m, 0.1, water=water)
    if done:
        assert relays(effects) == [] and m.finish.outcome is Outcome.DONE
        assert of(effects, ClearAlarm) == [ClearAlarm("heating", m.finish.reason)]
    else:
        assert relays(effects) == [("power", True), ("valve", True), ("spark", True)]


# -- ignition ---------------------------------------------------------------------------


def test_ignition_sequence_announces_then_power_valve_under_lease_spark() -> None:
    m, _ = started()
    effects = feed(m, 0.1)
    assert effects[0] == Publish("igniting", "ignition attempt 1/3")
    valve = [e for e in effects if isinstance(e, Relay) and e.action == "valve"][0]
    assert valve.on and valve.lease_s == LIMITS.lease_s
    assert m.phase is Phase.IGNITING and m.attempt == 1


@pytest.mark.parametrize("at, spark_off", [(0.1 + 0.99, False), (0.1 + 1.0, True)])
def test_spark_is_bounded(at: float, spark_off: bool) -> None:
    m = igniting()
    effects = feed(m, at)
    assert (("spark", False) in relays(effects)) is spark_off
    assert ("valve", False) not in relays(effects)


def test_spark_goes_off_once() -> None:
    m = igniting()
    effects = run(m, 0.2, 2.9)
    assert relays(effects).count(("spark", False)) == 1


def test_flame_proves_ignition_stops_the_spark_and_starts_heating() -> None:
    m = igniting()
    effects = feed(m, 0.4, flame=True)
    assert relays(effects) == [("spark", False)]
    assert of(effects, Publish)[0].state == "heating"
    assert m.phase is Phase.HEATING and m.heating_at == 0.4


def test_a_flame_reading_taken_before_the_valve_opened_proves_nothing() -> None:
    m = igniting()
    assert m.on_flame(True, 0.05, 0.3) == [] or m.phase is Phase.IGNITING
    assert m.phase is Phase.IGNITING


@pytest.mark.parametrize("at, closes", [(0.1 + 2.99, False), (0.1 + 3.0, True)])
def test_no_flame_within_the_safety_time_closes_the_valve(at: float, closes: bool) -> None:
    m = igniting()
    run(m, 0.2, at - 0.1)
    effects = feed(m, at)
    assert (("valve", False) in relays(effects)) is closes
    if closes:
        assert m.phase is Phase.PAUSE and of(effects, RaiseAlarm) == []
        assert "retrying" in of(effects, Publish)[0].reason


def test_retry_after_a_pause_without_flame_then_lockout_after_three_attempts() -> None:
    m = igniting()
    effects = run(m, 0.2, 20.0)
    valve_ons = [e for e in effects if isinstance(e, Relay) and e.action == "valve" and e.on]
    assert len(valve_ons) == 2, "attempts 2 and 3 (attempt 1 opened before the run)"
    assert m.finish.outcome is Outcome.LOCKOUT and m.attempt == LIMITS.ignition_attempts
    end = effects[-5:]
    assert relays(end) == [("valve", False), ("power", False)], "gas off before the FATAL"
    assert [(a.code, a.severity) for a in of(end, RaiseAlarm)] == [("lockout", "FATAL")]
    assert "ignition failed 3 times" in m.finish.reason


def test_ignition_attempts_timeline() -> None:
    """Open at 0.1, close at 3.1 (safety time), reopen at 4.1 (after the 1 s pause), and so on."""
    m = igniting()
    valve = [(0.1, True)]
    t = 0.2
    while m.finish is None and t < 20:
        valve += [(round(t, 1), e.on) for e in feed(m, round(t, 1)) if isinstance(e, Relay) and e.action == "valve"]
        t += 0.1
    assert valve == [(0.1, True), (3.1, False), (4.1, True), (7.1, False), (8.1, True), (11.1, False)]


def test_the_pause_waits_for_a_flame_reading_taken_with_the_gas_off() -> None:
    m = igniting()
    run(m, 0.2, 3.1)
    assert m.phase is Phase.PAUSE
    for sensor in SENSORS:
        m.on_temperature(sensor, 20.0, 4.2, 4.2)
    assert m.tick(4.2) == [], "the last flame reading (3.1) predates the second half of the pause"
    effects = m.on_flame(False, 4.2, 4.2)
    assert relays(effects) == [("power", True), ("valve", True), ("spark", True)]


def test_flame_that_stays_after_closing_the_valve_is_a_false_flame() -> None:
    m = igniting()
    run(m, 0.2, 3.1)
    effects = run(m, 3.2, 4.2, flame=True)
    assert m.finish.outcome is Outcome.LOCKOUT and "persists" in m.finish.reason
    assert ("valve", True) not in relays(effects)


# -- heating ----------------------------------------------------------------------------


def test_lease_renewed_every_second_while_gas_is_wanted() -> None:
    m = igniting()
    effects = run(m, 0.2, 0.3)
    effects += feed(m, 0.4, flame=True)
    water, t, renewals = 20.0, 0.5, []
    while t <= 6.0:
        water += 0.2
        renewals += [(t, e) for e in feed(m, round(t, 1), water=water, flame=True) if isinstance(e, Relay) and e.action == "lease"]
        t += 0.1
    assert [round(at, 1) for at, _ in renewals] == [1.1, 2.1, 3.1, 4.1, 5.1]
    assert all(r.on and r.lease_s == LIMITS.lease_s for _, r in renewals)


def test_no_renewal_while_the_valve_is_closed_between_attempts() -> None:
    m = igniting()
    effects = run(m, 0.2, 3.1)
    pause = run(m, 3.2, 4.0)
    assert m.phase is Phase.PAUSE
    assert [e for e in pause if isinstance(e, Relay)] == []
    assert sum(1 for e in effects if isinstance(e, Relay) and e.action == "lease") == 2  # 1.1, 2.1


def test_target_reached_closes_the_valve_and_clears_the_heating_alarm() -> None:
    m = heating(target=30.0)
    effects = feed(m, 0.5, water=29.9, flame=True)
    assert m.finish is None
    effects = feed(m, 0.6, water=30.0, flame=True)
    assert relays(effects) == [("valve", False), ("power", False)]
    assert of(effects, Publish)[-1].state == "done"
    assert of(effects, ClearAlarm) == [ClearAlarm("heating", m.finish.reason)]
    assert effects[-1] == m.finish and m.finish.outcome is Outcome.DONE
    assert m.tick(0.7) == [] and feed(m, 0.8, water=20.0, flame=False) == [], "nothing after the end"


def test_flame_loss_while_heating_closes_the_valve_at_once() -> None:
    m = heating()
    effects = m.on_flame(False, 0.5, 0.5)
    assert effects[0] == Relay("valve", False, reason="flame lost while heating: gas valve closed")
    assert relays(effects) == [("valve", False), ("power", False)]
    assert [(a.code, a.severity) for a in of(effects, RaiseAlarm)] == [("flame-loss", "CRITICAL")]
    assert m.finish.outcome is Outcome.FAILED


@pytest.mark.parametrize(
    "rise_per_step, fails_at",
    [
        (0.0, 6.4),     # stuck: fails exactly no_change_period_s after heating began (0.4 + 6.0)
        (0.008, 6.4),   # 0.48 °C over the 6 s window: not enough
        (0.01, None),   # 0.6 °C over the window: progress, the window starts again
    ],
)
def test_no_temperature_change_within_the_period_fails(rise_per_step: float, fails_at: float | None) -> None:
    m = heating(water=20.0)
    water, t, end = 20.0, 0.5, None
    while t <= 20.0 and end is None:
        water = round(water + rise_per_step, 6)
        effects = feed(m, round(t, 1), water=water, flame=True)
        if m.finish is not None:
            end = (round(t, 1), effects)
        t += 0.1
    if fails_at is None:
        assert end is None or m.finish.outcome is Outcome.DONE
        return
    assert end is not None and end[0] == fails_at
    effects = end[1]
    assert relays(effects) == [("valve", False), ("power", False)]
    assert [(a.code, a.severity) for a in of(effects, RaiseAlarm)] == [("no-temperature-change", "CRITICAL")]
    assert m.finish.outcome is Outcome.FAILED


def test_no_change_boundary_at_exactly_the_period() -> None:
    m = heating(water=20.0)
    assert m.progress_by == pytest.approx(6.4)
    run(m, 0.5, 6.3, flame=True)
    feed(m, 6.39, flame=True)
    assert m.finish is None
    feed(m, 6.4, flame=True)
    assert m.finish is not None and m.finish.outcome is Outcome.FAILED


@pytest.mark.parametrize("rise, progress", [(0.5, True), (0.49, False), (-0.6, False)])
def test_progress_is_a_rise_of_at_least_min_change(rise: float, progress: bool) -> None:
    m = heating(water=20.0)
    feed(m, 2.0, water=20.0 + rise, flame=True)
    assert (m.progress_by == pytest.approx(8.0)) is progress


def test_noise_below_the_threshold_is_not_progress() -> None:
    m = heating(water=20.0)
    t, sign = 0.5, 1
    while m.finish is None and t < 10:
        sign = -sign
        feed(m, round(t, 1), water=(20.0 + 0.3 * sign, 20.0 - 0.3 * sign, 20.0 + 0.4 * sign), flame=True)
        t += 0.1
    assert m.finish.outcome is Outcome.FAILED and "did not rise" in m.finish.reason


def test_one_spiking_sensor_neither_ends_the_cycle_nor_keeps_it_alive() -> None:
    m = heating(target=45.0, water=20.0)
    feed(m, 0.5, water=(99.0, 20.0, 20.1), flame=True)
    assert m.finish is None, "the median ignores one sensor at 99 °C"
    t = 0.6
    while m.finish is None and t < 10:
        feed(m, round(t, 1), water=(20.0 + 10 * t, 20.0, 20.0), flame=True)
        t += 0.1
    assert m.finish.outcome is Outcome.FAILED and m.finish.reason.startswith("water temperature did not rise")


def test_one_stuck_sensor_does_not_stop_a_rising_median() -> None:
    m = heating(target=30.0, water=20.0)
    t, water = 0.5, 20.0
    while m.finish is None and t < 20:
        water += 0.18
        feed(m, round(t, 1), water=(20.0, water, water + 0.1), flame=True)
        t += 0.1
    assert m.finish.outcome is Outcome.DONE


def test_an_older_reading_never_replaces_a_newer_one() -> None:
    m = heating(target=30.0, water=20.0)
    for sensor in SENSORS:
        m.on_temperature(sensor, 31.0, 0.5, 0.6)
    assert m.finish is not None and m.finish.outcome is Outcome.DONE
    m2 = heating(target=30.0, water=29.0)
    effects = m2.on_flame(False, 0.3, 0.5)
    assert effects == [] and m2.finish is None, "a flame reading older than the proof is no flame loss"


@pytest.mark.parametrize("silent", ["water", "flame"])
def test_lost_sensor_data_while_heating_closes_the_gas(silent: str) -> None:
    m = heating(water=20.0)
    t, water, end = 0.5, 20.0, None
    while end is None and t < 10:
        water += 0.2
        feed(m, round(t, 1), water=None if silent == "water" else water, flame=None if silent == "flame" else True)
        if m.finish is not None:
            end = round(t, 1)
        t += 0.1
    assert end == pytest.approx(2.5), "2 s after the last reading at 0.4 s (+ tick resolution)"
    assert m.finish.outcome is Outcome.FAILED and m.finish.reason.startswith(f"no {'water temperature' if silent == 'water' else 'flame signal'}")


# -- stopping from outside --------------------------------------------------------------


def test_abort_on_fatal_closes_the_valve_and_asks_for_the_cut_off() -> None:
    m = heating()
    effects = m.abort("FATAL: x", fatal=True)
    assert relays(effects) == [("valve", False), ("cutoff", True)]
    assert effects[-1] == Publish("failed", "FATAL: x") and m.phase is Phase.FAILED
    assert m.abort("again", fatal=True) == [] and m.tick(1.0) == []


def test_abort_on_a_signal_switches_the_gas_off() -> None:
    m = heating()
    effects = m.abort("stopped")
    assert relays(effects) == [("valve", False), ("power", False)]
    m2, _ = started()
    assert relays(m2.abort("stopped")) == [], "never powered: nothing to switch"
    assert HeatingMachine(40.0).abort("before start") == []


def test_limits_come_from_the_document() -> None:
    limits = replace(LIMITS, ignition_attempts=1, ignition_safety_s=2.0)
    m = HeatingMachine(40.0, limits, JobTiming(retry_pause_s=0.5))
    m.start(0.0)
    feed(m, 0.1)
    run(m, 0.2, 2.0)
    assert m.finish is None
    feed(m, 2.1)
    assert m.finish is not None and m.finish.outcome is Outcome.LOCKOUT


# -- invariants over random input -------------------------------------------------------

events = st.lists(
    st.tuples(
        st.floats(0.0, 0.6),                          # time step
        st.sampled_from(["temp", "flame", "tick"]),
        st.floats(0.0, 60.0),                         # temperature
        st.booleans(),                                # flame
        st.floats(0.0, 1.5),                          # reading age
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(target=st.floats(1.0, 60.0), script=events)
def test_invariants_hold_for_any_input(target: float, script: list[tuple[float, str, float, bool, float]]) -> None:
    m = HeatingMachine(target)
    effects = m.start(0.0)
    now, valve_open, opened_at, flame_seen, finished = 0.0, False, 0.0, False, m.finish is not None
    log: list[Effect] = list(effects)
    for step, kind, value, flame, age in script:
        now += step
        if kind == "temp":
            out = m.on_temperature(SENSORS[int(value) % 3], value, now - age, now)
        elif kind == "flame":
            out = m.on_flame(flame, now - age, now)
        else:
            out = m.tick(now)
        if finished:
            assert out == [], "nothing happens after the end"
        for effect in out:
            if isinstance(effect, Relay) and effect.action == "valve":
                valve_open, opened_at = effect.on, now
                flame_seen = False
            if isinstance(effect, Publish) and effect.state == "heating":
                flame_seen = True
            if isinstance(effect, Finish):
                finished = True
                assert not valve_open, "the valve is closed before the job ends"
        if valve_open and not flame_seen:
            assert now - opened_at < LIMITS.ignition_safety_s + 0.6 + 1e-6, "an unproven valve stays open no longer than the safety time"
        log += out
    valve_ons = [e for e in log if isinstance(e, Relay) and e.action == "valve" and e.on]
    assert len(valve_ons) <= LIMITS.ignition_attempts
    assert m.phase is not Phase.DONE or m.finish.outcome is Outcome.DONE
    if target > LIMITS.max_target_c:
        assert valve_ons == [] and m.finish.outcome is Outcome.FAILED
