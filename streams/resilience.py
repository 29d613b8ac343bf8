"""The one way a service calls a remote dependency at run time: timeout, backoff, circuit breaker.

A dependency that goes away (Vault, the Kubernetes API, the broker under a follower) must
neither hang its caller nor be hammered by it. Every call goes through a
:class:`Dependency`: each attempt is bounded by a timeout and passes a circuit breaker
(``purgatory``); failed attempts are retried with exponential backoff (``tenacity``); after
``threshold`` failed attempts in a row the breaker opens and calls fail fast with
:class:`DependencyDown` for ``open_s``, then one call probes it (half-open) and a success
closes it again. The caller decides what a failure means: keep the last good value (the
allowed list), or wait and ask again (an operator reset that only Vault can verify).

While the breaker is not closed the dependency is *down*: its :class:`Kind` names one
alarm code, raised once through the service's :class:`~streams.alarm_client.AlarmClient`
and cleared once when a call succeeds again (:class:`OutageAlarm`, confirmed only after
the alarm was sent, so a send that failed is tried again after the next call). The
safety paths — the I2C trip, the watchdog, the valve lease — never call through here:
nothing on them waits for a dependency.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, TypeVar

from prometheus_client import Gauge
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from tenacity import (AsyncRetrying, RetryCallState, retry_if_exception_type, retry_if_not_exception_type,
                      stop_after_attempt, wait_exponential)

from streams.records import Severity
from streams.vault import VaultUnavailable

if TYPE_CHECKING:
    from streams.alarm_client import AlarmClient

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Where a dependency's outage alarm goes: the service's alarm client, once it has one.
AlarmSink = Callable[[], "AlarmClient | None"]
Action = Literal["raise", "clear"]

#: Longest wait for the outage alarm's send: a broker that is away too must not hold the caller.
ALARM_SEND_TIMEOUT_S = 5.0

DEPENDENCY_DOWN = Gauge("heater_dependency_down", "1 while a remote dependency's circuit breaker is not closed",
                        ["dependency"])


class DependencyDown(RuntimeError):
    """The dependency did not answer (every attempt failed, or its breaker is open): fail fast."""

    def __init__(self, dependency: str, reason: str) -> None:
        super().__init__(f"{dependency} is unavailable: {reason}")
        self.dependency = dependency
        self.reason = reason


@dataclass(frozen=True)
class Policy:
    """How hard to try one dependency, and how long to leave it alone once it is down."""

    timeout_s: float | None = 3.0
    """Bound on one attempt; None for calls that carry their own (a Kafka poll)."""
    attempts: int = 3
    """Attempts per call, the first included."""
    backoff_s: float = 0.2
    """Pause after the first failed attempt; doubles after each further one."""
    backoff_max_s: float = 2.0
    threshold: int = 3
    """Failed attempts in a row that open the breaker."""
    open_s: float = 5.0
    """How long an open breaker fails fast before it lets one call probe the dependency."""


@dataclass(frozen=True)
class Kind:
    """A kind of dependency: its name, its outage alarm (one code) and how it is called."""

    name: str
    alarm_code: str | None
    """None: no alarm (the broker — an alarm about it could only travel through it)."""
    severity: Severity
    policy: Policy
    failures: tuple[type[BaseException], ...]
    """The errors that mean the dependency did not answer; any other error is the caller's."""


#: Vault (OpenBao): secrets and transit signatures. CRITICAL: while it is away no operator reset
#: can be verified and the allowed list can go stale; nothing dangerous is enabled by its absence.
VAULT = Kind("vault", "vault-unavailable", Severity.CRITICAL,
             Policy(timeout_s=4.0, attempts=3, backoff_s=0.5, backoff_max_s=2.0, threshold=3, open_s=5.0),
             (VaultUnavailable,))

#: The broker under a reader that follows topics for good (a fetch has its own bound: no
#: timeout). Any error of a bare fetch is the broker's or its client's. No alarm: one about the
#: broker could only travel through it, and what its absence stops is watched elsewhere (stale
#: data and the valve lease in the I2C adapter, missing heartbeats in the registry).
BROKER = Kind("broker", None, Severity.WARNING,
              Policy(timeout_s=None, attempts=3, backoff_s=0.1, backoff_max_s=0.5, threshold=3, open_s=1.0),
              (Exception,))


class OutageAlarm:
    """Keeps one dependency's alarm in line with its state: raised once while down, cleared once when back."""

    def __init__(self) -> None:
        self.raised = False

    def due(self, down: bool) -> Action | None:
        """The alarm action that brings the alarm in line with ``down`` (None when it is)."""
        if down and not self.raised:
            return "raise"
        if not down and self.raised:
            return "clear"
        return None

    def confirm(self, action: Action) -> None:
        """The action was sent (and, for a clear, accepted): record the new state."""
        self.raised = action == "raise"


