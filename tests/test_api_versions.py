"""The broker gate's rewrite of the embedded broker's ApiVersions answer, without a broker."""

from __future__ import annotations

import struct

from heater.runtime.api_versions import is_flexible_api_versions, strip_tagged_fields

#: The top-level tagged fields Tansu 0.6 writes (as captured): all four present at their defaults.
TANSU_TAGS = bytes.fromhex("0400010101" "08ffffffffffffffff" "020101" "030100")


def answer(tags: bytes) -> bytes:
    entries = struct.pack(">hhh", 0, 0, 9) + b"\x00" + struct.pack(">hhh", 18, 0, 3) + b"\x00"
    return struct.pack(">ih", 7, 0) + bytes([3]) + entries + struct.pack(">i", 0) + tags


def test_the_answer_loses_only_its_default_tagged_fields() -> None:
    assert strip_tagged_fields(answer(TANSU_TAGS)) == answer(b"\x00")
    assert strip_tagged_fields(answer(b"\x00")) == answer(b"\x00")


def test_anything_that_does_not_parse_passes_unchanged() -> None:
    for frame in (answer(TANSU_TAGS)[:-3], answer(TANSU_TAGS) + b"\x01", b"", b"\x00\x00\x00\x07"):
        assert strip_tagged_fields(frame) == frame


def test_only_flexible_api_versions_requests_are_rewritten() -> None:
    assert is_flexible_api_versions(struct.pack(">hhi", 18, 3, 1) + b"rest")
    assert not is_flexible_api_versions(struct.pack(">hhi", 18, 2, 1))  # aiokafka's
    assert not is_flexible_api_versions(struct.pack(">hhi", 3, 9, 1))
    assert not is_flexible_api_versions(b"\x00\x12")
