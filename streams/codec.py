"""Decoding a topic's raw bytes into its record, with a reason for every refusal.

Agents consume raw bytes and decode here, so a bad message is a value to handle
(dead-letter it and go on), never an exception inside Faust's deserializer that
would stop the stream. Pure: no Kafka, no Faust app.
"""

from __future__ import annotations

import json
from typing import TypeVar

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
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError("malformed", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DecodeError("malformed", f"expected a JSON object, got {type(data).__name__}")
    if "schema_version" not in data:
        raise DecodeError("schema_version", "schema_version is missing")
    version = data["schema_version"]
    if not isinstance(version, int) or version not in record_type.SUPPORTED_VERSIONS:
        raise DecodeError(
            "schema_version",
            f"{record_type.__name__} schema_version {version!r} not in {sorted(record_type.SUPPORTED_VERSIONS)}",
        )
    unknown = set(data) - set(record_type._options.fields)
    if unknown:
        raise DecodeError("invalid", f"unknown fields {sorted(unknown)}")
    try:
        return record_type.from_data(data)
    except RecordInvalid as exc:
        raise DecodeError("invalid", str(exc)) from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise DecodeError("invalid", f"{type(exc).__name__}: {exc}") from None


def encode(record: HeaterRecord) -> bytes:
    """The bytes a record travels as (the inverse of :func:`decode`)."""
    return record.dumps()
