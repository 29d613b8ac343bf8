"""The disaster rules as pure functions: each rule at its boundary, noise, when the water is watched."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from fractions import Fraction
from typing import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.disaster_rules import (PRECISION, Detection, DisasterWatch, JobFacts, Rule, RuleLimits, Samples, SensorWindow,
                                   ValveFacts, WatchStatus, slope)
from streams.heater_config import HeaterLimits

T0 = 1_700_000_000.0
HZ = 10
SENSORS = ("water.0", "water.1", "water.2")
LIMITS = RuleLimits.from_heater(HeaterLimits())
GRACE = LIMITS.grace_s

Reading = tuple[str, float, float]


def series(values: Iterable[float], start: float = T0, sensors: Iterable[str] = SENSORS, offsets: dict[str, float] | None = None) -> list[Reading]:
    """One value per 0.1 s, each sent by every sensor (with an optional per-sensor offset)."""
    out: list[Reading] = []
    for i, value in enumerate(values):
        for sensor in sensors:
            out.append((sensor, value + (offsets or {}).get(sensor, 0.0), start + i / HZ))
    return out


def flat(value: float, seconds: float) -> list[float]:
    return [value] * int(seconds * HZ)


def ramp(start: float, rate: float, seconds: float) -> list[float]:
    return [start + rate * i / HZ for i in range(int(seconds * HZ))]


def heating(job: str = "j1", at: float = T0 - 0.5) -> DisasterWatch:
    watch = DisasterWatch(LIMITS)
    watch.on_job_state(job, "heating", at)
    watch.on_valve_command(True, at, lease_s=LIMITS.max_lease_s)  # long enough for these short series
    watch.on_readback(True, at)
    return watch


def closed_at(at: float) -> DisasterWatch:
    """No job; the valve was commanded closed and reads closed at ``at``."""
    watch = DisasterWatch(LIMITS)
    watch.on_valve_command(False, at)
    watch.on_readback(False, at)
    return watch


def feed(watch: DisasterWatch, readings: Iterable[Reading]) -> list[Detection]:
    found: list[Detection] = []
    for sensor, value, at in readings:
        found.extend(watch.on_reading(sensor, value, at).detections)
    return found


def rules(found: list[Detection]) -> list[str]:
    return [d.rule for d in found]


# -- over-limit -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (flat(89.9, 1), []),
        (flat(90.0, 1), []),  # at the limit is not over it
        (flat(90.1, 1), ["over-limit"]),
        (flat(60, 1) + [150.0] + flat(60, 1), []),  # one wild sample
        (flat(60, 1) + [150.0, 60.0, 60.0, 150.0] + flat(60, 1), []),  # isolated wild samples
        (flat(89.8, 1) + [90.2, 90.2], ["over-limit"]),  # two in a row are a reading, not noise
    ],
    ids=["below", "at-limit", "over", "single-spike", "isolated-spikes", "sustained"],
)
def test_over_limit(values: list[float], expected: list[str]) -> None:
    assert rules(feed(heating(), series(values))) == expected


# -- too-fast rise --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(1.8, []), (3.9, []), (4.0, []), (4.05, ["too-fast-rise"]), (8.0, ["too-fast-rise"])],
)
def test_too_fast_rise_boundary(rate: float, expected: list[str]) -> None:
    values = flat(30, 1) + ramp(30, rate, 2.5)
    assert rules(feed(heating(), series(values, sensors=["water.0"]))) == expected


def test_too_fast_rise_needs_a_second_of_data() -> None:
    """A steep jump seen over less than min_rate_span_s is not yet a rate."""
    watch = heating()
    assert feed(watch, series(ramp(30, 10.0, 0.9), sensors=["water.0"])) == []
    assert rules(feed(watch, series(ramp(39, 10.0, 0.4), start=T0 + 0.9, sensors=["water.0"]))) == ["too-fast-rise"]


def test_a_single_wild_sample_in_a_ramp_is_not_a_fast_rise() -> None:
    values = ramp(30, 1.8, 3.0)
    values[25] += 12.0
    assert feed(heating(), series(values, sensors=["water.0"])) == []


def test_slope_is_least_squares() -> None:
    assert slope([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) == pytest.approx(2.0)
    assert slope([(1.0, 1.0), (1.0, 9.0)]) == 0.0


# -- rise while the valve is closed ------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (flat(40.0, 1) + flat(42.0, 0.3), []),  # exactly the limit
        (flat(40.0, 1) + flat(42.1, 0.3), ["rise-while-closed"]),
        (ramp(40.0, 0.5, 3.0), []),  # 1.5 °C in 3 s
        (ramp(40.0, 1.0, 3.0), ["rise-while-closed"]),
        (ramp(40.0, -1.0, 3.0), []),  # cooling
        (flat(40.0, 1) + [45.0] + flat(40.0, 1), []),  # one wild sample
    ],
    ids=["at-limit", "over", "slow", "rising", "cooling", "spike"],
)
def test_rise_while_closed(after: list[float], expected: list[str]) -> None:
    assert rules(feed(closed_at(T0), series(after, start=T0 + 0.1))) == expected


def test_rise_while_closed_counts_only_from_the_closure() -> None:
    """Heating right up to the closure is not a rise "while closed"; the water then settles."""
    watch = heating()
    assert feed(watch, series(ramp(40, 1.8, 3.0))) == []
    end = T0 + 3.0
    watch.on_valve_command(False, end)
    watch.on_job_state("j1", "done", end)
    watch.on_readback(False, end + 0.05)
    assert feed(watch, series(flat(45.4, 4), start=end + 0.1)) == []


def test_stuck_valve_after_the_job_is_detected_in_the_grace_period() -> None:
    """The job ended and closed the valve, yet the water keeps rising: the runaway."""
    watch = heating()
    assert feed(watch, series(ramp(40, 1.8, 3.0))) == []
    end = T0 + 3.0
    watch.on_valve_command(False, end)
    watch.on_job_state("j1", "done", end)
    found = feed(watch, series(ramp(45.4, 1.8, 3.0), start=end + 0.1))
    assert rules(found) == ["rise-while-closed"]
    assert found[0].disaster_id == "rise-while-closed/job-j1"
    assert found[0].at - end < LIMITS.rise_window_s


def test_valve_reading_open_after_close_command_is_watched_past_the_grace() -> None:
    watch = DisasterWatch(LIMITS)
    watch.on_valve_command(True, T0 - 1, lease_s=3.0)
    watch.on_readback(True, T0 - 1)
    watch.on_valve_command(False, T0)
    later = T0 + 10 * GRACE
    assert watch.status(later).watching and watch.status(later).reason == "valve reads open"
    assert rules(feed(watch, series(ramp(40, 1.0, 3.0), start=later))) == ["rise-while-closed"]


def test_failed_job_is_watched_for_the_grace_period_only() -> None:
    watch = heating()
    watch.on_job_state("j1", "failed", T0)
    watch.on_valve_command(False, T0)
    watch.on_readback(False, T0)
    assert rules(feed(watch, series(flat(90.5, 0.5), start=T0 + GRACE - 0.5))) == ["over-limit"]
    late = heating()
    late.on_job_state("j1", "failed", T0)
    late.on_valve_command(False, T0)
    late.on_readback(False, T0)
    assert feed(late, series(flat(90.5, 0.5), start=T0 + GRACE + 0.1)) == []


# -- sensor disagreement -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "expected"), [(2.9, []), (3.0, []), (3.1, ["sensor-disagreement"]), (-3.5, ["sensor-disagreement"])]
)
def test_disagreement_during_heating(offset: float, expected: list[str]) -> None:
    readings = series(flat(50.0, 0.5), offsets={"water.2": offset})
    assert rules(feed(heating(), readings)) == expected


def test_disagreement_is_judged_only_during_a_job() -> None:
    watch = DisasterWatch(LIMITS)
    watch.on_readback(True, T0 - 1)  # valve open without a job: watched, but no disagreement rule
    assert feed(watch, series(flat(50.0, 0.5), offsets={"water.2": 5.0})) == []


def test_disagreement_ignores_a_silent_sensor() -> None:
    watch = heating()
    feed(watch, series(flat(40.0, 0.3), start=T0 - 2, sensors=["water.2"]))
    assert feed(watch, series(flat(50.0, 0.5), sensors=["water.0", "water.1"])) == [], "water.2 silent for over fresh_s"
    found = feed(watch, series(flat(40.0, 0.3), start=T0 + 0.5, sensors=["water.2"]))
    assert rules(found) == ["sensor-disagreement"] and found[0].sensor == "water.0,water.2"


# -- when the water is watched ----------------------------------------------------------------


def _watch(job: tuple[str, float] | None = None, command: tuple[bool, float, float] | None = None, readback: tuple[bool, float] | None = None) -> DisasterWatch:
    watch = DisasterWatch(LIMITS)
    if job:
        watch.on_job_state("j1", job[0], T0 + job[1])
    if command:
        watch.on_valve_command(command[0], T0 + command[1], command[2])
    if readback:
        watch.on_readback(readback[0], T0 + readback[1])
    return watch


@pytest.mark.parametrize(
    ("facts", "watching", "episode"),
    [
        ({}, False, ""),
        ({"job": ("heating", -100)}, True, "job-j1"),
        ({"job": ("igniting", -1)}, True, "job-j1"),
        ({"job": ("idle", -1)}, False, ""),
        ({"job": ("done", -2)}, True, "job-j1"),
        ({"job": ("done", -GRACE - 0.1)}, False, ""),
        ({"command": (True, -1, 3.0)}, True, f"valve-{round((T0 - 1) * 1000)}"),
        ({"command": (True, -3 - GRACE + 0.1, 3.0)}, True, f"valve-{round((T0 - GRACE + 0.1) * 1000)}"),  # expired lease: grace
        ({"command": (True, -3 - GRACE - 0.1, 3.0)}, False, ""),
        ({"command": (False, -GRACE + 0.1, 0.0)}, True, f"valve-{round((T0 - GRACE + 0.1) * 1000)}"),
        ({"command": (False, -GRACE - 0.1, 0.0)}, False, ""),
        ({"readback": (True, -3600)}, True, f"valve-{round((T0 - 3600) * 1000)}"),
        ({"readback": (False, -1)}, True, f"valve-{round((T0 - 1) * 1000)}"),
        ({"readback": (False, -GRACE - 1)}, False, ""),
        ({"job": ("done", -2), "readback": (True, -60)}, True, "job-j1"),
        ({"job": ("done", -60), "readback": (True, -60)}, True, f"valve-{round((T0 - 60) * 1000)}"),
    ],
    ids=[
        "nothing", "heating", "igniting", "idle", "done-in-grace", "done-after-grace", "commanded-open",
        "lease-expired-in-grace", "lease-expired-after-grace", "closed-in-grace", "closed-after-grace",
        "reads-open", "reads-closed-recently", "reads-closed-long-ago", "job-grace-names-episode", "stuck-open",
    ],
)
def test_watching(facts: dict, watching: bool, episode: str) -> None:
    status = _watch(**facts).status(T0)
    assert (status.watching, status.episode) == (watching, episode)


def test_nothing_is_judged_while_not_watched() -> None:
    """Out of scope here: the bank manager alarms on over-temperature at any time."""
    watch = closed_at(T0 - GRACE - 1)
    assert feed(watch, series(flat(95.0, 1) + ramp(95, 8.0, 2))) == []


def test_lease_renewals_keep_the_valve_open_and_one_episode() -> None:
    watch = DisasterWatch(LIMITS)
    for i in range(10):
        watch.on_valve_command(True, T0 + i, lease_s=3.0)
    assert watch.valve.command_since == T0
    assert watch.status(T0 + 11).episode == f"valve-{round(T0 * 1000)}"
    assert watch.status(T0 + 12.5).reason == "grace after the valve closed"
    assert watch.valve.closed_since(T0 + 12.5) == T0 + 12


def test_lease_commands_renew_an_open_valve_and_never_reopen_a_closed_one() -> None:
    watch = DisasterWatch(LIMITS)
    watch.on_valve_command(True, T0, lease_s=3.0)
    watch.on_lease_renewal(T0 + 2, 3.0)
    assert watch.valve.commanded_open(T0 + 4.5) and watch.valve.command_since == T0
    assert not watch.valve.commanded_open(T0 + 5.1)
    watch.on_lease_renewal(T0 + 6, 3.0)
    assert not watch.valve.commanded_open(T0 + 6), "a renewal after expiry does not reopen"
    assert watch.valve.closed_since(T0 + 6) == T0 + 5


@pytest.mark.parametrize(("requested", "granted"), [(0.0, 3.0), (2.0, 2.0), (30.0, 10.0)])
def test_leases_are_granted_as_the_adapter_grants_them(requested: float, granted: float) -> None:
    watch = DisasterWatch(LIMITS)
    watch.on_valve_command(True, T0, lease_s=requested)
    assert watch.valve.lease_s == granted


def test_stale_records_do_not_override_newer_ones() -> None:
    watch = heating(at=T0)
    watch.on_job_state("j1", "done", T0 - 5)
    watch.on_valve_command(False, T0 - 5)
    watch.on_readback(False, T0 - 5)
    assert watch.job == JobFacts("j1", "heating", T0, None)
    assert watch.valve.commanded_open(T0) and watch.valve.readback_open


# -- one disaster per episode; replays ------------------------------------------------------------


def test_one_detection_per_rule_and_episode() -> None:
    watch = heating("j1")
    readings = series(flat(95.0, 5))
    found = feed(watch, readings)
    assert [d.disaster_id for d in found] == ["over-limit/job-j1"]
    assert feed(watch, readings) == [], "a replay of the same readings"
    restored = DisasterWatch(LIMITS, job=watch.job, valve=watch.valve, windows={}, detections=watch.detections.values())
    assert feed(restored, series(flat(95.0, 1), start=T0 + 6)) == [], "restored after a restart"
    restored.on_job_state("j2", "heating", T0 + 10)
    assert [d.disaster_id for d in feed(restored, series(flat(95.0, 1), start=T0 + 10))] == ["over-limit/job-j2"]


def feed_after(watch: DisasterWatch, readings: Iterable[Reading], released: dict[tuple[str, float], dict[str, int]],
               first_offset: int = 100) -> list[Detection]:
    """Feed readings (at offsets from ``first_offset``) while the detections ``released`` (id, time) have had
    their FATAL released by a reset covering the given input positions."""
    found: list[Detection] = []
    for offset, (sensor, value, at) in enumerate(readings, start=first_offset):
        outcome = watch.on_reading(sensor, value, at, lambda d: released.get((d.disaster_id, d.at)), ("sensorData:0", offset))
        found += outcome.detections
    return found


def test_a_disaster_that_outlives_the_reset_is_found_again() -> None:
    """The reset released the first report's FATAL; the same episode still over the limit past the readings
    the reset covered is reported again, once."""
    watch = heating("j1")
    (first,) = feed(watch, series(flat(95.0, 1)))
    covered = series(flat(95.0, 1), start=T0 + 1)  # offsets 100.., all before where the input ended at the reset
    released = {(first.disaster_id, first.at): {"sensorData:0": 100 + len(covered)}}
    assert feed_after(watch, covered, released) == [], "readings the reset covered"
    (again,) = feed_after(watch, series(flat(95.0, 1), start=T0 + 2), released, first_offset=100 + len(covered))
    assert (again.disaster_id, again.at > first.at) == (first.disaster_id, True), "a new occurrence: a later reading"
    assert feed_after(watch, series(flat(95.0, 1), start=T0 + 3), released, first_offset=200) == [], \
        "reported once more, not at every reading"


def test_a_reset_that_names_other_detections_changes_nothing() -> None:
    watch = heating("j1")
    other = {("over-limit/job-j0", T0 + 50.0): {}}
    assert rules(feed_after(watch, series(flat(95.0, 2)), other)) == ["over-limit"]
    assert feed_after(watch, series(flat(95.0, 2), start=T0 + 3), other) == [], "its FATAL still holds: not reported again"


def test_several_rules_can_fire_in_one_episode() -> None:
    watch = heating()
    found = feed(watch, series(flat(60, 1) + ramp(60, 20.0, 2.0)))
    assert set(rules(found)) == {"too-fast-rise", "over-limit"}
    assert len(found) == 2


def test_detection_carries_the_evidence() -> None:
    (found,) = feed(heating(), series(flat(91.0, 0.5), sensors=["water.1"]))
    assert (found.rule, found.sensor, found.value, found.limit, found.episode) == ("over-limit", "water.1", 91.0, 90.0, "job-j1")
    assert found.at == pytest.approx(T0 + 0.4)
    assert "91.0 °C" in found.message and "heating job j1" in found.message


# -- windows --------------------------------------------------------------------------------------


def test_window_keeps_history_and_drops_repeats() -> None:
    window = SensorWindow("water.0")
    for i in range(100):
        window = window.add(T0 + i / HZ, 20.0 + i, LIMITS.history_s) or window
    assert window.samples[-1] == (T0 + 9.9, 119.0)
    assert window.samples[0][0] >= T0 + 9.9 - LIMITS.history_s
    assert window.add(T0 + 9.9, 50.0, LIMITS.history_s) is None, "same time again: a replay"
    assert window.add(T0, 50.0, LIMITS.history_s) is None, "older than the window"
    assert window.add(T0 + 9.85, 118.5, LIMITS.history_s).samples[-2] == (T0 + 9.85, 118.5), "late samples are sorted in"


def window_by_sorting(window: SensorWindow, at: float, value: float, keep_s: float) -> SensorWindow | None:
    """What a window is, said the plain way: every sample sorted in, the old ones dropped."""
    if window.samples and (at < window.samples[-1][0] - keep_s or any(t == at for t, _ in window.samples)):
        return None
    merged = sorted((*window.samples, (at, value)))
    return SensorWindow(window.sensor, tuple(s for s in merged if s[0] >= merged[-1][0] - keep_s))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(-40, 200), st.floats(-20.0, 120.0, allow_nan=False)),
                max_size=150),
       st.sampled_from([0.5, 1.0, 4.0]))
def test_window_is_the_sorted_recent_samples_whatever_the_arrival_order(
        arrivals: list[tuple[int, int, float]], keep_s: float) -> None:
    """Late, repeated and stale samples, windows of any length, a sample added to an older window
    than the newest (windows share their samples): each as sorting everything in would have it."""
    windows = [SensorWindow("water.0")]
    for pick, tick, value in arrivals:
        window = windows[-1] if pick % 3 else windows[pick % len(windows)]
        at = T0 + tick / 20
        expected = window_by_sorting(SensorWindow("water.0", tuple(window.samples)), at, value, keep_s)
        added = window.add(at, value, keep_s)
        assert added == expected
        if added is not None:
            assert added.samples[-3:] == expected.samples[-3:] and added.newest == expected.newest
            windows.append(added)
    rebuilt = [SensorWindow("water.0")]
    for pick, tick, value in arrivals:  # the same windows again, each from a copy: nothing shared
        window = rebuilt[-1] if pick % 3 else rebuilt[pick % len(rebuilt)]
        added = window_by_sorting(SensorWindow("water.0", tuple(window.samples)), T0 + tick / 20, value, keep_s)
        if added is not None:
            rebuilt.append(added)
    assert windows == rebuilt, "adding to a window leaves every other window as it was"


def test_other_sensors_are_ignored() -> None:
    watch = heating()
    outcome = watch.on_reading("burner.flame", 1.0, T0)
    assert outcome.window is None and watch.windows == {}


# -- realistic noise ------------------------------------------------------------------------------


def noisy_cycle(rng: random.Random, watch: DisasterWatch, start_c: float, target_c: float, rate: float) -> list[Detection]:
    """A normal heating cycle with the simulator's noise: heat to the target, close, cool a little."""
    offsets = {"water.0": 0.0, "water.1": 0.1, "water.2": -0.1}
    found: list[Detection] = []
    t, water = T0, start_c
    watch.on_job_state("n", "igniting", t - 1)
    watch.on_valve_command(True, t - 1, 3.0)
    watch.on_readback(True, t - 1)
    watch.on_job_state("n", "heating", t)
    while water < target_c:
        if round((t - T0) * HZ) % HZ == 0:
            watch.on_lease_renewal(t, 3.0)  # the job renews its lease every second
        for sensor, offset in offsets.items():
            found.extend(watch.on_reading(sensor, round(water + offset + rng.gauss(0, 0.05), 1), t).detections)
        t, water = t + 1 / HZ, water + rate / HZ
    watch.on_valve_command(False, t)
    watch.on_job_state("n", "done", t)
    watch.on_readback(False, t + 0.05)
    for _ in range(int(GRACE * HZ) + 10):
        for sensor, offset in offsets.items():
            found.extend(watch.on_reading(sensor, round(water + offset + rng.gauss(0, 0.05), 1), t).detections)
        t, water = t + 1 / HZ, water - 0.01 * (water - 20) / HZ
    return found


