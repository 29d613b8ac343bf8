"""The dependency caller: breaker, backoff, timeouts and the outage alarm, without Kafka or Vault."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from streams.records import Severity
from streams.resilience import VAULT, Dependency, DependencyDown, Kind, OutageAlarm, Policy

FAST = Policy(timeout_s=0.2, attempts=3, backoff_s=0.01, backoff_max_s=0.02, threshold=3, open_s=0.3)


class Unreachable(ConnectionError):
    """What the fake dependency raises while it is away."""


KIND = Kind("fake", "fake-unavailable", Severity.WARNING, FAST, (Unreachable,))


class Alarms:
    """Records what an AlarmClient would send; can refuse clears (latched) or fail (broker away)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.latched = False
        self.broken = False

    async def raise_alarm(self, code: str, severity: Any, message: str, **_: Any) -> None:
        if self.broken:
            raise ConnectionError("broker away")
        self.sent.append(("raise", code))

    async def clear_alarm(self, code: str, subject: str = "", reason: str = "", **_: Any) -> bool:
        if self.broken:
            raise ConnectionError("broker away")
        if self.latched:
            return False
        self.sent.append(("clear", code))
        return True


class Remote:
    """A dependency that is up or away, counting the calls that reached it."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0
        self.delay = 0.0

    async def __call__(self) -> str:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.up:
            raise Unreachable("connection refused")
        return "answer"


def make() -> tuple[Dependency, Remote, Alarms]:
    alarms = Alarms()
    return Dependency(KIND, lambda: alarms), Remote(), alarms  # type: ignore[arg-type,return-value]


async def fail(dependency: Dependency, remote: Remote) -> DependencyDown:
    with pytest.raises(DependencyDown) as caught:
        await dependency.call(remote)
    return caught.value


@pytest.mark.parametrize(("raised", "down", "action"), [
    (False, False, None), (False, True, "raise"), (True, True, None), (True, False, "clear"),
])
def test_outage_alarm_is_due_only_on_a_change(raised: bool, down: bool, action: str | None) -> None:
    alarm = OutageAlarm()
    alarm.raised = raised
    assert alarm.due(down) == action


async def test_a_call_that_answers_passes_through() -> None:
    dependency, remote, alarms = make()
    assert await dependency.call(remote) == "answer"
    assert remote.calls == 1 and not dependency.down and alarms.sent == []


async def test_retries_with_backoff_then_succeeds_without_an_alarm() -> None:
    dependency, remote, alarms = make()
    answers = iter([Unreachable("refused"), Unreachable("refused"), None])

    async def flaky() -> str:
        remote.calls += 1
        if (exc := next(answers)) is not None:
            raise exc
        return "answer"

    started = time.monotonic()
    assert await dependency.call(flaky) == "answer"
    assert remote.calls == 3 and time.monotonic() - started >= 0.02  # 0.01 + 0.02 s of backoff
    assert not dependency.down and alarms.sent == []


async def test_breaker_opens_after_threshold_failures_and_raises_the_alarm_once() -> None:
    dependency, remote, alarms = make()
    remote.up = False
    down = await fail(dependency, remote)
    assert remote.calls == FAST.threshold, "every attempt reached it until the breaker opened"
    assert dependency.down and dependency.state == "opened"
    assert "connection refused" in down.reason
    await fail(dependency, remote)
    assert alarms.sent == [("raise", "fake-unavailable")], "raised once while down"


async def test_an_open_breaker_fails_fast_without_calling() -> None:
    dependency, remote, alarms = make()
    remote.up = False
    await fail(dependency, remote)
    calls = remote.calls
    started = time.monotonic()
    down = await fail(dependency, remote)
    assert remote.calls == calls and time.monotonic() - started < 0.05
    assert "circuit open" in down.reason


async def test_half_open_probe_failing_opens_again_and_keeps_the_alarm() -> None:
    dependency, remote, alarms = make()
    remote.up = False
    await fail(dependency, remote)
    calls = remote.calls
    await asyncio.sleep(FAST.open_s + 0.05)
    await fail(dependency, remote)
    assert remote.calls == calls + 1, "one probe, then fail fast again"
    assert dependency.state == "opened"
    assert alarms.sent == [("raise", "fake-unavailable")]


async def test_back_closes_the_breaker_and_clears_the_alarm_once() -> None:
    dependency, remote, alarms = make()
    remote.up = False
    await fail(dependency, remote)
    remote.up = True
    await fail(dependency, remote)  # still open: not asked yet
    await asyncio.sleep(FAST.open_s + 0.05)
    assert await dependency.call(remote) == "answer"
    assert dependency.state == "closed" and not dependency.down
    assert await dependency.call(remote) == "answer"
    assert alarms.sent == [("raise", "fake-unavailable"), ("clear", "fake-unavailable")]


async def test_a_slow_answer_is_a_timeout_and_counts_as_a_failure() -> None:
    dependency, remote, alarms = make()
    remote.delay = FAST.timeout_s + 0.3  # type: ignore[operator]
    started = time.monotonic()
    await fail(dependency, remote)
    elapsed = time.monotonic() - started
    assert elapsed < FAST.attempts * (FAST.timeout_s + 0.1), f"each attempt bounded by the timeout ({elapsed:.2f} s)"  # type: ignore[operator]
    assert dependency.down and alarms.sent == [("raise", "fake-unavailable")]


async def test_the_callers_own_error_propagates_and_is_no_outage() -> None:
    dependency, remote, alarms = make()

    async def refuses() -> str:
        remote.calls += 1
        raise ValueError("signature invalid")

    for _ in range(FAST.threshold + 1):
        with pytest.raises(ValueError):
            await dependency.call(refuses)
    assert remote.calls == FAST.threshold + 1, "not retried"
    assert not dependency.down and alarms.sent == []


async def test_an_alarm_that_could_not_be_sent_is_sent_after_the_next_call() -> None:
    dependency, remote, alarms = make()
    alarms.broken, remote.up = True, False
    await fail(dependency, remote)
    assert alarms.sent == []
    alarms.broken = False
    await fail(dependency, remote)
    assert alarms.sent == [("raise", "fake-unavailable")]


async def test_a_clear_refused_while_latched_stays_due() -> None:
    dependency, remote, alarms = make()
    remote.up = False
    await fail(dependency, remote)
    alarms.latched, remote.up = True, True
    await asyncio.sleep(FAST.open_s + 0.05)
    await dependency.call(remote)
    assert alarms.sent == [("raise", "fake-unavailable")], "no clearing while latched (rule 2)"
    alarms.latched = False
    await dependency.call(remote)
    assert alarms.sent[-1] == ("clear", "fake-unavailable")


async def test_without_an_alarm_client_the_state_is_still_kept() -> None:
    dependency, remote = Dependency(KIND), Remote()
    remote.up = False
    with pytest.raises(DependencyDown):
        await dependency.call(remote)
    assert dependency.down


def test_vault_kind_is_critical_not_fatal() -> None:
    assert VAULT.alarm_code == "vault-unavailable" and VAULT.severity is Severity.CRITICAL


async def test_until_answered_waits_through_an_outage_probing_with_the_breaker() -> None:
    dependency, remote, alarms = make()
    remote.up = False
    waits: list[str] = []

    async def on_wait(exc: DependencyDown) -> None:
        waits.append(exc.reason)
        if len(waits) == 4:
            remote.up = True

    assert await dependency.until_answered(remote, on_wait=on_wait) == "answer"
    assert remote.calls <= FAST.threshold + len(waits), "while open, calls failed fast without reaching it"
    assert alarms.sent == [("raise", "fake-unavailable"), ("clear", "fake-unavailable")]


async def test_a_kind_that_counts_every_error_still_fails_fast_while_open() -> None:
    broad = Kind("broad", None, Severity.WARNING, FAST, (Exception,))
    dependency, remote = Dependency(broad), Remote()
    remote.up = False
    with pytest.raises(DependencyDown):
        await dependency.call(remote)
    calls = remote.calls
    with pytest.raises(DependencyDown, match="circuit open"):
        await dependency.call(remote)
    assert remote.calls == calls, "the open breaker's refusal is not retried as a failure"
