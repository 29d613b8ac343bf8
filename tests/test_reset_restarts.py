"""`heater reset` starts again every control service the FATAL stopped, whatever moment of
its shutdown the release met: the process manager's answers are scripted here, one look at a
time, so each moment of the race is played exactly."""

from __future__ import annotations

import time
from typing import Any

import pytest

from heater import reset
from heater.catalogue import COMPONENTS
from heater.probes import DOWN, HALTED, READY, STARTING, Probe

CONTROL = [c.name for c in COMPONENTS if c.control]


class ScriptedSupervisor:
    """Process states per look (the last one repeats); records what was started."""

    def __init__(self, looks: list[dict[str, tuple[str, int | None]]]) -> None:
        self.looks = looks
        self.look = 0
        self.started: list[str] = []

    def running(self) -> bool:
        return True

    def all_info(self) -> dict[str, dict[str, Any]]:
        states = self.looks[min(self.look, len(self.looks) - 1)]
        self.look += 1
        info = {name: {"statename": "RUNNING", "exitstatus": None} for name in CONTROL}
        for name, (state, code) in states.items():
            info[name] = {"statename": "RUNNING" if name in self.started else state,
                          "exitstatus": None if name in self.started else code}
        return info

    def start(self, name: str) -> None:
        self.started.append(name)


def probes(answers: dict[str, list[str]], supervisor: ScriptedSupervisor) -> Any:
    """A probe answering, for each service, what the current look says (ready when not named)."""
    def probe(layout: Any, component: Any) -> Probe:
        states = answers.get(component.name)
        if states is None or component.name in supervisor.started:
            return Probe(component.name, READY)
        return Probe(component.name, states[min(supervisor.look - 1, len(states) - 1)])
    return probe


@pytest.mark.parametrize("on_its_way_down", [HALTED, DOWN, STARTING], ids=["halted", "web-closed", "not-answering-yet"])
def test_a_service_still_shutting_down_at_the_release_is_started_once_it_exits(
    monkeypatch: pytest.MonkeyPatch, on_its_way_down: str
) -> None:
    """The bank runs on for three looks after the release (showing ``on_its_way_down``), then exits with 3."""
    supervisor = ScriptedSupervisor([{"bank": ("RUNNING", None)}] * 3 + [{"bank": ("EXITED", 3)}])
    monkeypatch.setattr(reset, "probe", probes({"bank": [on_its_way_down]}, supervisor))
    monkeypatch.setattr(reset.time, "sleep", lambda _s: None)
    restarted = reset.restart_stayed_down(None, supervisor, time.monotonic() + 5)  # type: ignore[arg-type]
    assert restarted == ["bank"]
    assert supervisor.started == ["bank"]


def test_services_already_down_are_started_and_ready_ones_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor = ScriptedSupervisor([{"bank": ("EXITED", 3), "disaster": ("EXITED", 3), "i2c": ("EXITED", 0)}])
    monkeypatch.setattr(reset, "probe", probes({}, supervisor))
    monkeypatch.setattr(reset.time, "sleep", lambda _s: None)
    assert sorted(reset.restart_stayed_down(None, supervisor, time.monotonic() + 5)) == ["bank", "disaster"]  # type: ignore[arg-type]