@pytest.mark.parametrize("seed", range(5))
def test_a_normal_noisy_heating_cycle_is_not_a_disaster(seed: int) -> None:
    assert noisy_cycle(random.Random(seed), DisasterWatch(LIMITS), 20.0, 55.0, 1.8) == []


@settings(max_examples=60, deadline=None)
@given(position=st.integers(min_value=0, max_value=59), spike=st.floats(min_value=-60, max_value=100), sensor=st.sampled_from(SENSORS))
def test_one_wild_sample_anywhere_is_never_a_disaster(position: int, spike: float, sensor: str) -> None:
    values = ramp(40.0, 1.8, 6.0)
    readings = series(values)
    index = next(i for i, r in enumerate(readings) if r[0] == sensor and r[2] == pytest.approx(T0 + position / HZ))
    readings[index] = (sensor, readings[index][1] + spike, readings[index][2])
    assert feed(heating(), readings) == []


def test_valve_facts_closed_since_is_the_earliest_closed_source() -> None:
    valve = ValveFacts().with_readback(False, T0 - 100).with_command(True, T0 - 1, 3.0)
    assert valve.closed_since(T0) == T0 - 100, "reads closed although commanded open"
    valve = valve.with_readback(True, T0 - 0.9).with_command(False, T0)
    assert valve.closed_since(T0 + 1) == T0 and valve.last_closure(T0 + 1) == T0


