"""Bad bytes become a DecodeError with a reason, never an exception elsewhere."""

from __future__ import annotations

import json

import pytest

from streams.codec import MAX_MESSAGE_BYTES, DecodeError, decode, encode
from streams.records import Alarm, AlarmClear

VALID = {
    "alarm_id": "a/b", "source": "a", "code": "b", "severity": "WARNING", "message": "m",
    "raised_at": 10.0, "details": {}, "schema_version": 1,
}


def _bytes(data: object) -> bytes:
    return json.dumps(data).encode()


def test_valid_message_decodes() -> None:
    alarm = decode(_bytes(VALID), Alarm)
    assert alarm.alarm_id == "a/b"
    assert decode(encode(alarm), Alarm) == alarm


@pytest.mark.parametrize(
    "payload, reason",
    [
        (None, "empty"),
        (b"\xff\xfe not json", "malformed"),
        (b"{ truncated", "malformed"),
        (b"[1, 2, 3]", "malformed"),
        (_bytes({k: v for k, v in VALID.items() if k != "schema_version"}), "schema_version"),
        (_bytes({**VALID, "schema_version": 2}), "schema_version"),
        (_bytes({**VALID, "schema_version": "1"}), "schema_version"),
        (_bytes({**VALID, "severity": "LOUD"}), "invalid"),
        (_bytes({**VALID, "raised_at": "yesterday"}), "invalid"),
        (_bytes({k: v for k, v in VALID.items() if k != "message"}), "invalid"),
        (_bytes({**VALID, "surprise": 1}), "invalid"),
        (b"{" + b" " * MAX_MESSAGE_BYTES + b"}", "oversized"),
    ],
)
def test_bad_input_is_refused_with_a_reason(payload: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(payload, Alarm)
    assert info.value.reason == reason


def test_a_record_of_another_topic_is_refused() -> None:
    clear = AlarmClear(alarm_id="a/b", cleared_by="op", cleared_at=1.0)
    with pytest.raises(DecodeError):
        decode(encode(clear), Alarm)
