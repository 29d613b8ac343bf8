"""What the SecretsRotator renews when: the pure rules, without Vault or a clock."""

from __future__ import annotations

import pytest

from streams import rotation_rules as rules
from streams.rotation_rules import Item, SecretIdRecord
from streams.settings import Settings, SettingsError

HOUR = 3600.0


def test_an_item_is_due_when_no_more_than_the_fraction_of_its_lifetime_is_left() -> None:
    cert = Item(rules.CERTIFICATE, "alarms", issued_at=0.0, expires_at=24 * HOUR)
    assert cert.renew_at(1 / 3) == pytest.approx(16 * HOUR)
    assert rules.due([cert], 16 * HOUR - 1, 1 / 3) == []
    assert rules.due([cert], 16 * HOUR, 1 / 3) == [cert]
    assert rules.due([cert], 30 * HOUR, 1 / 3) == [cert], "an expired one is due too"


def test_what_is_due_comes_soonest_expiring_first() -> None:
    late = Item(rules.CERTIFICATE, "late", 0.0, 10.0)
    soon = Item(rules.SECRET_ID, "soon", 0.0, 5.0)
    fine = Item(rules.TRANSIT_KEY, "fine", 0.0, 100.0)
    assert rules.due([late, fine, soon], 9.0, 0.5) == [soon, late]
    assert rules.next_expiry([late, fine, soon]) == soon
    assert rules.next_expiry([]) is None


def test_a_certificate_backdated_by_its_issuer_is_not_due_when_issued() -> None:
    """Vault backdates not_before by 30 s: an 8 s certificate would look two thirds used at once."""
    item = rules.certificate_item("bank", not_before=1000.0 - 30, not_after=1000.0 + 8, ttl_s=8.0)
    assert item.lifetime == 8.0
    assert rules.due([item], 1000.0, 1 / 3) == []
    assert rules.due([item], 1000.0 + 8 - 8 / 3, 1 / 3) == [item]
    provisioned = rules.certificate_item("bank", 0.0, 24 * HOUR, ttl_s=24 * HOUR)
    assert provisioned.renew_at(0.25) == pytest.approx(18 * HOUR)


def test_a_key_is_rotated_every_period() -> None:
    key = rules.key_item(rules.TRANSIT_KEY, "operator-reset", created_at=100.0, period_s=HOUR)
    assert key.expires_at == 100.0 + HOUR
    assert rules.due([key], 100.0 + HOUR * 2 / 3, 1 / 3) == [key]


def test_a_secret_id_without_expiry_lives_one_period_and_one_with_expiry_its_own() -> None:
    endless = SecretIdRecord("a", created_at=10.0, expires_at=0.0)
    assert rules.secret_id_item("bank", endless, period_s=HOUR).expires_at == 10.0 + HOUR
    short = SecretIdRecord("b", created_at=10.0, expires_at=70.0)
    assert rules.secret_id_item("bank", short, period_s=HOUR).expires_at == 70.0


def test_replaced_secret_ids_are_destroyed_only_after_the_grace() -> None:
    old = SecretIdRecord("old", created_at=0.0)
    current = SecretIdRecord("current", created_at=100.0)
    assert rules.stale_secret_ids([old, current], "current", now=100.0 + 29, grace_s=30) == []
    assert rules.stale_secret_ids([old, current], "current", now=130.0, grace_s=30) == ["old"]
    assert rules.stale_secret_ids([current], "current", now=1e9, grace_s=30) == [], "the current one never"


def test_a_newer_secret_id_never_handed_over_waits_its_own_grace() -> None:
    current = SecretIdRecord("current", created_at=100.0)
    orphan = SecretIdRecord("orphan", created_at=200.0)  # made, but the rotator stopped before writing it
    assert rules.stale_secret_ids([current, orphan], "current", now=210.0, grace_s=30) == []
    assert rules.stale_secret_ids([current, orphan], "current", now=230.0, grace_s=30) == ["orphan"]


def test_nothing_is_destroyed_when_the_current_one_is_not_among_them() -> None:
    records = [SecretIdRecord("x", 0.0), SecretIdRecord("y", 1.0)]
    assert rules.stale_secret_ids(records, "unknown", now=1e9, grace_s=0) == []


@pytest.mark.parametrize("text, expected", [
    ("2026-12-04T06:43:49Z", 1796366629.0),
    ("2026-12-04T06:43:49.123456789Z", 1796366629.123456),
    ("2026-12-04T07:43:49.5+01:00", 1796366629.5),
    ("0001-01-01T00:00:00Z", 0.0),
    ("", 0.0),
    (None, 0.0),
    (1796366629, 1796366629.0),
])
def test_vault_times(text: object, expected: float) -> None:
    assert rules.parse_vault_time(text) == pytest.approx(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2.0])
def test_a_renew_before_that_leaves_no_time_is_refused(fraction: float) -> None:
    with pytest.raises(SettingsError, match="HEATER_ROTATOR_RENEW_BEFORE=.*between 0 and 1"):
        Settings.from_env({"HEATER_ROTATOR_RENEW_BEFORE": str(fraction)})


def test_the_rotator_settings() -> None:
    settings = Settings.from_env({"HEATER_ROTATOR_INTERVAL_S": "2", "HEATER_ROTATOR_RENEW_BEFORE": "0.5",
                                  "HEATER_RUN_DIR": "/r"})
    assert (settings.rotator_interval_s, settings.rotator_renew_before) == (2.0, 0.5)
    assert str(settings.secrets_dir) == "/r/secrets"
    assert str(Settings.from_env({"HEATER_ROTATOR_SECRETS_DIR": "/s"}).secrets_dir) == "/s"


def test_a_key_is_rotated_once_its_renew_before_is_reached() -> None:
    assert rules.rotated_every(24.0, 0.5) == 12.0
    assert rules.rotated_every(7 * 24 * HOUR, 1 / 3) == pytest.approx(112 * HOUR)
