"""Translation: one received CAN frame → one ``sensorData`` record, or a reason it is bad.

Pure (no bus, no Kafka): the codec in :mod:`adapters.can.frames` decides what a frame
means; this module only adds what the bus layer knows (extended and remote frames are
not ours) and names sensors the way the rest of the platform addresses them.

:func:`to_reading` is the definition of the record; :func:`encode_reading` gives the
same message bytes without building a ``faust.Record`` (about 2 µs instead of 25 µs,
which matters at 9,000 frames/s).  A test pins the two to be byte-identical.
"""

from __future__ import annotations

from faust.utils import json as faust_json

from adapters.can import frames
from adapters.can.frames import DecodedFrame, FrameError, FrameKind
from streams.records import SCHEMA_VERSION, SensorReading

BURNER_SENSOR = "burner.flame"
WATER_PREFIX = "water."

#: Reason labels for rejected frames (metrics, logs, the ``/can`` view).
REASON_UNKNOWN_ID = "unknown_id"
REASON_BAD_LENGTH = "bad_length"
REASON_OUT_OF_RANGE = "out_of_range"
REASON_REMOTE_FRAME = "remote_frame"
REASONS = (REASON_UNKNOWN_ID, REASON_BAD_LENGTH, REASON_OUT_OF_RANGE, REASON_REMOTE_FRAME)


class RemoteFrame(FrameError):
    """A remote-transmission request: carries no data, so nothing to translate."""


def decode_message(
    arbitration_id: int, data: bytes | bytearray, is_extended_id: bool = False, is_remote_frame: bool = False
) -> DecodedFrame:
    """Decode a data frame as received on the bus; raises a :class:`FrameError` subclass.

    The DBC ids are 11-bit: an extended frame with the same number is a different
    frame (another node's), so it is an unknown id, not a reading.
    """
    if is_extended_id:
        raise frames.UnknownFrameId(f"unknown CAN id 0x{arbitration_id:X} (extended)", arbitration_id)
    if is_remote_frame:
        raise RemoteFrame(f"remote frame for CAN id 0x{arbitration_id:X}", arbitration_id)
    return frames.decode(arbitration_id, data)


def reason_of(error: FrameError) -> str:
    """The metric label for a rejected frame."""
    if isinstance(error, RemoteFrame):
        return REASON_REMOTE_FRAME
    if isinstance(error, frames.BadFrameLength):
        return REASON_BAD_LENGTH
    if isinstance(error, frames.OutOfRange):
        return REASON_OUT_OF_RANGE
    return REASON_UNKNOWN_ID


def sensor_id(frame: DecodedFrame) -> str:
    """``water.<index>`` for a tank sensor, ``burner.flame`` for flame supervision."""
    if frame.kind is FrameKind.WATER_TEMP:
        return f"{WATER_PREFIX}{frame.sensor}"
    return BURNER_SENSOR


def to_reading(frame: DecodedFrame, received_at: float) -> SensorReading:
    """The ``sensorData`` record for a valid frame (``received_at``: wall-clock reception time)."""
    if frame.kind is FrameKind.WATER_TEMP:
        assert frame.value is not None
        return SensorReading(
            sensor=sensor_id(frame),
            kind="temperature",
            value=frame.value,
            unit="C",
            received_at=received_at,
            sequence=frame.sequence,
            status=frame.status,
        )
    return SensorReading(
        sensor=BURNER_SENSOR,
        kind="flame",
        value=1.0 if frame.flame else 0.0,
        unit="",
        received_at=received_at,
        sequence=frame.sequence,
        status=frame.status,
    )


def encode_reading(frame: DecodedFrame, received_at: float) -> tuple[bytes, bytes]:
    """Key and value of the ``sensorData`` message: ``to_reading(...).dumps()``, built directly.

    Every invariant the record checks holds by construction: the codec returns only
    finite, range-checked values and ``received_at`` is the reader's clock.
    """
    if frame.kind is FrameKind.WATER_TEMP:
        sensor, kind, value, unit = f"{WATER_PREFIX}{frame.sensor}", "temperature", frame.value, "C"
    else:
        sensor, kind, value, unit = BURNER_SENSOR, "flame", 1.0 if frame.flame else 0.0, ""
    body = {
        "sensor": sensor,
        "kind": kind,
        "value": float(value),  # type: ignore[arg-type]
        "unit": unit,
        "received_at": float(received_at),
        "sequence": frame.sequence,
        "status": frame.status,
        "schema_version": SCHEMA_VERSION,
    }
    return sensor.encode(), faust_json.dumps(body)
