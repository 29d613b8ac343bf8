"""When the SecretsRotator renews what: pure decisions over records, no Vault, no clock of their own.

Everything that expires is described by one :class:`Item` — a kind, a name, when it was
issued and when it stops working — and is renewed once no more than ``renew_before`` (a
fraction of its lifetime) is left: with the default of one third, a 24 h certificate is
renewed after 16 h. Keys that never expire by themselves (the API-token signing key, the
transit key) get a rotation period as their lifetime.

AppRole secret_ids are replaced, not renewed: the new one is written where the service reads
it, and the old ones are destroyed only after a grace period counted from the moment the
current one exists, so a service that read the old one just before the swap still logs in
(:func:`stale_secret_ids`).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Iterable

CERTIFICATE = "certificate"
SECRET_ID = "secret-id"
API_TOKEN_KEY = "api-token-key"
TRANSIT_KEY = "transit-key"
KINDS = (CERTIFICATE, SECRET_ID, API_TOKEN_KEY, TRANSIT_KEY)


@dataclass(frozen=True)
class Item:
    """One thing that expires: a certificate, a secret_id, a key."""

    kind: str
    name: str
    issued_at: float
    expires_at: float

    @property
    def lifetime(self) -> float:
        return max(self.expires_at - self.issued_at, 0.0)

    def renew_at(self, renew_before: float) -> float:
        """When it is due: ``renew_before`` of its lifetime before it expires."""
        return self.expires_at - renew_before * self.lifetime

    def as_dict(self, renew_before: float, now: float) -> dict[str, object]:
        return {"kind": self.kind, "name": self.name, "expires_in_s": round(self.expires_at - now, 1),
                "due_in_s": round(self.renew_at(renew_before) - now, 1)}


def rotated_every(period_s: float, renew_before: float) -> float:
    """How often a key with rotation period ``period_s`` is in fact rotated."""
    return period_s * (1.0 - renew_before)


def due(items: Iterable[Item], now: float, renew_before: float) -> list[Item]:
    """The items to renew now, the soonest to expire first."""
    return sorted((i for i in items if now >= i.renew_at(renew_before)), key=lambda i: i.expires_at)


def next_expiry(items: Iterable[Item]) -> Item | None:
    """The item that expires first (None when there is nothing)."""
    return min(items, key=lambda i: i.expires_at, default=None)


def certificate_item(name: str, not_before: float, not_after: float, ttl_s: float) -> Item:
    """A certificate, its lifetime the shorter of the one it has and the one it is issued with.

    Issuers backdate ``not_before`` (Vault by 30 s): a certificate issued for a few seconds
    would otherwise look due the moment it is issued.
    """
    return Item(CERTIFICATE, name, not_after - min(not_after - not_before, ttl_s), not_after)


def key_item(kind: str, name: str, created_at: float, period_s: float) -> Item:
    """A key rotated every ``period_s`` (its latest version was created at ``created_at``)."""
    return Item(kind, name, created_at, created_at + period_s)


@dataclass(frozen=True)
class SecretIdRecord:
    """One secret_id of an AppRole, as Vault describes it by its accessor (0: no expiry)."""

    accessor: str
    created_at: float
    expires_at: float = 0.0


def secret_id_item(name: str, current: SecretIdRecord, period_s: float) -> Item:
    """The secret_id a service uses now: its own expiry, or ``period_s`` after creation when it has none."""
    expires = current.expires_at or current.created_at + period_s
    return Item(SECRET_ID, name, current.created_at, min(expires, current.created_at + period_s))


def stale_secret_ids(records: Iterable[SecretIdRecord], current: str, now: float, grace_s: float) -> list[str]:
    """Accessors of the secret_ids to destroy: every one but ``current``, once the grace has passed.

    The grace counts from when the current one was created (the older ones were in use until
    then) or from the record's own creation if it is newer (one made but never handed over).
    Without the current one among them nothing is destroyed: the service might be using any.
    """
    records = list(records)
    now_current = next((r for r in records if r.accessor == current), None)
    if now_current is None:
        return []
    return sorted(r.accessor for r in records
                  if r.accessor != current and now >= max(r.created_at, now_current.created_at) + grace_s)


def parse_vault_time(text: str | int | float | None) -> float:
    """A Vault timestamp (RFC 3339 with up to nanoseconds, or Unix seconds) as Unix time; 0 for none."""
    if text in (None, "", 0):
        return 0.0
    if isinstance(text, (int, float)):
        return float(text)
    stamp = text.strip().replace("Z", "+00:00")
    head, sep, rest = stamp.partition(".")
    if sep:
        digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        zone = rest[len(digits):]
        stamp = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    parsed = datetime.datetime.fromisoformat(stamp)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    if parsed.year <= 1:  # Vault's zero time: no expiry
        return 0.0
    return parsed.timestamp()