# -- the rules by a full scan of the window: the reference the incremental evaluation must match ----------


def filtered_by_scan(window: SensorWindow) -> list[tuple[float, float]]:
    """Every filtered sample of the window, filtered again from scratch."""
    samples = tuple(window.samples)
    values = [v for _, v in samples]
    return [(samples[i][0], max(min(values[i - 2], values[i - 1]), min(max(values[i - 2], values[i - 1]), values[i])))
            for i in range(2, len(values))]


class FullScanWatch(DisasterWatch):
    """The watch with its rules evaluated by their definitions, the plain way: each reading re-filters the
    whole window, then scans it for the rate's and the rise's samples."""

    def _evaluate(self, window: SensorWindow, now: float, status: WatchStatus,
                  fresh: Callable[[str], bool] = lambda _: True) -> list[Detection]:
        filtered = filtered_by_scan(window)
        found = [self._scan_over_limit(window.sensor, filtered, now, status), self._scan_too_fast(window.sensor, filtered, now, status)]
        if status.valve_closed and status.closed_since is not None:
            found.append(self._scan_rise_while_closed(window.sensor, filtered, now, status, status.closed_since))
        if self.job is not None and self.job.running:
            found.append(self._disagreement(now, status))
        return [d for d in found if d is not None and fresh(d.disaster_id)]

    def _scan_over_limit(self, sensor: str, filtered: list[tuple[float, float]], now: float, status: WatchStatus) -> Detection | None:
        limit = self.limits.disaster_c
        if not filtered or not round(value := filtered[-1][1], PRECISION) > limit:
            return None
        message = f"{sensor} at {value:.1f} °C is over the disaster limit {limit:.1f} °C ({status.reason})"
        return self._detection(Rule.OVER_LIMIT, status, sensor, message, value, limit, now)

    def _scan_too_fast(self, sensor: str, filtered: list[tuple[float, float]], now: float, status: WatchStatus) -> Detection | None:
        recent = [s for s in filtered if s[0] >= now - self.limits.rate_window_s]
        if len(recent) < self.limits.min_rate_samples or round(recent[-1][0] - recent[0][0], PRECISION) < self.limits.min_rate_span_s:
            return None
        rate, limit = slope(recent), self.limits.max_rise_c_per_s
        if not round(rate, PRECISION) > limit:
            return None
        message = f"{sensor} rising {rate:.2f} °C/s, faster than {limit:.2f} °C/s ({status.reason})"
        return self._detection(Rule.TOO_FAST_RISE, status, sensor, message, rate, limit, now)

    def _scan_rise_while_closed(self, sensor: str, filtered: list[tuple[float, float]], now: float, status: WatchStatus,
                                closed_since: float) -> Detection | None:
        start = max(now - self.limits.rise_window_s, closed_since)
        since = [v for t, v in filtered if t >= start]
        if len(since) < 2:
            return None
        rise, limit = since[-1] - min(since), self.limits.rise_while_closed_c
        if not round(rise, PRECISION) > limit:
            return None
        message = (
            f"{sensor} rose {rise:.1f} °C within {self.limits.rise_window_s:.0f} s with the gas valve closed "
            f"(limit {limit:.1f} °C): heat without gas, the valve may be stuck open ({status.reason})"
        )
        return self._detection(Rule.RISE_WHILE_CLOSED, status, sensor, message, rise, limit, now)


