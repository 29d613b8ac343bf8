"""Bus health rules, table-driven: timed observations in, alarm raises and clears out.

Each scenario is a timeline of observations on a made-up clock; the runner assesses
every 50 ms as the adapter does every 100 ms and confirms every transition, so the
result is the alarm log the adapter would produce: each condition raised once and
cleared once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest

from adapters.can.health import (
    BAD_FRAMES,
    BUS_ERRORS,
    BUS_OFF,
    BUS_SILENT,
    BUS_UNAVAILABLE,
    SENSOR_DROPOUT,
    SEQUENCE_GAP,
    AlarmLedger,
    Assessment,
    BusHealth,
    Condition,
    HealthLimits,
    controller_details,
    error_classes,
)

SENSORS = ("water.0", "water.1", "water.2", "burner.flame")
LIMITS = HealthLimits(silence_s=2.0, dropout_s=1.0, quiet_s=2.0, expected=SENSORS)
STEP = 0.05

# SocketCAN error frames as the simulator (and a real controller) sends them.
TX_PASSIVE = (0x004, bytes([0, 0x20, 0, 0, 0, 0, 0, 0]))
RX_OVERFLOW = (0x004, bytes([0, 0x01, 0, 0, 0, 0, 0, 0]))
BUS_OFF_FRAME = (0x040, bytes(8))
RESTARTED = (0x100, bytes(8))

Event = tuple[float, Callable[[BusHealth, float], None]]


@dataclass
class Timeline:
    """Observations at given times; sequence counters per sensor like real senders."""

    events: list[Event] = field(default_factory=list)
    sequences: dict[str, int] = field(default_factory=dict)

    def traffic(self, start: float, end: float, sensors: tuple[str, ...] = SENSORS, skip: int = 0, skip_sensor: str = "") -> "Timeline":
        """10 Hz frames of ``sensors`` in [start, end), staggered like the real senders.

        ``skip`` frames of ``skip_sensor`` are lost just before its first frame here.
        """
        ticks = round((end - start) / 0.1)
        for i in range(ticks):
            for offset, sensor in enumerate(sensors):
                t = round(start + i * 0.1 + offset * 0.02, 3)
                self.events.append((t, self._frame(sensor, skip if (i == 0 and sensor == skip_sensor) else 0)))
        return self

    def _frame(self, sensor: str, skip: int) -> Callable[[BusHealth, float], None]:
        def observe(health: BusHealth, now: float) -> None:
            sequence = (self.sequences.get(sensor, -1) + 1 + skip) % 65536
            self.sequences[sensor] = sequence
            health.on_frame(now, sensor, sequence)

        return observe

    def at(self, t: float, observe: Callable[[BusHealth, float], None]) -> "Timeline":
        self.events.append((t, observe))
        return self

    def error(self, t: float, frame: tuple[int, bytes]) -> "Timeline":
        return self.at(t, lambda h, now: h.on_error_frame(now, *frame))


def run(timeline: Timeline, until: float) -> list[tuple[str, str, float]]:
    """The alarm log: (action, code[/subject], time) in order."""
    health = BusHealth(LIMITS, now=0.0)
    ledger = AlarmLedger()
    events = sorted(timeline.events, key=lambda e: e[0])
    log: list[tuple[str, str, float]] = []
    index = 0
    for tick in range(round(until / STEP) + 1):
        now = round(tick * STEP, 3)
        while index < len(events) and events[index][0] <= now:
            events[index][1](health, events[index][0])
            index += 1
        for transition in ledger.transitions(health.assess(now)):
            ledger.confirm(transition)
            c = transition.condition
            log.append((transition.action, f"{c.code}/{c.subject}" if c.subject else c.code, now))
    return log


def actions(log: list[tuple[str, str, float]]) -> list[tuple[str, str]]:
    return [(action, what) for action, what, _ in log]


def when(log: list[tuple[str, str, float]], action: str, what: str) -> float:
    return next(t for a, w, t in log if (a, w) == (action, what))


def healthy() -> Timeline:
    return Timeline().traffic(0.0, 6.0)


def bus_off() -> Timeline:
    return Timeline().traffic(0.0, 1.0).error(1.0, TX_PASSIVE).error(1.0, TX_PASSIVE).error(1.0, BUS_OFF_FRAME).traffic(3.0, 6.0)


def bus_off_then_restart_frame() -> Timeline:
    return Timeline().traffic(0.0, 1.0).error(1.0, BUS_OFF_FRAME).error(2.5, RESTARTED).traffic(2.5, 6.0)


def silence() -> Timeline:
    return Timeline().traffic(0.0, 1.0).traffic(4.0, 6.0)


def short_silence() -> Timeline:
    """The whole bus pauses for 1.5 s: less than the silence limit, and no sensor is to blame."""
    return Timeline().traffic(0.0, 1.0).traffic(2.5, 5.0)


def never_talks() -> Timeline:
    return Timeline()


def dropout() -> Timeline:
    t = Timeline().traffic(0.0, 1.0).traffic(1.0, 3.0, sensors=("water.0", "water.2", "burner.flame"))
    return t.traffic(3.0, 6.0)


def never_heard() -> Timeline:
    return Timeline().traffic(0.0, 6.0, sensors=("water.0", "water.1", "water.2"))


def gap() -> Timeline:
    return Timeline().traffic(0.0, 1.0).traffic(1.0, 6.0, skip=3, skip_sensor="water.2")


def error_frames() -> Timeline:
    return healthy().error(1.0, RX_OVERFLOW).error(1.2, RX_OVERFLOW)


def garbage() -> Timeline:
    t = healthy()
    for i in range(10):
        t.at(1.0 + i * 0.05, lambda h, now: h.on_bad_frame(now, "unknown_id"))
    return t


def lost_and_reopened() -> Timeline:
    t = Timeline().traffic(0.0, 1.0).at(1.0, lambda h, now: h.on_lost(now, "connection reset"))
    return t.at(2.0, lambda h, now: h.on_open(now)).traffic(2.2, 6.0)


def repeated_frame() -> Timeline:
    t = Timeline().traffic(0.0, 1.0)
    t.at(1.0, lambda h, now: h.on_frame(now, "water.0", t.sequences["water.0"]))  # a repeat, not loss
    return t.traffic(1.05, 4.0)


@pytest.mark.parametrize(
    ("scenario", "until", "expected", "times"),
    [
        (healthy, 6.0, [], {}),
        (bus_off, 6.0, [("raise", BUS_OFF), ("clear", BUS_OFF)], {("raise", BUS_OFF): 1.0, ("clear", BUS_OFF): 3.0}),
        (bus_off_then_restart_frame, 6.0, [("raise", BUS_OFF), ("clear", BUS_OFF)], {("clear", BUS_OFF): 2.5}),
        (silence, 6.0, [("raise", BUS_SILENT), ("clear", BUS_SILENT)], {("raise", BUS_SILENT): 3.0, ("clear", BUS_SILENT): 4.0}),
        (short_silence, 5.0, [], {}),
        (never_talks, 3.0, [("raise", BUS_SILENT)], {("raise", BUS_SILENT): 2.05}),
        (
            dropout, 6.0,
            [("raise", f"{SENSOR_DROPOUT}/water.1"), ("clear", f"{SENSOR_DROPOUT}/water.1")],
            {("raise", f"{SENSOR_DROPOUT}/water.1"): 2.0, ("clear", f"{SENSOR_DROPOUT}/water.1"): 3.0},
        ),
        (never_heard, 3.0, [("raise", f"{SENSOR_DROPOUT}/burner.flame")], {("raise", f"{SENSOR_DROPOUT}/burner.flame"): 1.05}),
        (
            gap, 6.0,
            [("raise", f"{SEQUENCE_GAP}/water.2"), ("clear", f"{SEQUENCE_GAP}/water.2")],
            {("raise", f"{SEQUENCE_GAP}/water.2"): 1.0, ("clear", f"{SEQUENCE_GAP}/water.2"): 3.05},
        ),
        (error_frames, 6.0, [("raise", BUS_ERRORS), ("clear", BUS_ERRORS)], {("clear", BUS_ERRORS): 3.25}),
        (garbage, 6.0, [("raise", BAD_FRAMES), ("clear", BAD_FRAMES)], {("raise", BAD_FRAMES): 1.0, ("clear", BAD_FRAMES): 3.5}),
        (lost_and_reopened, 6.0, [("raise", BUS_UNAVAILABLE), ("clear", BUS_UNAVAILABLE)], {("clear", BUS_UNAVAILABLE): 2.0}),
        (repeated_frame, 4.0, [], {}),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_health_rules(
    scenario: Callable[[], Timeline], until: float, expected: list[tuple[str, str]], times: dict[tuple[str, str], float]
) -> None:
    log = run(scenario(), until)
    assert actions(log) == expected
    for (action, what), t in times.items():
        assert when(log, action, what) == pytest.approx(t, abs=0.06), log


def test_a_sensor_alarm_is_held_through_a_bus_problem_then_cleared_once() -> None:
    """Dropout raised, then the bus goes off: the dropout cannot be judged, so it stays raised, not re-raised."""
    t = Timeline().traffic(0.0, 1.0).traffic(1.0, 3.0, sensors=("water.0", "water.2", "burner.flame"))
    t.error(3.0, BUS_OFF_FRAME).traffic(5.0, 6.0, sensors=("water.0", "water.2", "burner.flame")).traffic(6.0, 8.0)
    log = run(t, 8.0)
    assert actions(log) == [
        ("raise", f"{SENSOR_DROPOUT}/water.1"),
        ("raise", BUS_OFF),
        ("clear", BUS_OFF),
        ("clear", f"{SENSOR_DROPOUT}/water.1"),
    ]
    assert when(log, "clear", f"{SENSOR_DROPOUT}/water.1") == pytest.approx(6.0, abs=0.06)


def test_sequence_gap_counts_lost_frames_and_wraps() -> None:
    health = BusHealth(LIMITS)
    assert health.on_frame(0.0, "water.0", 65534) == 0
    assert health.on_frame(0.1, "water.0", 1) == 2  # 65535 and 0 are missing
    assert health.on_frame(0.2, "water.0", 2) == 0
    assert health.on_frame(0.3, "water.0", 2) == 0  # a repeat is a reset, not 65535 lost frames
    track = health.sensors["water.0"]
    assert (track.lost, track.resets, track.frames) == (2, 1, 4)


def test_a_failed_send_is_proposed_again_and_raised_once() -> None:
    ledger = AlarmLedger()
    condition = Condition(BUS_SILENT, "CRITICAL", "silent")
    holds = Assessment({condition.key: condition})
    first = ledger.transitions(holds)
    assert [t.action for t in first] == ["raise"]
    assert [t.action for t in ledger.transitions(holds)] == ["raise"]  # not confirmed: proposed again
    ledger.confirm(first[0])
    assert ledger.transitions(holds) == []
    assert ledger.transitions(Assessment({}, frozenset({BUS_SILENT}))) == []  # unknown: kept raised
    clear = ledger.transitions(Assessment({}))
    assert [t.action for t in clear] == ["clear"]
    ledger.confirm(clear[0])
    assert ledger.transitions(Assessment({})) == []


@pytest.mark.parametrize(
    ("arbitration_id", "data", "classes", "details"),
    [
        (0x004, bytes([0, 0x20]), ["controller"], ["tx_passive"]),
        (0x004, bytes([0, 0x01]), ["controller"], ["rx_overflow"]),
        (0x040, bytes(8), ["bus_off"], []),
        (0x020 | 0x080, bytes(8), ["no_ack", "bus_error"], []),
        (0x100, bytes(8), ["restarted"], []),
        (0x000, bytes(8), ["other"], []),
    ],
)
def test_error_frame_classes(arbitration_id: int, data: bytes, classes: list[str], details: list[str]) -> None:
    assert error_classes(arbitration_id) == classes
    assert controller_details(arbitration_id, data) == details
