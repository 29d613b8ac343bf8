"""Every topic's record schema is pinned, versioned, and validates itself."""

from __future__ import annotations

import pytest

from streams import topics
from streams.records import (
    RECORD_FOR_TOPIC,
    Alarm,
    RecordInvalid,
    RelayAction,
    RelayCommand,
    SensorFreshness,
    SensorReading,
    Severity,
    alarm_id_for,
    schema_of,
)

PINNED = {
    "createAlarm": {
        "alarm_id": "str", "source": "str", "code": "str", "severity": "Severity", "message": "str",
        "raised_at": "float", "details": "dict", "occurrence": "str", "schema_version": "int",
    },
    "deleteAlarm": {"alarm_id": "str", "cleared_by": "str", "cleared_at": "float", "reason": "str", "schema_version": "int"},
    "sensorData": {
        "sensor": "str", "kind": "str", "value": "float", "unit": "str", "received_at": "float",
        "sequence": "int", "status": "int", "schema_version": "int",
    },
    "sensorFreshness": {
        "temperature_at": "float", "flame": "bool", "flame_at": "float", "sent_at": "float", "schema_version": "int",
    },
    "I2CHeating": {
        "command_id": "str", "action": "RelayAction", "on": "bool", "issued_by": "str", "issued_at": "float",
        "lease_s": "float", "reason": "str", "schema_version": "int",
    },
}


@pytest.mark.parametrize("topic", sorted(PINNED))
def test_schema_is_pinned(topic: str) -> None:
    assert schema_of(RECORD_FOR_TOPIC[topic]) == PINNED[topic]


def test_every_topic_with_records_is_declared_and_versioned() -> None:
    for name, record_type in RECORD_FOR_TOPIC.items():
        assert name in topics.BY_NAME
        assert "schema_version" in schema_of(record_type)


def test_seed_topic_names_are_kept() -> None:
    assert {"createAlarm", "deleteAlarm", "sensorData", "DisasterDetected", "I2CHeating"} <= set(topics.BY_NAME)


def test_compacted_topics_keep_everything() -> None:
    assert topics.PLATFORM_LATCH.config == {"cleanup.policy": "compact", "retention.ms": "-1"}
    assert topics.SENSOR_DATA.config["cleanup.policy"] == "delete"


def _alarm(**changes: object) -> Alarm:
    fields = dict(alarm_id="can/bus-off", source="can", code="bus-off", severity="CRITICAL", message="m", raised_at=1.5)
    fields.update(changes)
    return Alarm(**fields)


def test_alarm_round_trip_keeps_severity_enum() -> None:
    alarm = _alarm(severity="FATAL")
    again = Alarm.loads(alarm.dumps())
    assert again == alarm
    assert again.severity is Severity.FATAL and again.is_fatal


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"severity": "SEVERE"}, "severity"),
        ({"alarm_id": ""}, "alarm_id"),
        ({"raised_at": float("nan")}, "raised_at"),
        ({"schema_version": 2}, "schema_version 2"),
    ],
)
def test_invalid_alarm_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(RecordInvalid, match=message):
        _alarm(**changes)


def test_relay_command_bounds_the_lease() -> None:
    command = RelayCommand(command_id="c1", action="valve", on=True, issued_by="job", issued_at=1.0, lease_s=3)
    assert command.action is RelayAction.VALVE
    with pytest.raises(RecordInvalid, match="lease_s"):
        RelayCommand(command_id="c1", action="valve", on=True, issued_by="job", issued_at=1.0, lease_s=3600)


def test_sensor_reading_rejects_unknown_kind_and_infinite_values() -> None:
    with pytest.raises(RecordInvalid, match="kind"):
        SensorReading(sensor="water.0", kind="pressure", value=1.0, unit="bar", received_at=1.0)
    with pytest.raises(RecordInvalid, match="value"):
        SensorReading(sensor="water.0", kind="temperature", value=float("inf"), unit="C", received_at=1.0)


def test_sensor_freshness_rejects_negative_and_infinite_times() -> None:
    assert SensorFreshness().temperature_at == 0.0, "0 says: no reading yet"
    with pytest.raises(RecordInvalid, match="temperature_at"):
        SensorFreshness(temperature_at=-1.0)
    with pytest.raises(RecordInvalid, match="flame_at"):
        SensorFreshness(flame_at=float("nan"))


def test_alarm_ids_are_deterministic_and_bounded() -> None:
    assert alarm_id_for("bank", "overtemp", "water.0") == alarm_id_for("bank", "overtemp", "water.0")
    assert alarm_id_for("bank", "overtemp") == "bank/overtemp"
    assert len(alarm_id_for("bank", "x", "s" * 500)) <= 200
