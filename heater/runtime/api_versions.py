"""The embedded broker's ApiVersions answer, made readable to librdkafka clients (kcat).

Tansu 0.6 answers ApiVersions v3+ with all four optional tagged fields present at their
default values (no supported features, finalized-features epoch -1, none finalized,
not ready for ZooKeeper migration). Apache Kafka leaves fields at their defaults out, and
librdkafka 2.0 (Debian 12's, under kcat) fails to read that answer ("ApiVersionRequest
failed: Local: Read underflow"), so no librdkafka tool could talk to the local broker.
The broker's gate (:func:`heater.runtime.broker.run_broker`) passes the first answer of each
connection through :func:`strip_tagged_fields` when the first request was ApiVersions v3+:
the answer then says what Kafka's would. Only the local runtime does this; nothing else in
any frame is touched.
"""

from __future__ import annotations

import struct

API_VERSIONS = 18
FIRST_FLEXIBLE_VERSION = 3


def request_header(frame: bytes) -> tuple[int, int, int] | None:
    """``(api_key, api_version, correlation_id)`` of a request frame (without its length prefix); None if too short."""
    if len(frame) < 8:
        return None
    return struct.unpack(">hhi", frame[:8])


def is_flexible_api_versions(frame: bytes) -> bool:
    header = request_header(frame)
    return header is not None and header[0] == API_VERSIONS and header[1] >= FIRST_FLEXIBLE_VERSION


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _skip_tags(data: bytes, pos: int) -> int:
    count, pos = _uvarint(data, pos)
    for _ in range(count):
        _, pos = _uvarint(data, pos)
        size, pos = _uvarint(data, pos)
        pos += size
    return pos


def strip_tagged_fields(frame: bytes) -> bytes:
    """An ApiVersions v3+ response frame (no length prefix) without its top-level tagged fields.

    Any frame that does not parse as one is returned unchanged.
    """
    try:
        pos = 4 + 2  # correlation id (response header v0), error code
        count, pos = _uvarint(frame, pos)
        for _ in range(max(0, count - 1)):
            pos = _skip_tags(frame, pos + 6)  # api key, min and max version, then the entry's tags
        pos += 4  # throttle time
        end = _skip_tags(frame, pos)
    except IndexError:
        return frame
    if end != len(frame):
        return frame
    return frame[:pos] + b"\x00"
