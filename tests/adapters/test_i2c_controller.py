"""The relay controller's rules, table-driven: no Kafka, no board, no clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.i2c.controller import Action, Command, Limits, Refusal, RelayController
from adapters.i2c.registers import SAFE, Relays, is_safe_combination, encode_relays

LIMITS = Limits(
    default_lease_s=3.0, max_lease_s=10.0, stale_after_s=2.0, ignition_safety_s=5.0,
    max_spark_s=4.0, max_command_age_s=2.0, max_ignition_failures=2,
)
P = Relays(power_on=True)
PV = Relays(power_on=True, gas_valve_open=True)
PVS = Relays(power_on=True, gas_valve_open=True, spark_on=True)


@dataclass(frozen=True)
class Cmd:
    at: float
    action: str
    on: bool = True
    lease_s: float = 0.0
    age_s: float = 0.0


@dataclass(frozen=True)
class Temp:
    """A temperature reading; ``watched``: DisasterDetector's beat says it decided it too."""

    at: float
    watched: bool = True


@dataclass(frozen=True)
class Flame:
    at: float
    present: bool = True


@dataclass(frozen=True)
class Tick:
    at: float


Step = Union[Cmd, Temp, Flame, Tick]


@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[Step, ...]
    outputs: Relays
    refusal: Refusal | None = None
    events: tuple[str, ...] = ()


def run(steps: tuple[Step, ...]) -> tuple[RelayController, Refusal | None, list[str]]:
    controller = RelayController(LIMITS)
    refusal: Refusal | None = None
    events: list[str] = []
    for step in steps:
        if isinstance(step, Cmd):
            decision = controller.command(Command(Action(step.action), step.on, step.lease_s, step.age_s), step.at)
            refusal = decision.refusal
        elif isinstance(step, Temp):
            controller.on_temperature(step.at)
            if step.watched:
                controller.on_detector(step.at)
        elif isinstance(step, Flame):
            controller.on_flame(step.present, step.at)
        else:
            events.extend(e.code for e in controller.tick(step.at).events)
    return controller, refusal, events


IGNITED = (Cmd(0, "power"), Temp(0), Cmd(0.1, "valve", lease_s=3), Cmd(0.2, "spark"), Flame(0.5), Cmd(0.6, "spark", on=False))

