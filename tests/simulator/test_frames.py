"""The CAN codec: round trips, and a typed error for every kind of bad frame."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.can import frames


@given(
    sensor=st.integers(0, 255),
    tenths=st.integers(-400, 1500),
    sequence=st.integers(0, 200_000),
    status=st.integers(0, 255),
)
def test_water_temp_round_trip(sensor: int, tenths: int, sequence: int, status: int) -> None:
    arbitration_id, data = frames.encode_water_temp(sensor, tenths / 10, sequence, status)
    assert arbitration_id == frames.WATER_TEMP_ID == 0x110
    assert len(data) == 8
    decoded = frames.decode(arbitration_id, data)
    assert decoded.kind is frames.FrameKind.WATER_TEMP
    assert decoded.sensor == sensor
    assert decoded.value == tenths / 10
    assert decoded.status == status
    assert decoded.sensor_fault == bool(status & 1)
    assert decoded.sequence == sequence % 65536


def test_wire_layout_is_little_endian_tenths() -> None:
    _, data = frames.encode_water_temp(2, -12.3, 0x1234, status=1)
    assert data == struct.pack("<BhBH2x", 2, -123, 1, 0x1234)


@pytest.mark.parametrize("flame", [True, False])
def test_burner_status_round_trip(flame: bool) -> None:
    arbitration_id, data = frames.encode_burner_status(flame, 65537)
    assert arbitration_id == frames.BURNER_STATUS_ID == 0x120
    decoded = frames.decode(arbitration_id, data)
    assert decoded.kind is frames.FrameKind.BURNER_STATUS
    assert decoded.flame is flame
    assert decoded.sequence == 1
    assert decoded.sensor is None and decoded.value is None


def test_unknown_id() -> None:
    with pytest.raises(frames.UnknownFrameId) as info:
        frames.decode(0x7FF, bytes(8))
    assert info.value.arbitration_id == 0x7FF
    assert isinstance(info.value, frames.FrameError)


@pytest.mark.parametrize("length", [0, 3, 7, 9])
def test_bad_length(length: int) -> None:
    with pytest.raises(frames.BadFrameLength):
        frames.decode(frames.WATER_TEMP_ID, bytes(length))
    with pytest.raises(frames.BadFrameLength):
        frames.decode(frames.BURNER_STATUS_ID, bytes(length))


@pytest.mark.parametrize("raw", [1501, 2000, 0x7FFF, -401, -0x8000])
def test_out_of_range_raw_value(raw: int) -> None:
    with pytest.raises(frames.OutOfRange):
        frames.decode(frames.WATER_TEMP_ID, struct.pack("<BhBH2x", 0, raw, 0, 1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sensor": 0, "temperature": 150.1, "sequence": 0},
        {"sensor": 0, "temperature": -40.1, "sequence": 0},
        {"sensor": 0, "temperature": float("nan"), "sequence": 0},
        {"sensor": 256, "temperature": 20.0, "sequence": 0},
        {"sensor": 0, "temperature": 20.0, "sequence": 0, "status": 256},
    ],
)
def test_encode_refuses_out_of_range(kwargs: dict[str, float]) -> None:
    with pytest.raises(frames.OutOfRange):
        frames.encode_water_temp(**kwargs)  # type: ignore[arg-type]


def test_sequence_gap_wraps() -> None:
    assert frames.sequence_gap(5, 6) == 0
    assert frames.sequence_gap(65535, 0) == 0
    assert frames.sequence_gap(65534, 1) == 2
    assert frames.sequence_gap(10, 13) == 2