class Dependency:
    """One remote dependency of this process: every call through timeout, backoff and breaker."""

    def __init__(self, kind: Kind, alarms: AlarmSink = lambda: None, policy: Policy | None = None,
                 name: str | None = None) -> None:
        self.kind = kind
        self.name = name or kind.name
        """Names this caller's breaker in logs and metrics (one kind, several callers: "broker (homekit feed)")."""
        self.policy = policy or kind.policy
        self._alarms = alarms
        self._alarm = OutageAlarm()
        self._breakers = AsyncCircuitBreakerFactory(default_threshold=self.policy.threshold,
                                                    default_ttl=self.policy.open_s)
        self._breakers.add_listener(self._on_breaker_event)
        self._state = "closed"
        self._seen_down = False
        self.last_error = ""

    @property
    def down(self) -> bool:
        """True from the breaker's opening until a call succeeds again."""
        return self.state != "closed"

    @property
    def state(self) -> str:
        """The breaker's state: ``closed``, ``opened`` or ``half-opened``."""
        return self._state

    def _on_breaker_event(self, circuit: str, event: str, payload: Any) -> None:
        if event == "state_changed":
            self._state = str(payload.state)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` with the policy's timeout, retries and breaker; :class:`DependencyDown` when it did not answer.

        An error that is not one of the kind's failures is the caller's (a refusal, a bug): it
        propagates at once and counts as an answer, not as an outage.
        """
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.attempts),
            wait=wait_exponential(multiplier=self.policy.backoff_s, max=self.policy.backoff_max_s),
            retry=retry_if_exception_type((*self.kind.failures, asyncio.TimeoutError)) & retry_if_not_exception_type(OpenedState),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            result: T = await retrying(self._attempt, fn)
        except OpenedState:
            await self._reconcile()
            raise DependencyDown(self.name, f"circuit open after repeated failures (last: {self.last_error})") from None
        except (*self.kind.failures, asyncio.TimeoutError) as exc:
            self.last_error = str(exc) or type(exc).__name__
            await self._reconcile()
            raise DependencyDown(self.name, self.last_error) from exc
        await self._reconcile()
        return result

    async def until_answered(self, fn: Callable[[], Awaitable[T]],
                             on_wait: Callable[[DependencyDown], Awaitable[None]] | None = None) -> T:
        """``fn()`` through :meth:`call`, asked again until the dependency answers, however long it is down.

        For work only this dependency can decide (an operator reset only Vault can verify):
        between calls it waits with backoff up to ``open_s``, so each later call is the
        breaker's probe. ``on_wait`` hears each failed call (a metric, a log line).
        """

        async def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            if on_wait is not None and isinstance(exc, DependencyDown):
                await on_wait(exc)

        waiting = AsyncRetrying(
            wait=wait_exponential(multiplier=self.policy.backoff_s, max=self.policy.open_s),
            retry=retry_if_exception_type(DependencyDown),
            before_sleep=before_sleep,
            reraise=True,
        )
        return await waiting(self.call, fn)

    async def _attempt(self, fn: Callable[[], Awaitable[T]]) -> T:
        breaker = await self._breakers.get_breaker(self.name)
        answered: BaseException | None = None
        async with breaker:
            try:
                if self.policy.timeout_s is None:
                    return await fn()
                return await asyncio.wait_for(fn(), self.policy.timeout_s)
            except (*self.kind.failures, asyncio.TimeoutError):
                raise
            except BaseException as exc:  # the dependency answered; the error is the caller's
                answered = exc
        raise answered

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        self.last_error = str(exc) or type(exc).__name__
        log.warning("%s: attempt %d failed (%s); again in %.2f s", self.name, state.attempt_number, self.last_error,
                    state.upcoming_sleep)

    async def _reconcile(self) -> None:
        """Bring the outage alarm (and the log, and the gauge) in line with the breaker."""
        down = self.down
        if down != self._seen_down:
            self._seen_down = down
            DEPENDENCY_DOWN.labels(self.name).set(int(down))
            if down:
                log.error("%s: down (%s); calls fail fast for %.1f s at a time", self.name, self.last_error,
                          self.policy.open_s)
            else:
                log.warning("%s: answers again", self.name)
        action = self._alarm.due(down)
        if action is None:
            return
        client = self._alarms()
        if self.kind.alarm_code is None or client is None:
            self._alarm.confirm(action)
            return
        try:
            if action == "raise":
                await asyncio.wait_for(client.raise_alarm(
                    self.kind.alarm_code, self.kind.severity, f"{self.name} does not answer: {self.last_error}",
                    details={"dependency": self.name, "error": self.last_error}), ALARM_SEND_TIMEOUT_S)
            elif not await asyncio.wait_for(client.clear_alarm(self.kind.alarm_code, reason=f"{self.name} answers again"),
                                            ALARM_SEND_TIMEOUT_S):
                return  # refused (the platform is latched: rule 2): still raised
        except Exception as exc:  # the next call tries again
            log.error("%s: could not %s alarm %s: %r", self.name, action, self.kind.alarm_code, exc)
            return
        self._alarm.confirm(action)
