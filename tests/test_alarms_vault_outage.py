"""AlarmsServer while Vault does not answer: a genuine reset waits for Vault, it is not refused.

Refusing it would leave AlarmsServer and the I2C adapter (which waits and releases the Pico)
disagreeing about the latch. The agent's verification step runs here in process, with a
signer whose transport fails the way hvac's does when Vault is down.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Iterator

import pytest

from streams.agents import alarms as alarms_agent
from streams.operator_reset import issue_reset
from streams.records import OperatorReset
from streams.resilience import VAULT, Dependency, Policy
from streams.vault import VaultUnavailable


class FlakyVault:
    """Signs and verifies like Vault's transit key; verification fails ``outages`` times first."""

    def __init__(self, outages: int) -> None:
        self.outages = outages
        self.attempts = 0

    async def sign(self, payload: bytes) -> str:
        return "vault:v1:" + hashlib.sha256(payload).hexdigest()

    async def verify(self, payload: bytes, signature: str) -> bool:
        self.attempts += 1
        if self.outages:
            self.outages -= 1
            raise VaultUnavailable("Vault at http://127.0.0.1:8200 unreachable: connection refused")
        return signature == await self.sign(payload)


@pytest.fixture
def vault(monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyVault]:
    flaky = FlakyVault(outages=2)
    monkeypatch.setattr(alarms_agent, "signer", lambda: flaky)
    monkeypatch.setattr(alarms_agent, "used_nonces", {})
    fast = Policy(timeout_s=1.0, attempts=2, backoff_s=0.01, backoff_max_s=0.02, threshold=2, open_s=0.05)
    monkeypatch.setattr(alarms_agent.service, "alarms", None)
    monkeypatch.setattr(alarms_agent.service, "vault", Dependency(VAULT, policy=fast))
    yield flaky


def verify(reset: OperatorReset) -> str:
    return asyncio.run(alarms_agent.verification(reset))


def test_a_genuine_reset_waits_for_vault_and_is_accepted(vault: FlakyVault) -> None:
    reset = asyncio.run(issue_reset("alice", vault, ["bank/x@1.0"], 2))
    assert verify(reset) == "", "accepted once Vault answers"
    assert vault.attempts == 3, "two failed attempts opened the breaker; its probe was answered"


def test_a_forged_reset_is_still_refused_once_vault_answers(vault: FlakyVault) -> None:
    genuine = asyncio.run(issue_reset("alice", vault, ["bank/x@1.0"], 2))
    forged: Any = OperatorReset(**{**genuine.asdict(), "occurrences": ["bank/x@1.0", "bank/y@2.0"]})
    assert "signature" in verify(forged)