CASES = [
    # the gas train's order
    Case("power on", (Cmd(0, "power"),), P),
    Case("valve with the power cut", (Temp(0), Cmd(0, "valve")), SAFE, Refusal.POWER_CUT),
    Case("spark with the power cut", (Cmd(0, "spark"),), SAFE, Refusal.POWER_CUT),
    Case("spark without an open valve", (Cmd(0, "power"), Cmd(0.1, "spark")), P, Refusal.VALVE_CLOSED),
    Case("valve with fresh data", (Cmd(0, "power"), Temp(0), Cmd(0.1, "valve")), PV),
    Case("valve without any data", (Cmd(0, "power"), Cmd(0.1, "valve")), P, Refusal.STALE_DATA),
    Case("valve with stale data", (Cmd(0, "power"), Temp(0), Cmd(2.5, "valve")), P, Refusal.STALE_DATA),
    Case("full ignition sequence", IGNITED[:4], PVS),
    Case("late energising command", (Cmd(0, "power", age_s=2.5),), SAFE, Refusal.STALE_COMMAND),
    Case("late switch-off still obeyed", (Cmd(0, "power"), Cmd(1, "power", on=False, age_s=60)), SAFE),
    Case("lease renewal for a closed valve", (Cmd(0, "power"), Cmd(0.1, "lease", lease_s=3)), P, Refusal.VALVE_CLOSED),
    # switching off
    Case("power off drops everything", IGNITED[:4] + (Cmd(1, "power", on=False),), SAFE),
    Case("valve off stops the spark", IGNITED[:4] + (Cmd(1, "valve", on=False),), P),
    Case("lease off closes the valve", IGNITED + (Cmd(1, "lease", on=False),), P),
    Case("cutoff is the safe state", IGNITED[:4] + (Cmd(1, "cutoff"),), SAFE),
    Case("cutoff with on=False too", IGNITED[:4] + (Cmd(1, "cutoff", on=False),), SAFE),
    # the lease
    Case("lease holds before expiry", IGNITED + (Temp(2.9), Tick(3.0)), PV),
    Case("lease expires", IGNITED + (Temp(3.0), Tick(3.2)), P, events=("lease-expired",)),
    Case(
        "renewed lease holds",
        IGNITED + (Temp(1.5), Cmd(1.5, "lease", lease_s=3), Temp(3.5), Cmd(3.5, "lease", lease_s=3), Temp(4.0), Tick(4.4)),
        PV,
    ),
    Case("lease capped at the maximum (holds)", (Cmd(0, "power"), Temp(0), Cmd(0.1, "valve", lease_s=30), Flame(0.5))
         + tuple(Temp(t) for t in range(1, 11)) + (Tick(10.05),), PV),
    Case("lease capped at the maximum (expires)", (Cmd(0, "power"), Temp(0), Cmd(0.1, "valve", lease_s=30), Flame(0.5))
         + tuple(Temp(t) for t in range(1, 11)) + (Tick(10.2),), P, events=("lease-expired",)),
    Case("default lease when none asked", (Cmd(0, "power"), Temp(0), Cmd(0, "valve"), Flame(0.2), Temp(2.9), Tick(3.05)),
         P, events=("lease-expired",)),
    # data freshness
    Case("stale data closes the valve", IGNITED + (Cmd(1.5, "lease", lease_s=5), Tick(2.1)), P, events=("stale-data",)),
    Case("fresh data keeps it open", IGNITED + (Temp(1.9), Tick(2.1)), PV),
    Case("an older reading does not overwrite a newer one", IGNITED + (Temp(1.0), Temp(0.1), Tick(2.5)), PV),
    # DisasterDetector's liveness (DESIGN rule 3)
    Case("valve while the detector is silent", (Cmd(0, "power"), Temp(0, watched=False), Cmd(0.1, "valve")), P,
         Refusal.DETECTOR_SILENT),
    Case("valve while the detector is behind", (Cmd(0, "power"), Temp(0), Temp(3.5, watched=False), Cmd(3.5, "valve")), P,
         Refusal.DETECTOR_SILENT),
    Case("a silent detector closes the valve", IGNITED + (Temp(1), Cmd(1, "lease", lease_s=5), Temp(2, watched=False),
                                                          Temp(3.5, watched=False), Tick(4.05)), P, events=("detector-silent",)),
    Case("a detector within its bound keeps it open", IGNITED + (Temp(1), Cmd(1, "lease", lease_s=5), Temp(2, watched=False),
                                                                 Temp(3.5, watched=False), Tick(3.95)), PV),
    # ignition
    Case("no flame within the safety time", (Cmd(0, "power"), Temp(0), Cmd(0, "valve", lease_s=10))
         + tuple(Temp(t) for t in range(1, 6)) + (Tick(5.1),), P, events=("ignition-failed",)),
    Case("flame seen before the valve opened proves nothing", (Cmd(0, "power"), Flame(0), Temp(0), Cmd(0.1, "valve", lease_s=10))
         + tuple(Temp(t) for t in range(1, 6)) + (Tick(5.2),), P, events=("ignition-failed",)),
    Case("flame lost after ignition", IGNITED + (Temp(1.0), Flame(1.0, present=False), Tick(1.05)), P, events=("flame-failure",)),
    Case("spark bounded in time", IGNITED[:4] + (Flame(0.5), Temp(1), Cmd(1.5, "lease", lease_s=3), Temp(2), Cmd(2.5, "lease", lease_s=3), Temp(3), Cmd(3.5, "lease"), Temp(4), Tick(4.3)),
         PV, events=("spark-timeout",)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_rules(case: Case) -> None:
    controller, refusal, events = run(case.steps)
    assert controller.outputs == case.outputs
    assert refusal == case.refusal
    assert tuple(events) == case.events


def test_ignition_lockout_until_power_off() -> None:
    steps: tuple[Step, ...] = (Cmd(0, "power"),)
    for start in (0.0, 10.0):
        steps += (Temp(start), Cmd(start, "valve", lease_s=10)) + tuple(Temp(start + t) for t in range(1, 6)) + (Tick(start + 5.5),)
    steps += (Temp(20), Cmd(20, "valve"))
    controller, refusal, events = run(steps)
    assert events == ["ignition-failed", "ignition-failed"]
    assert refusal is Refusal.LOCKOUT and controller.outputs == P
    controller.command(Command(Action.POWER, False), 21)
    controller.command(Command(Action.POWER, True), 21)
    controller.on_temperature(21)
    controller.on_detector(21)
    assert controller.command(Command(Action.VALVE, True), 21).accepted


def test_force_safe_forgets_the_lease() -> None:
    controller, _, _ = run(IGNITED)
    assert controller.force_safe().changed
    assert controller.outputs == SAFE
    assert controller.lease_state(1.0)["lease_remaining_s"] is None
    controller.on_temperature(1.0)
    assert controller.command(Command(Action.LEASE, True, 3.0), 1.0).refusal is Refusal.VALVE_CLOSED


def test_lease_state_view() -> None:
    controller, _, _ = run(IGNITED)
    view = controller.lease_state(1.0)
    assert view["valve_open"] and view["ignition_proven"]
    assert view["lease_remaining_s"] == pytest.approx(2.1)
    assert view["temperature_age_s"] == pytest.approx(1.0)
    assert view["detector_age_s"] == pytest.approx(1.0)


STEP = st.one_of(
    st.builds(lambda a, on, lease, age: ("cmd", a, on, lease, age),
              st.sampled_from(list(Action)), st.booleans(), st.floats(0, 30), st.floats(0, 5)),
    st.just(("temp",)),
    st.just(("beat",)),
    st.builds(lambda p: ("flame", p), st.booleans()),
    st.just(("tick",)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1.0), STEP), max_size=60))
def test_outputs_always_a_combination_the_board_accepts(steps: list[tuple[float, tuple]]) -> None:
    """Whatever arrives in whatever order, the desired outputs are a safe combination
    and the valve is never open past its lease or its data."""
    controller = RelayController(LIMITS)
    now = 0.0
    for dt, step in steps:
        now += dt
        if step[0] == "cmd":
            controller.command(Command(step[1], step[2], step[3], step[4]), now)
        elif step[0] == "temp":
            controller.on_temperature(now)
        elif step[0] == "beat":
            controller.on_detector(now)
        elif step[0] == "flame":
            controller.on_flame(step[1], now)
        else:
            controller.tick(now)
        assert is_safe_combination(encode_relays(controller.outputs))
        if controller.outputs.spark_on:
            assert controller.outputs.gas_valve_open
        controller.tick(now)
        if controller.outputs.gas_valve_open:
            train = controller.train
            assert train.lease_until is not None and now < train.lease_until <= now + LIMITS.max_lease_s
            assert train.temperature_at is not None and now - train.temperature_at <= LIMITS.stale_after_s
            assert train.detector_at is not None and now - train.detector_at <= LIMITS.detector_silent_after_s
