"""Reliable sends: the one place that makes the platform's records survive a refused produce.

A broker may refuse a produce batch (the local Tansu broker answers ``UnknownError`` when a
topic was re-created over records it had accepted while the topic did not exist, e.g. after
it restarted empty and a producer wrote with its cached metadata). aiokafka does not retry
that error, and Faust then only logs a warning: a table's changelog row is silently lost
(Faust calls a table's ``_on_changelog_sent`` only on success), and an awaited effect
raises once and is gone. Two tools close that gap:

* :class:`ReliableTable` — select it with the Faust setting
  ``Table="streams.delivery:ReliableTable"``. A refused changelog row is counted, logged
  and sent again (the key's *current* value, or a tombstone), a few times with a backoff;
  when that still fails the app crashes, so a row is never dropped with only a log line.
* :func:`deliver` — for effects (alarms, commands): send, await the broker's answer,
  resend on refusal, and raise :class:`DeliveryFailed` when every attempt was refused.
  Effects must carry deterministic ids, since a send the broker wrote but whose answer
  was lost is sent again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Optional

import faust
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.types import FutureMessage
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential

from streams.metrics import MESSAGES_SENT, REFUSALS

__all__ = ["REFUSALS", "ChangelogRefused", "DeliveryFailed", "ReliableTable", "deliver"]

log = logging.getLogger(__name__)


#: Failures worth another attempt: the broker's or the client's, not a bug in the caller.
RETRIABLE: tuple[type[BaseException], ...] = (KafkaError, ProducerSendError, asyncio.TimeoutError, ConnectionError)

Send = Callable[[], Awaitable[Awaitable[Any]]]


class DeliveryFailed(RuntimeError):
    """Every attempt to deliver a record was refused; ``what`` names the record."""

    def __init__(self, what: str, attempts: int, last: BaseException) -> None:
        super().__init__(f"{what}: not delivered after {attempts} attempt(s); last error: {last!r}")
        self.what = what
        self.attempts = attempts
        self.last = last


class ChangelogRefused(RuntimeError):
    """A table's changelog row was refused more often than the table resends it."""


def service_label(app: faust.App) -> str:
    """The ``service`` label of an app: its id without the platform's ``heater-`` prefix."""
    app_id = str(app.conf.id)
    return app_id.removeprefix("heater-")


async def deliver(
    send: Send,
    what: str,
    *,
    attempts: int = 5,
    backoff_s: float = 0.1,
    service: str = "",
    topic: str = "",
) -> Any:
    """Send until the broker confirms; return its record metadata.

    ``send`` is a zero-argument coroutine function returning the delivery future (e.g.
    ``lambda: topic.send(key=..., value=...)`` or ``lambda: producer.send(...)``). A confirmed
    send is counted in ``heater_messages_sent_total{service, topic}``; a refused
    send is counted in ``heater_produce_refusals_total{service, topic}`` and sent again after
    ``backoff_s`` (doubling each time). Errors that are not the broker's or the client's
    (a bug in ``send``) propagate at once. Raises :class:`DeliveryFailed` after ``attempts``.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")

    def refused(state: RetryCallState) -> None:
        REFUSALS.labels(service, topic).inc()
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning("%s: send %d/%d refused: %r", what, state.attempt_number, attempts, exc)

    async def once() -> Any:
        return await (await send())

    # No circuit breaker: a refusal is no outage to wait out, and failing other sends fast
    # would only move the loss elsewhere; the consistency rule wants a resend or a loud failure.
    resending = AsyncRetrying(stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=backoff_s),
                              retry=retry_if_exception_type(RETRIABLE), after=refused, reraise=True)
    try:
        metadata = await resending(once)
    except RETRIABLE as exc:
        raise DeliveryFailed(what, attempts, exc) from exc
    MESSAGES_SENT.labels(service, topic).inc()
    return metadata


class ReliableTable(faust.Table):
    """A Faust table whose refused changelog rows are sent again, or crash the app.

    Faust calls ``_on_changelog_sent`` only for a row the broker accepted; a refused row
    only sets the exception on its future. So :meth:`send_changelog` watches that future
    too, and a failure goes through :meth:`_on_changelog_sent` like a success does.
    """

    #: Resends of one row before the app crashes.
    resend_attempts: int = 5
    #: First pause before a resend (doubles with each attempt); scheduled, never blocking.
    resend_backoff_s: float = 0.05

    def __post_init__(self) -> None:  # type: ignore[override]
        super().__post_init__()
        # future → (partition, key, serializers, attempt) for sends the broker has not answered.
        self._pending_rows: dict[FutureMessage, tuple[Any, ...]] = {}

    def send_changelog(
        self,
        partition: Optional[int],
        key: Any,
        value: Any,
        key_serializer: Any = None,
        value_serializer: Any = None,
        *,
        attempt: int = 0,
    ) -> FutureMessage:
        """Send a changelog row as Faust does, and remember it until the broker answers."""
        fut = super().send_changelog(partition, key, value, key_serializer, value_serializer)
        self._pending_rows[fut] = (partition, key, key_serializer, value_serializer, attempt)
        fut.add_done_callback(self._on_changelog_done)
        return fut

    def _on_changelog_done(self, fut: FutureMessage) -> None:
        if fut.cancelled():
            self._pending_rows.pop(fut, None)
            log.warning("%s: changelog send cancelled (shutting down?)", self.name)
        elif fut.exception() is not None:
            self._on_changelog_sent(fut)
        else:
            self._pending_rows.pop(fut, None)  # Faust's own callback has recorded the offset

    def _on_changelog_sent(self, fut: FutureMessage) -> None:
        """On success exactly Faust's (persist the offset); on refusal resend or crash."""
        exc = fut.exception() if fut.done() and not fut.cancelled() else None
        if exc is None:
            super()._on_changelog_sent(fut)
            return
        row = self._pending_rows.pop(fut, None)
        if row is None:  # already handled (a Faust that also calls back on failure)
            return
        partition, key, key_serializer, value_serializer, attempt = row
        topic = self.changelog_topic.get_topic_name()
        REFUSALS.labels(service_label(self.app), topic).inc()
        if attempt >= self.resend_attempts:
            log.critical("%s: changelog row for %r refused %d times, last %r: crashing", topic, key, attempt + 1, exc)
            self.app.loop.create_task(self.app.crash(ChangelogRefused(f"{topic}[{partition}] key {key!r}: {exc!r}")))
            return
        delay = self.resend_backoff_s * 2**attempt
        log.error("%s: changelog row for %r refused (%r); resending in %.2f s", topic, key, exc, delay)
        self.app.loop.call_later(delay, self._resend_row, partition, key, key_serializer, value_serializer, attempt + 1)

    def _resend_row(self, partition: Optional[int], key: Any, key_serializer: Any, value_serializer: Any,
                    attempt: int) -> None:
        """Send the key's current value (a later write may have replaced the refused one)."""
        value = self.data[key] if key in self.data else None
        self.send_changelog(partition, key, value, key_serializer, value_serializer, attempt=attempt)