class Logged(DisasterWatch):
    """A watch keeping every evaluation's detections, reported or not: the rules' full verdicts."""

    def __init__(self, limits: RuleLimits) -> None:
        super().__init__(limits)
        self.log: list[list[Detection]] = []

    def _evaluate(self, window: SensorWindow, now: float, status: WatchStatus,
                  fresh: Callable[[str], bool] = lambda _: True) -> list[Detection]:
        self.log.append(super()._evaluate(window, now, status))
        return super()._evaluate(window, now, status, fresh)


class LoggedWatch(Logged):
    """The watch, logged."""


class LoggedScan(Logged, FullScanWatch):
    """The full-scan reference, logged."""


JOB_STATES = ("igniting", "heating", "done", "failed", "idle")
#: Time between readings: a quiet sensor, a busy bus, a flooding sensor.
STEPS = (0.1, 0.02, 0.004, 0.0011)
#: Rises, °C/s: none, a normal heating, and around the too-fast limit (4.0 °C/s) and its roundings.
RATES = (0.0, 1.8, 3.9995, 4.0, 4.0005, 4.005, 4.2, 8.0, -3.0)
#: The rules with short windows: the same code, with windows many times longer than the rules' stretches.
SHORT = replace(LIMITS, rate_window_s=0.3, min_rate_span_s=0.2, rise_window_s=0.6, grace_extra_s=1.0)

