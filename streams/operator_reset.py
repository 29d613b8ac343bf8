"""Operator resets: issued signed and one-time, verified before anything is released.

A reset is an :class:`OperatorReset` record: operator identity, a random one-time
nonce, the time it was issued, the FATAL occurrences and the Pico trip it releases
(:mod:`streams.latch`), and a Vault transit signature over all of them. Whoever
acts on it — AlarmsServer clearing the Kafka latch, the I2C adapter releasing the
Pico's hardware latch — verifies it first: signature valid, nonce never used before,
issued recently. A forged, replayed or stale reset is refused with a reason.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Awaitable, Callable, Container, Iterable, Mapping, Protocol

from streams.records import OperatorReset, now

MAX_AGE_S = 300.0
MAX_CLOCK_SKEW_S = 5.0


class ResetRefused(Exception):
    """A reset record that must not be acted on; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Signer(Protocol):
    async def sign(self, payload: bytes) -> str: ...

    async def verify(self, payload: bytes, signature: str) -> bool: ...


async def issue_reset(
    operator: str, signer: Signer, occurrences: Iterable[str] = (), trip_count: int | None = None,
    covered: Mapping[str, int] | None = None,
) -> OperatorReset:
    """A new signed reset for ``operator`` with a fresh nonce, naming what it releases and the input it covers."""
    if not operator:
        raise ValueError("an operator reset needs the operator's identity")
    unsigned = OperatorReset(
        reset_id=str(uuid.uuid4()), operator=operator, nonce=secrets.token_hex(16), issued_at=now(), signature="-",
        occurrences=sorted(occurrences), trip_count=trip_count, covered=dict(covered or {}),
    )
    signature = await signer.sign(unsigned.signed_payload())
    return OperatorReset(**{**unsigned.asdict(), "signature": signature})


def check_fresh(record: OperatorReset, used_nonces: Container[str], at: float) -> None:
    """The checks that need no Vault: identity, age, and one-time nonce."""
    if not record.operator:
        raise ResetRefused("no operator identity")
    if len(record.nonce) < 16:
        raise ResetRefused("nonce too short")
    if record.nonce in used_nonces:
        raise ResetRefused(f"nonce {record.nonce} already used (replayed reset)")
    if record.issued_at > at + MAX_CLOCK_SKEW_S:
        raise ResetRefused("issued in the future")
    if at - record.issued_at > MAX_AGE_S:
        raise ResetRefused(f"stale: issued {at - record.issued_at:.0f} s ago (limit {MAX_AGE_S:.0f} s)")


async def verify_reset(
    record: OperatorReset,
    verify_signature: Callable[[bytes, str], Awaitable[bool]],
    used_nonces: Container[str],
    at: float | None = None,
) -> None:
    """Raise :class:`ResetRefused` unless the reset is genuine, fresh and unused."""
    check_fresh(record, used_nonces, now() if at is None else at)
    if not await verify_signature(record.signed_payload(), record.signature):
        raise ResetRefused("signature does not verify (forged or altered reset)")
