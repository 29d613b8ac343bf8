"""The configuration's schema, versions and run-time rule, over plain data."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streams.config_rules import STRICTER, ConfigBook, document_of, key_for, loosened, parse_limits
from streams.heater_config import ConfigInvalid, HeaterLimits
from streams.records import ConfigDocument


def published(version: int, limits: dict[str, object]) -> tuple[bytes, bytes]:
    doc = ConfigDocument(version=version, data={"limits": limits}, issued_at=float(version), issued_by="test")
    return key_for(version), doc.dumps()


def test_a_document_sets_the_named_limits_over_the_defaults() -> None:
    limits = parse_limits({"limits": {"warning_c": 59, "ignition_attempts": 2}})
    assert limits == replace(HeaterLimits(), warning_c=59.0, ignition_attempts=2)
    assert parse_limits(document_of(HeaterLimits())) == HeaterLimits()


@pytest.mark.parametrize(("data", "says"), [
    ({"limitz": {}}, "unknown section(s) limitz"),
    ({"limits": {"warning": 50}}, "unknown limit 'warning'"),
    ({"limits": {"warning_c": "50"}}, "warning_c must be a number"),
    ({"limits": {"warning_c": True}}, "warning_c must be a number"),
    ({"limits": {"ignition_attempts": 2.5}}, "ignition_attempts must be a whole number"),
    ({"limits": {"warning_c": 80}}, "warning_c < critical_c"),
    ({"limits": []}, "limits must be an object"),
    ([], "a configuration is a JSON object"),
])
def test_an_invalid_document_is_refused_naming_what_is_wrong(data: object, says: str) -> None:
    with pytest.raises(ConfigInvalid, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_limits(data)  # type: ignore[arg-type]


def test_only_a_move_to_the_strict_side_is_not_loosening() -> None:
    base = HeaterLimits()
    assert loosened(base, replace(base, warning_c=59.0, min_change_c=0.6, lease_renew_s=0.5)) == []
    assert loosened(base, replace(base, warning_c=61.0)) == ["warning_c: 60.0 → 61.0"]
    assert loosened(base, replace(base, min_change_c=0.4)) == ["min_change_c: 0.5 → 0.4"]
    assert set(STRICTER) <= {f for f in HeaterLimits.__dataclass_fields__}


def test_the_highest_valid_version_is_in_force_and_a_bad_one_changes_nothing() -> None:
    book = ConfigBook()
    default = HeaterLimits()
    assert book.limits(default) is default and book.version == 0
    assert book.apply(*published(1, {"warning_c": 59}))
    assert book.apply(*published(2, {"warning_c": 58}))
    assert not book.apply(*published(1, {"warning_c": 59})), "an old version again changes nothing"
    assert not book.apply(*published(3, {"warning_c": 99})), "invalid: refused"
    assert not book.apply(key_for(4), b"not json")
    assert book.refused == 2 and book.version == 2 and book.limits(default).warning_c == 58.0
    assert sorted(book.versions) == [1, 2]