def test_the_wait_ends_at_its_deadline_when_a_service_never_settles(monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor = ScriptedSupervisor([{"bank": ("RUNNING", None)}])
    monkeypatch.setattr(reset, "probe", probes({"bank": [DOWN]}, supervisor))
    began = time.monotonic()
    assert reset.restart_stayed_down(None, supervisor, began + 0.5) == []  # type: ignore[arg-type]
    assert time.monotonic() - began < 2.0


def test_a_control_service_leaving_on_a_fatal_stays_not_ready_when_the_release_comes_before_it_exits() -> None:
    """Ready again while it exits with the stay-down code, it would look settled to the reset, and
    nothing would start it after its exit; a display service halted on the FATAL is ready again."""
    from streams.app import HeaterService, ServiceKind, ServiceSpec
    from streams.latch import LatchView, Occurrence
    from streams.lifecycle import Phase
    from tests.support import run

    fatal = Occurrence("bank/overtemp-fatal/water.0@1", "bank/overtemp-fatal/water.0", "water.0 at 93 °C", 1.0)
    latched = LatchView(raised={fatal.key: fatal})
    released = LatchView(raised={fatal.key: fatal}, released={fatal.key: "reset-1"}, released_by="alice")

    control = HeaterService(ServiceSpec("leaving-control", ServiceKind.CONTROL, description="test"))
    left: list[bool] = []
    control.on_stay_down = lambda: left.append(True)
    control.mark_ready()
    run(control._on_latch_change(latched))
    run(control._on_latch_change(released))
    run(control._on_latch_change(latched))
    assert left == [True], "the stay-down exit is asked for once"
    assert control.status.phase is Phase.HALTED and not control.acting

    display = HeaterService(ServiceSpec("halted-display", ServiceKind.DISPLAY, description="test"))
    display.mark_ready()
    run(display._on_latch_change(latched))
    assert display.status.phase is Phase.HALTED
    run(display._on_latch_change(released))
    assert display.status.phase is Phase.READY


class FakeClock:
    """``time`` for the reset: sleeping moves the clock, nothing waits; records when each service was started."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def restart_with_members_answering_after(answer_after_s: float, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Every control service stayed down; the group members answer their probe ``answer_after_s``
    after their start (their imports). Returns when each service was started (fake clock)."""
    supervisor = ScriptedSupervisor([{name: ("EXITED", 3) for name in CONTROL}])
    clock = FakeClock()
    started_at: dict[str, float] = {}
    start = supervisor.start
    monkeypatch.setattr(supervisor, "start", lambda name: (started_at.setdefault(name, clock.now), start(name)))

    def probe(layout: Any, component: Any) -> Probe:
        if component.name not in started_at:
            return Probe(component.name, DOWN)
        loaded = clock.now >= started_at[component.name] + answer_after_s
        return Probe(component.name, READY if loaded else DOWN)

    monkeypatch.setattr(reset, "probe", probe)
    monkeypatch.setattr(reset, "time", clock)
    assert sorted(reset.restart_stayed_down(None, supervisor, 30.0)) == sorted(CONTROL)  # type: ignore[arg-type]
    return started_at


def test_the_edge_adapters_start_once_the_group_members_have_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Faust services first (they then wait about a second at JoinGroup), the adapters once they answer."""
    started_at = restart_with_members_answering_after(1.2, monkeypatch)
    members = {name for name in CONTROL if reset.joins_group(name)}
    assert members == {"config", "bank", "disaster"}
    assert {started_at[name] for name in members} == {0.0}
    assert all(1.2 <= started_at[name] < 1.2 + 2 * reset.POLL_S for name in ("can", "i2c")), started_at


def test_the_edge_adapters_wait_for_the_group_members_at_most_a_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member that never answers (it failed at its start) does not keep the adapters down."""
    started_at = restart_with_members_answering_after(60.0, monkeypatch)
    assert all(reset.EDGE_WAIT_MAX_S <= started_at[name] < reset.EDGE_WAIT_MAX_S + 2 * reset.POLL_S
               for name in ("can", "i2c")), started_at


def test_edge_adapters_alone_are_started_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor = ScriptedSupervisor([{"can": ("EXITED", 3), "i2c": ("EXITED", 3)}])
    clock = FakeClock()
    monkeypatch.setattr(reset, "probe", probes({}, supervisor))
    monkeypatch.setattr(reset, "time", clock)
    assert sorted(reset.restart_stayed_down(None, supervisor, 30.0)) == ["can", "i2c"]  # type: ignore[arg-type]
    assert clock.now == 0.0
