"""CAN traffic of the simulator, received from this (separate) process over the remote bus."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import can
import pytest

from adapters.can import frames
from simulator import client

SimProcess = Any  # the `sim` fixture's handle (tests/simulator/conftest.py)


@pytest.fixture
def bus(sim: SimProcess) -> Iterator[can.BusABC]:
    remote = can.Bus(interface="remote", channel=sim.can_channel)
    yield remote
    remote.shutdown()


def receive(bus: can.BusABC, seconds: float) -> list[can.Message]:
    deadline = time.monotonic() + seconds
    out = []
    while (left := deadline - time.monotonic()) > 0:
        msg = bus.recv(left)
        if msg is not None:
            out.append(msg)
    return out


def test_sensors_and_burner_at_10_hz(bus: can.BusABC) -> None:
    received = receive(bus, 1.5)
    per_source: Counter[object] = Counter()
    sequences: dict[object, list[int]] = defaultdict(list)
    for msg in received:
        decoded = frames.decode(msg.arbitration_id, msg.data)
        key = decoded.sensor if decoded.kind is frames.FrameKind.WATER_TEMP else "burner"
        per_source[key] += 1
        sequences[key].append(decoded.sequence)
        if decoded.value is not None:
            assert 15.0 < decoded.value < 25.0
    assert set(per_source) == {0, 1, 2, "burner"}
    for key, count in per_source.items():
        assert 12 <= count <= 17, f"{key}: {count} frames in 1.5 s"
        seq = sequences[key]
        assert all(frames.sequence_gap(a, b) == 0 for a, b in zip(seq, seq[1:])), f"{key} lost frames: {seq}"


def test_burst_delivers_every_sequence_number(sim: SimProcess, bus: can.BusABC) -> None:
    count = 4500
    record = client.burst(sim.control_port, count=count, rate=9000, sensor=1)
    # Frames of sensor 1 sent before the burst began may still be in flight: wait for the
    # burst's own sequence numbers, not for any ``count`` of them.
    expected = {(record["first_sequence"] + i) % 65536 for i in range(count)}
    seen: set[int] = set()
    others = 0
    deadline = time.monotonic() + 10
    while not seen >= expected and time.monotonic() < deadline:
        msg = bus.recv(0.5)
        if msg is None:
            continue
        decoded = frames.decode(msg.arbitration_id, msg.data)
        if decoded.sensor == 1:
            seen.add(decoded.sequence)
        else:
            others += 1
    assert seen >= expected, f"{len(expected - seen)} of {count} burst frames lost"
    final = sim.wait_for(lambda s: not s["burst"]["running"])["burst"]
    assert final["sent"] == count and final["suppressed"] == 0
    # Paced like a real bus: never faster than the rate asked for (slower only on a loaded machine).
    assert final["finished_at"] - final["started_at"] >= 0.9 * count / 9000
    assert others > 0, "the other sensors keep sending during a burst"


def test_garbage_frames_are_rejected_by_the_codec(sim: SimProcess, bus: can.BusABC) -> None:
    client.inject(sim.control_port, "garbage_frames", rate=200)
    errors: Counter[str] = Counter()
    valid = 0
    for msg in receive(bus, 1.0):
        try:
            frames.decode(msg.arbitration_id, msg.data)
            valid += 1
        except frames.FrameError as exc:
            errors[type(exc).__name__] += 1
    assert set(errors) == {"UnknownFrameId", "BadFrameLength", "OutOfRange"}
    assert sum(errors.values()) >= 120
    assert valid >= 30, "valid frames stay interleaved with the garbage"
    client.clear(sim.control_port, "garbage_frames")


def test_bus_off_sends_error_frames_then_silence(sim: SimProcess, bus: can.BusABC) -> None:
    receive(bus, 0.2)
    client.inject(sim.control_port, "bus_off")
    received = receive(bus, 0.6)
    error_frames = [m for m in received if m.is_error_frame]
    assert error_frames, "bus-off is announced with error frames"
    last_error = max(i for i, m in enumerate(received) if m.is_error_frame)
    assert received[last_error + 1:] == [], "silence after the error frames"
    client.clear(sim.control_port, "bus_off")
    assert any(not m.is_error_frame for m in receive(bus, 0.5)), "traffic resumes after recovery"


def test_sensor_faults_change_what_sensors_report(sim: SimProcess, bus: can.BusABC) -> None:
    client.inject(sim.control_port, "sensor_dropout", sensor=0)
    client.inject(sim.control_port, "overtemp", sensor=1, value=97.5)
    client.inject(sim.control_port, "stuck_sensor", sensor=2)
    receive(bus, 0.15)
    readings: dict[int, list[float]] = defaultdict(list)
    for msg in receive(bus, 0.8):
        decoded = frames.decode(msg.arbitration_id, msg.data)
        if decoded.sensor is not None:
            readings[decoded.sensor].append(decoded.value)
    assert 0 not in readings
    assert set(readings[1]) == {97.5}
    assert len(set(readings[2])) == 1 and len(readings[2]) >= 6
    state = sim.state()
    assert {(f["fault"], f["sensor"]) for f in state["faults"]} == {
        ("sensor_dropout", 0), ("overtemp", 1), ("stuck_sensor", 2),
    }
    client.clear(sim.control_port)
    assert sim.state()["faults"] == []