Op = tuple[int, int, float]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 10**6), st.floats(-0.3, 0.3, allow_nan=False)),
                min_size=20, max_size=300),
       st.sampled_from(STEPS), st.sampled_from(RATES), st.sampled_from([40.0, 85.0, 89.5]),
       st.sampled_from([LIMITS, SHORT]))
def test_rules_judge_as_a_full_scan_of_the_window_would(ops: list[Op], step: float, rate: float, base: float,
                                                        limits: RuleLimits) -> None:
    """Random heating jobs, valve commands and readbacks, readings — in time, in bursts, late, repeated, stale,
    noisy or on an exact ramp, dipping, spiking across the limits — judged by the watch and by the full-scan
    reference: every evaluation finds the same detections (ids, messages, values), and so does every older
    window judged again, its view no longer at its list's end, and every window a sample was added to after
    it had been superseded."""
    new, ref = LoggedWatch(limits), LoggedScan(limits)
    history: list[SensorWindow] = []
    now = T0
    for kind, x, y in ops:
        if kind == 0:
            job, state = "ab"[x % 2], JOB_STATES[x % 5]
            assert new.on_job_state(job, state, now + y) == ref.on_job_state(job, state, now + y)
        elif kind == 1:
            assert new.on_valve_command(x % 2 == 0, now, x % 4) == ref.on_valve_command(x % 2 == 0, now, x % 4)
        elif kind == 2:
            assert new.on_lease_renewal(now, x % 4) == ref.on_lease_renewal(now, x % 4)
        elif kind == 3:
            assert new.on_readback(x % 2 == 0, now) == ref.on_readback(x % 2 == 0, now)
        elif kind == 4 and history:  # a superseded window becomes the sensor's again (samples are added to it)
            old = history[x % len(history)]
            new.windows[old.sensor], ref.windows[old.sensor] = old, SensorWindow(old.sensor, tuple(old.samples))
        elif kind == 5 and history:  # an older view judged again, after its list grew
            old = history[x % len(history)]
            at = old.newest or now
            status = new.status(at)
            assert status == ref.status(at)
            assert DisasterWatch._evaluate(new, old, at, status) == FullScanWatch._evaluate(ref, old, at, status)
        elif kind >= 6:
            sensor = "water.1" if x % 7 == 0 else "water.0"
            for n in range(1 + x % 40 if x % 5 == 0 else 1):  # a burst
                if x % 13 == 0 and n == 0:
                    at = now - (x % 50) * 0.1  # late: sorted in, or stale
                elif x % 17 == 0 and n == 0:
                    at = now  # a repeat
                else:
                    now += step * (1 + x % 3)
                    at = now
                noise = 0.0 if x % 4 == 0 else y * (n % 3 - 1)
                dip = -2.5 if x % 11 == 0 else 0.0  # a whole burst low: a minimum inside the window, then a rise
                value = base + rate * (at - T0) + noise + dip + (15.0 if x % 29 == 0 and n == 0 else 0.0)
                got, want = new.on_reading(sensor, value, at), ref.on_reading(sensor, value, at)
                assert got == want
                if got.window is not None:
                    history.append(got.window)
        assert new.log == ref.log
    assert new.detections == ref.detections and new.windows == ref.windows


