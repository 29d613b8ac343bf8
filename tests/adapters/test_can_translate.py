"""Translation of frames into ``sensorData`` records: pure, no bus, no broker."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.can import frames
from adapters.can.frames import FrameError
from adapters.can.translate import (
    REASON_BAD_LENGTH,
    REASON_OUT_OF_RANGE,
    REASON_REMOTE_FRAME,
    REASON_UNKNOWN_ID,
    decode_message,
    encode_reading,
    reason_of,
    to_reading,
)
from streams import topics
from streams.codec import decode
from streams.records import RECORD_FOR_TOPIC, SensorReading

RECEIVED_AT = 1_800_000_000.125


@pytest.mark.parametrize(
    ("encoded", "sensor", "kind", "value", "unit", "sequence", "status"),
    [
        (frames.encode_water_temp(0, 21.5, 7), "water.0", "temperature", 21.5, "C", 7, 0),
        (frames.encode_water_temp(2, -40.0, 65535), "water.2", "temperature", -40.0, "C", 65535, 0),
        (frames.encode_water_temp(1, 150.0, 0, status=frames.STATUS_SENSOR_FAULT), "water.1", "temperature", 150.0, "C", 0, 1),
        (frames.encode_burner_status(True, 12), "burner.flame", "flame", 1.0, "", 12, 0),
        (frames.encode_burner_status(False, 13), "burner.flame", "flame", 0.0, "", 13, 0),
    ],
)
def test_valid_frames_become_readings(
    encoded: tuple[int, bytes], sensor: str, kind: str, value: float, unit: str, sequence: int, status: int
) -> None:
    reading = to_reading(decode_message(*encoded), RECEIVED_AT)
    assert (reading.sensor, reading.kind, reading.value, reading.unit) == (sensor, kind, value, unit)
    assert (reading.sequence, reading.status, reading.received_at) == (sequence, status, RECEIVED_AT)
    key, payload = encode_reading(decode_message(*encoded), RECEIVED_AT)
    assert key == sensor.encode()
    assert payload == reading.dumps()
    assert RECORD_FOR_TOPIC[topics.SENSOR_DATA.name] is SensorReading


@pytest.mark.parametrize(
    ("arbitration_id", "data", "extended", "remote", "reason"),
    [
        (0x7FF, bytes(8), False, False, REASON_UNKNOWN_ID),
        (frames.WATER_TEMP_ID, bytes(8), True, False, REASON_UNKNOWN_ID),  # 29-bit 0x110 is another node's frame
        (frames.WATER_TEMP_ID, bytes(7), False, False, REASON_BAD_LENGTH),
        (frames.BURNER_STATUS_ID, b"", False, False, REASON_BAD_LENGTH),
        (frames.WATER_TEMP_ID, struct.pack("<BhBH2x", 0, 1501, 0, 1), False, False, REASON_OUT_OF_RANGE),
        (frames.WATER_TEMP_ID, struct.pack("<BhBH2x", 1, -401, 0, 1), False, False, REASON_OUT_OF_RANGE),
        (frames.WATER_TEMP_ID, bytes(8), False, True, REASON_REMOTE_FRAME),
    ],
)
def test_bad_frames_are_refused_with_a_reason(
    arbitration_id: int, data: bytes, extended: bool, remote: bool, reason: str
) -> None:
    with pytest.raises(FrameError) as refused:
        decode_message(arbitration_id, data, is_extended_id=extended, is_remote_frame=remote)
    assert reason_of(refused.value) == reason
    assert refused.value.arbitration_id == arbitration_id


@given(
    sensor=st.integers(0, 255),
    tenths=st.integers(-400, 1500),
    sequence=st.integers(0, 65535),
    status=st.integers(0, 255),
    received_at=st.floats(1e9, 4e9, allow_nan=False),
)
def test_fast_encoding_is_byte_identical_to_the_record(
    sensor: int, tenths: int, sequence: int, status: int, received_at: float
) -> None:
    frame = decode_message(*frames.encode_water_temp(sensor, tenths / 10, sequence, status))
    key, payload = encode_reading(frame, received_at)
    assert payload == to_reading(frame, received_at).dumps()
    assert key == f"water.{sensor}".encode()
    reading = decode(payload, SensorReading)
    assert reading.value == frame.value and math.isfinite(reading.value)


@given(flame=st.booleans(), sequence=st.integers(0, 65535), received_at=st.floats(1e9, 4e9, allow_nan=False))
def test_fast_encoding_of_flame_matches_the_record(flame: bool, sequence: int, received_at: float) -> None:
    frame = decode_message(*frames.encode_burner_status(flame, sequence))
    assert encode_reading(frame, received_at)[1] == to_reading(frame, received_at).dumps()


@given(arbitration_id=st.integers(0, 0x7FF), data=st.binary(max_size=8))
def test_any_frame_is_a_reading_or_a_frame_error(arbitration_id: int, data: bytes) -> None:
    try:
        frame = decode_message(arbitration_id, data)
    except FrameError as exc:
        assert reason_of(exc) in {REASON_UNKNOWN_ID, REASON_BAD_LENGTH, REASON_OUT_OF_RANGE}
        return
    body = json.loads(encode_reading(frame, RECEIVED_AT)[1])
    assert decode(json.dumps(body).encode(), SensorReading).sensor == body["sensor"]
