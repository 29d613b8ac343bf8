"""Codec for the heater's CAN frames, defined once in ``heater.dbc``.

The simulated hardware and the CAN adapter both go through this module, so the
wire format has exactly one definition.  It is pure (cantools + stdlib): no bus,
no Kafka, no I/O beyond loading the DBC file that sits beside it.

=============  ======  =====  ===============================================
message        id      bytes  signals
=============  ======  =====  ===============================================
WaterTemp      0x110   8      sensor u8, temperature s16 LE x0.1 degC
                              (-40..150), status u8 (bit0 sensor fault),
                              sequence u16 (per sensor, wraps)
BurnerStatus   0x120   8      flame 1 bit, sequence u16 (wraps)
=============  ======  =====  ===============================================

Every decode either returns a fully valid :class:`DecodedFrame` or raises a
:class:`FrameError` subclass, so a caller can count and skip bad frames
without ever acting on a half-understood one.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import cantools
from cantools.database.can import Database, Message

WATER_TEMP_ID = 0x110
BURNER_STATUS_ID = 0x120
FRAME_LENGTH = 8

TEMPERATURE_MIN_C = -40.0
TEMPERATURE_MAX_C = 150.0
STATUS_SENSOR_FAULT = 0x01
SEQUENCE_MODULO = 1 << 16

DBC_NAME = "heater.dbc"


class FrameKind(str, enum.Enum):
    """What a decoded frame carries."""

    WATER_TEMP = "water_temp"
    BURNER_STATUS = "burner_status"


class FrameError(ValueError):
    """A frame that must not be acted on; ``arbitration_id`` says which frame."""

    def __init__(self, message: str, arbitration_id: int) -> None:
        super().__init__(message)
        self.arbitration_id = arbitration_id


class UnknownFrameId(FrameError):
    """The id is not in the DBC (foreign node, corrupted id)."""


class BadFrameLength(FrameError):
    """The id is known but the payload is not the DBC length."""


class OutOfRange(FrameError):
    """A signal decoded (or was given) outside its documented range."""


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """One valid frame.  Fields that do not apply to ``kind`` are ``None``."""

    kind: FrameKind
    arbitration_id: int
    sequence: int
    sensor: int | None = None
    value: float | None = None
    status: int = 0
    flame: bool | None = None

    @property
    def sensor_fault(self) -> bool:
        """True when the sensor itself flags its reading as faulty."""
        return bool(self.status & STATUS_SENSOR_FAULT)


@lru_cache(maxsize=1)
def database() -> Database:
    """The parsed DBC, loaded on first use and shared afterwards."""
    text = resources.files(__package__).joinpath(DBC_NAME).read_text(encoding="utf-8")
    return cantools.database.load_string(text, database_format="dbc")


@lru_cache(maxsize=None)
def _message(arbitration_id: int) -> Message:
    try:
        return database().get_message_by_frame_id(arbitration_id)
    except KeyError:
        raise UnknownFrameId(f"unknown CAN id 0x{arbitration_id:X}", arbitration_id) from None


def decode(arbitration_id: int, data: bytes | bytearray) -> DecodedFrame:
    """Decode one frame, raising a :class:`FrameError` subclass for bad input."""
    message = _message(arbitration_id)
    if len(data) != message.length:
        raise BadFrameLength(
            f"{message.name} (0x{arbitration_id:X}) needs {message.length} bytes, got {len(data)}",
            arbitration_id,
        )
    signals: dict[str, Any] = message.decode(bytes(data), decode_choices=False, scaling=True)
    if arbitration_id == WATER_TEMP_ID:
        temperature = round(float(signals["temperature"]), 1)
        _check_temperature(temperature, arbitration_id)
        return DecodedFrame(
            kind=FrameKind.WATER_TEMP,
            arbitration_id=arbitration_id,
            sequence=int(signals["sequence"]),
            sensor=int(signals["sensor"]),
            value=temperature,
            status=int(signals["status"]),
        )
    return DecodedFrame(
        kind=FrameKind.BURNER_STATUS,
        arbitration_id=arbitration_id,
        sequence=int(signals["sequence"]),
        flame=bool(signals["flame"]),
    )


def encode_water_temp(
    sensor: int, temperature: float, sequence: int, status: int = 0
) -> tuple[int, bytes]:
    """Encode a WaterTemp frame.

    ``sequence`` is taken modulo 2**16 so a free-running counter can be passed
    as is; every other field is range-checked and raises :class:`OutOfRange`.
    """
    if not 0 <= sensor <= 0xFF:
        raise OutOfRange(f"sensor index {sensor} outside 0..255", WATER_TEMP_ID)
    if not 0 <= status <= 0xFF:
        raise OutOfRange(f"status 0x{status:X} outside 0..0xFF", WATER_TEMP_ID)
    _check_temperature(temperature, WATER_TEMP_ID)
    data = _message(WATER_TEMP_ID).encode(
        {
            "sensor": sensor,
            "temperature": round(temperature, 1),
            "status": status,
            "sequence": sequence % SEQUENCE_MODULO,
        },
        strict=True,
    )
    return WATER_TEMP_ID, bytes(data)


def encode_burner_status(flame: bool, sequence: int) -> tuple[int, bytes]:
    """Encode a BurnerStatus frame (``sequence`` modulo 2**16)."""
    data = _message(BURNER_STATUS_ID).encode(
        {"flame": 1 if flame else 0, "sequence": sequence % SEQUENCE_MODULO}, strict=True
    )
    return BURNER_STATUS_ID, bytes(data)


def sequence_gap(previous: int, current: int) -> int:
    """Frames missing between two consecutive receptions of one counter.

    0 means no loss; wrap-around at 65536 is handled.  A repeated or
    reordered frame shows up as a very large gap, which callers should treat
    as a counter reset rather than as loss.
    """
    return (current - previous - 1) % SEQUENCE_MODULO


def _check_temperature(temperature: float, arbitration_id: int) -> None:
    if not math.isfinite(temperature) or not TEMPERATURE_MIN_C <= temperature <= TEMPERATURE_MAX_C:
        raise OutOfRange(
            f"temperature {temperature} degC outside {TEMPERATURE_MIN_C}..{TEMPERATURE_MAX_C}",
            arbitration_id,
        )
