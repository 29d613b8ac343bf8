"""Decoding a topic's raw bytes into its record, with a reason for every refusal.

Agents consume raw bytes and decode here, so a bad message is a value to handle
(dead-letter it and go on), never an exception inside Faust's deserializer that
would stop the stream. Pure: no Kafka, no Faust app.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import types
import typing
from typing import Any, TypeVar

from faust.utils import json as faust_json

from streams.records import HeaterRecord, RecordInvalid

#: Larger messages are refused before parsing: no record of ours comes near this.
MAX_MESSAGE_BYTES = 64 * 1024

R = TypeVar("R", bound=HeaterRecord)


class DecodeError(ValueError):
    """A message could not become a record; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode(payload: bytes | None, record_type: type[R]) -> R:
    """Decode ``payload`` as ``record_type`` or raise :class:`DecodeError`."""
    if payload is None:
        raise DecodeError("empty", "message has no value")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise DecodeError("oversized", f"{len(payload)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        # UTF-8 only (so the platform watch's byte pre-filter sees every FATAL); no NaN or
        # infinities; nothing deeper or longer than the parser can take.
        data = json.loads(bytes(payload).decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
        faust_json.dumps(data)  # lone surrogates and integers beyond 64 bits could never be sent on
    except (ValueError, TypeError, RecursionError) as exc:
        raise DecodeError("malformed", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DecodeError("malformed", f"expected a JSON object, got {type(data).__name__}")
    if "schema_version" not in data:
        raise DecodeError("schema_version", "schema_version is missing")
    version = data["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version not in record_type.SUPPORTED_VERSIONS:
        raise DecodeError(
            "schema_version",
            f"{record_type.__name__} schema_version {version!r} not in {sorted(record_type.SUPPORTED_VERSIONS)}",
        )
    unknown = set(data) - set(record_type._options.fields)
    if unknown:
        raise DecodeError("invalid", f"unknown fields {sorted(unknown)}")
    _check_types(data, record_type)
    try:
        return record_type.from_data(data)
    except RecordInvalid as exc:
        raise DecodeError("invalid", str(exc)) from None
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
        raise DecodeError("invalid", f"{type(exc).__name__}: {exc}") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


#: JSON types a field of each declared type accepts (bool is no int or float here).
_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,), float: (int, float), int: (int,), bool: (bool,), dict: (dict,), list: (list,),
}


@functools.lru_cache(maxsize=None)
def _field_types(record_type: type[HeaterRecord]) -> dict[str, tuple[tuple[type, ...], bool]]:
    """Field → the JSON types it accepts, and whether it holds only strings (``dict[str, str]``, ``list[str]``)."""
    found: dict[str, tuple[tuple[type, ...], bool]] = {}
    for name, declared in typing.get_type_hints(record_type).items():
        optional = typing.get_origin(declared) in (typing.Union, types.UnionType) and type(None) in typing.get_args(declared)
        if optional:
            (declared,) = [arg for arg in typing.get_args(declared) if arg is not type(None)]
        origin = typing.get_origin(declared) or declared
        if isinstance(origin, type) and issubclass(origin, enum.Enum):
            origin = str
        if origin in _JSON_TYPES:
            allowed = _JSON_TYPES[origin] + ((type(None),) if optional else ())
            found[name] = (allowed, typing.get_args(declared) in ((str, str), (str,)))
    return found


def _check_types(data: dict[str, Any], record_type: type[HeaterRecord]) -> None:
    """Refuse a value of the wrong JSON type: the record's coercion would change its meaning.

    ``bool("false")`` is True and ``str(None)`` is ``"None"``: a valve command with
    ``"on": "false"`` must be refused, not read as "on".
    """
    types = _field_types(record_type)
    for name, value in data.items():
        if name not in types:
            continue
        allowed, string_map = types[name]
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            expected = [t.__name__ for t in allowed if t is not type(None)][-1]
            raise DecodeError("invalid", f"{name} must be {expected}, got {type(value).__name__}")
        if string_map and isinstance(value, dict) and not all(isinstance(v, str) for v in value.values()):
            raise DecodeError("invalid", f"{name} must map strings to strings")
        if string_map and isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise DecodeError("invalid", f"{name} must be a list of strings")


def encode(record: HeaterRecord) -> bytes:
    """The bytes a record travels as (the inverse of :func:`decode`)."""
    return record.dumps()