def test_a_flooded_window_is_judged_as_a_full_scan_would() -> None:
    """A sensor at 9,000 readings/s ramping through the too-fast limit (right at its rounding) and over the
    disaster limit with the valve closed: tens of thousands of samples per window. At each reading that
    found a disaster, and now and then (a full scan of each would take minutes), every rule's verdict is
    the full scan's."""
    new, ref = DisasterWatch(LIMITS), FullScanWatch(LIMITS)
    new.on_job_state("j1", "heating", T0 - 1)
    new.on_readback(False, T0 - 1)
    ref.job, ref.valve, ref.windows = new.job, new.valve, new.windows
    rng = random.Random(7)
    compared = 0
    for i in range(45_000):
        at = T0 + i / 9000
        outcome = new.on_reading("water.0", 80.0 + 4.0005 * (at - T0) + rng.choice((-0.1, 0.0, 0.1)), at)
        if outcome.detections or i % 997 == 0 or i > 44_995:
            assert outcome.window is not None
            status = new.status(at)
            verdict = DisasterWatch._evaluate(new, outcome.window, at, status)
            assert verdict == FullScanWatch._evaluate(ref, outcome.window, at, status)
            assert set(outcome.detections) <= set(verdict)
            compared += 1
    assert len(new.windows["water.0"].samples) > 35_000 and compared > 45
    assert {d.rule for d in new.detections.values()} == {"too-fast-rise", "over-limit", "rise-while-closed"}


def exact_slope(samples: list[tuple[float, float]]) -> Fraction:
    n = len(samples)
    ts, vs = [Fraction(t) for t, _ in samples], [Fraction(v) for _, v in samples]
    mt, mv = sum(ts) / n, sum(vs) / n
    return sum((t - mt) * (v - mv) for t, v in zip(ts, vs)) / sum((t - mt) ** 2 for t in ts)


def float_slope(samples: list[tuple[float, float]]) -> float:
    """The least-squares slope as float sums take it."""
    n = len(samples)
    mean_t, mean_v = sum(t for t, _ in samples) / n, sum(v for _, v in samples) / n
    return sum((t - mean_t) * (v - mean_v) for t, v in samples) / sum((t - mean_t) ** 2 for t, _ in samples)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 200), st.floats(-5.0, 5.0, allow_nan=False)), min_size=3, max_size=400),
       st.sampled_from([0.0, 1.0, T0, 4.2e9]), st.sampled_from([1e-4, 1 / 9000, 0.01, 0.1]),
       st.sampled_from([0.0, 45.3, 4.0e3, -20.0]), st.integers(0, 50))
def test_the_slope_is_exact_however_the_sums_are_taken(steps: list[tuple[int, float]], origin: float, tick: float,
                                                      level: float, drop: int) -> None:
    """:func:`slope` is the exact least-squares slope, rounded once, and so are the sums a window slides along as
    samples come and go (taken in another order, at other scales); float sums of epoch times are not."""
    items, at = [], origin
    for ticks, value in steps:
        at += ticks * tick
        items.append((at, level + value))
    samples = Samples(items)
    run = samples.filtered_since(items[min(drop, len(items) - 1)][0])
    if len(run) < 2 or run.span <= 0:
        return
    exact = float(exact_slope(run.samples()))
    assert slope(run.samples()) == exact
    assert run.slope() == exact, "the list's sums, from the start"
    later = samples.filtered_since(items[min(drop + 3, len(items) - 1)][0])
    if len(later) >= 2 and later.span > 0:
        assert later.slope() == float(exact_slope(later.samples())), "the sums slid forward"
        assert run.slope() == exact, "and back"


def test_float_sums_of_a_flood_are_not_exact_and_the_slope_is() -> None:
    """The rate window of a flooding sensor (13,500 samples at epoch times): float sums miss the exact slope; the
    rule's slope does not, whether a window's sums or a pass take it. A value that is not a number makes no slope."""
    rng = random.Random(3)
    items = [(T0 + 1e6 + i / 9000, 50.0 + 4.0 * i / 9000 + rng.gauss(0, 0.05)) for i in range(13_500)]
    exact = float(exact_slope(items))
    assert float_slope(items) != exact
    samples = Samples(items)
    assert slope(items) == exact
    run = samples.filtered_since(items[0][0])
    assert run.slope() == float(exact_slope(run.samples())) == slope(run.samples())
    assert math.isnan(slope([(T0, 1.0), (T0 + 1, math.nan)])) and math.isnan(slope([(T0, 1.0), (T0 + 1, math.inf)]))
