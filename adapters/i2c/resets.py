"""The halted I2C adapter: hold the Pico tripped, release it only for a verified operator reset.

Started while the platform is latched, the adapter does not kick the watchdog and
sends no relay command.  It makes sure the board is tripped (a FATAL raised while
the adapter was down never reached the board), then follows ``operatorReset``.  Each
record is verified on its own — Vault transit signature, one-time nonce kept in the
adapter's ledger file, age — and must name every FATAL occurrence that latches as this
adapter sees it, and the trip the board is at (:mod:`streams.latch`), checked again
after Vault answered and once more under the bus lock just before the board's two-step
RESET sequence is sent and confirmed by reading STATUS.  Refusals are alarms with the
reason.  After a release, a FATAL occurrence the reset did not name trips the board
again at once.  Nothing else ever resets the board: a latch missing from Kafka (a wiped
broker) is not a reset.

The latch release that AlarmsServer publishes for the same reset makes the service
exit to be restarted; a hook placed before that exit first reads ``operatorReset`` to
its end, so the board is released before the restarted adapter looks at it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_fixed

from adapters.i2c import metrics
from adapters.i2c.board import BoardError, Readback
from adapters.i2c.ledger import ResetLedger
from streams import kafka_clients, topics
from streams.codec import DecodeError, decode
from streams.latch import LatchView, not_named
from streams.operator_reset import ResetRefused, verify_reset
from streams.records import OperatorReset, Severity, now
from streams.resilience import DependencyDown
from streams.vault import TransitSigner, VaultUnavailable, vault_client

if TYPE_CHECKING:
    from adapters.i2c.service import RelayAdapter

log = logging.getLogger(__name__)

Verifier = Callable[[bytes, str], Awaitable[bool]]

RESET_ATTEMPTS = 3
#: Pause between two attempts at the board (the bus, not a remote dependency: no breaker).
BOARD_RETRY_S = 0.05
CATCH_UP_TIMEOUT_S = 5.0
#: While a reset waits for Vault, how often a FATAL the last release did not name is looked for.
HOLD_WHILE_WAITING_S = 0.2


def board_attempts(what: str) -> AsyncRetrying:
    """Up to :data:`RESET_ATTEMPTS` tries at the board, :data:`BOARD_RETRY_S` apart; each failure counted and logged."""

    def failed(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, BoardError):
            metrics.I2C_ERRORS.labels(exc.operation).inc()
        log.error("%s attempt %d failed: %s", what, state.attempt_number, exc)

    return AsyncRetrying(stop=stop_after_attempt(RESET_ATTEMPTS), wait=wait_fixed(BOARD_RETRY_S),
                         retry=retry_if_exception_type(BoardError), after=failed, reraise=True)


def refusal_kind(reason: str) -> str:
    """Metric label for a :class:`ResetRefused` reason."""
    if "signature" in reason:
        return "forged"
    if "already used" in reason or "ledger" in reason:
        return "replayed"
    if "stale" in reason or "future" in reason:
        return "stale"
    if "tripped again" in reason or "does not name" in reason:
        return "outdated"
    return "invalid"


class ResetGate:
    """The halted body: trip held, operator resets verified one by one."""

    def __init__(self, adapter: RelayAdapter, ledger: ResetLedger, verifier: Verifier | None = None) -> None:
        self.adapter = adapter
        self.ledger = ledger
        self._verifier = verifier
        self._consumer: AIOKafkaConsumer | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._progress = asyncio.Event()
        self._named: set[str] = set()  # occurrences named by the reset that released the board
        self._released = False

    @classmethod
    def for_adapter(cls, adapter: RelayAdapter) -> ResetGate:
        return cls(adapter, ResetLedger(adapter.settings.run_dir / "i2c"))

    @property
    def latch(self) -> LatchView:
        assert self.adapter.service.watch is not None
        return self.adapter.service.watch.latch

    async def run(self) -> None:
        watch = self.adapter.service.watch
        assert watch is not None
        watch.on_change.insert(0, self._before_release)
        self.adapter.kicking = False
        readback = await self.adapter.read_until_ok("halted start-up")
        await self._hold_trip(readback)
        consumer = await self._start_consumer()
        try:
            await self._follow(consumer)
        finally:
            await consumer.stop()

    # -- the board -----------------------------------------------------------------

    async def _hold_trip(self, readback: Readback) -> None:
        if readback.status.trip_latched:
            log.critical("halted: the Pico is tripped; waiting for a verified operator reset")
            await self.adapter.raise_own_fatal(
                "pico-tripped", "the Pico's power cut-off is tripped (latched in hardware); an operator reset is required"
            )
            return
        release = self.ledger.state.last_release
        if release is not None and not not_named(self.latch, release.get("occurrences") or ()):
            log.warning("halted: the Pico was released by reset %s; waiting for the platform latch", release["reset_id"])
            self._named, self._released = set(release.get("occurrences") or ()), True
            return
        await self._trip_again(f"halted with the Pico not tripped ({self.latch.reason})")

    async def _trip_again(self, why: str) -> None:
        log.critical("%s: tripping the Pico", why)
        self._released = False
        tripped = await self.adapter.trip()
        if tripped is not None:
            await self.adapter.read_trip_count()
            await self.adapter.publish(tripped, force=True)

    async def hold(self) -> None:
        """After a release, a FATAL occurrence the reset did not name trips the board again."""
        if self._released and (left := not_named(self.latch, self._named)):
            await self._trip_again(f"FATAL {', '.join(left)} latches and no reset named it")

    def outdated(self, record: OperatorReset, trip_count: int | None) -> str:
        """Why the reset no longer fits what latches now ("" when it does)."""
        left = not_named(self.latch, record.occurrences)
        if left:
            return f"it does not name {', '.join(left)}, which latches"
        if record.trip_count is not None and trip_count is not None and trip_count != record.trip_count:
            return f"issued for Pico trip count {record.trip_count}, the Pico is at {trip_count}: it tripped again since"
        return ""

    async def release(self, record: OperatorReset) -> Readback | str | None:
        """Send the RESET sequence once and confirm by reading STATUS; None if not confirmed.

        Under the bus lock, right before the sequence, the board's trip count and the
        latch are checked once more: the reason is returned instead if the reset no
        longer fits. The sequence is sent again only when sending it failed. Once it went
        out, only the readback is retried: a second RESET for one verified reset could
        release a trip that happened in between.
        """
        adapter = self.adapter
        try:
            why = await board_attempts("RESET")(self._send_reset, record)
        except BoardError:
            return None
        if why:
            return why
        readback = await self._read_back()
        if readback is None:
            return None
        adapter.note(readback)
        if readback.status.trip_latched:
            log.error("RESET sent: the board still reports the trip latched")
            return None
        return readback

    async def _send_reset(self, record: OperatorReset) -> str:
        """One try: under the bus lock, check the reset still fits, then send the sequence ("" when sent)."""
        adapter = self.adapter
        async with adapter.io.lock:
            trip_count = await adapter.io.call(adapter.io.board.trip_count)
            if why := self.outdated(record, trip_count):
                return why
            await adapter.io.call(adapter.io.board.reset_latch)
        return ""

    async def _read_back(self) -> Readback | None:
        adapter = self.adapter

        async def read() -> Readback:
            async with adapter.io.lock:
                return await adapter.io.call(adapter.io.board.read_back)

        try:
            return await board_attempts("reading back after RESET")(read)
        except BoardError:
            return None

    # -- operatorReset ---------------------------------------------------------------

    async def _start_consumer(self) -> AIOKafkaConsumer:
        """Resume where the ledger says; from the beginning when it knows nothing (or the log is new)."""
        consumer = kafka_clients.consumer(
            settings=self.adapter.settings,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            request_timeout_ms=15_000,
        )
        await asyncio.wait_for(consumer.start(), 15)
        partitions = [
            TopicPartition(topics.OPERATOR_RESET.name, p)
            for p in (consumer.partitions_for_topic(topics.OPERATOR_RESET.name) or {0})
        ]
        consumer.assign(partitions)
        ends = await kafka_clients.log_ends(consumer, partitions, settings=self.adapter.settings)
        begins = await consumer.beginning_offsets(partitions)
        for tp in partitions:
            stored = self.ledger.state.offsets.get(tp.partition)
            start = stored if stored is not None and begins[tp] <= stored <= ends.get(tp, 0) else begins[tp]
            consumer.seek(tp, start)
            self._positions[tp] = start
        self._consumer = consumer
        return consumer

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            await self._step(consumer)

    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=200)
        for tp, messages in batches.items():
            for message in messages:
                await self.handle(message)
                self._positions[tp] = message.offset + 1
                self.ledger.set_offset(tp.partition, message.offset + 1)
        await self.hold()
        self._progress.set()
        self._progress = asyncio.Event()

    async def settle_published(self) -> None:
        """Act on every reset published so far, then stop.

        For an adapter restarted after the operator reset was issued (it had stayed
        down after the FATAL): the reset that released the platform latch is waiting
        on the topic and releases the board here, once verified.
        """
        consumer = await self._start_consumer()
        try:
            ends = await kafka_clients.log_ends(consumer, list(self._positions), settings=self.adapter.settings)
            while any(self._positions[tp] < end for tp, end in ends.items()):
                await self._step(consumer)
        finally:
            await consumer.stop()

    async def handle(self, message: ConsumerRecord) -> None:
        """Verify one reset record and act on it (refusals are alarms, never exceptions)."""
        try:
            record = decode(message.value, OperatorReset)
        except DecodeError as exc:
            await self._refuse(None, "invalid", f"malformed reset record: {exc}")
            return
        if record.issued_at < self.ledger.state.not_before:
            await self._refuse(record, "replayed", "issued before the reset ledger was lost (possible replay)")
            return
        try:
            await self._verified(record)
        except ResetRefused as exc:
            await self._refuse(record, refusal_kind(exc.reason), exc.reason)
            return
        self.ledger.mark_used(record.nonce, time.time())
        readback = await self.release(record)
        if isinstance(readback, str):
            await self._refuse(record, "outdated", readback)
            return
        if readback is None:
            metrics.RESETS.labels("failed").inc()
            await self.adapter.raise_alarm(
                "reset-failed", Severity.CRITICAL,
                f"verified reset {record.reset_id} by {record.operator}: the Pico did not release its trip latch",
                subject=record.reset_id,
            )
            return
        self.ledger.record_release(record.reset_id, record.operator, record.issued_at, time.time(), record.occurrences)
        self._named, self._released = set(record.occurrences), True
        await self.adapter.read_trip_count()
        metrics.RESETS.labels("released").inc()
        log.warning("Pico trip latch released by verified reset %s from %s", record.reset_id, record.operator)
        await self.adapter.publish(readback, force=True)

    async def _verified(self, record: OperatorReset) -> None:
        """Verify the reset, waiting as long as Vault does not answer; :class:`ResetRefused` when not genuine.

        A Vault outage is no verdict on the reset (its age is judged at the first attempt).
        While it waits, the trip is still held: a FATAL the last release did not name trips
        the board again without waiting for Vault.
        """
        first_attempt_at = now()

        async def verify() -> None:
            try:
                await verify_reset(record, await self._verify_fn(), self.ledger.used_nonces, at=first_attempt_at)
            except VaultUnavailable:
                self._verifier = None  # a fresh client (the token file read again) for the next attempt
                raise

        async def waits(exc: DependencyDown) -> None:
            metrics.RESETS.labels("vault-unavailable").inc()
            log.error("operator reset %s waits: %s", record.reset_id, exc)

        verifying = asyncio.ensure_future(self.adapter.service.vault.until_answered(verify, on_wait=waits))
        try:
            while not verifying.done():
                await asyncio.wait({verifying}, timeout=HOLD_WHILE_WAITING_S)
                await self.hold()
        finally:
            verifying.cancel()
        verifying.result()

    async def _verify_fn(self) -> Verifier:
        if self._verifier is None:
            self._verifier = TransitSigner(vault_client(self.adapter.settings)).verify
        return self._verifier

    async def _refuse(self, record: OperatorReset | None, kind: str, reason: str) -> None:
        metrics.RESETS.labels(f"refused-{kind}").inc()
        reset_id = record.reset_id if record is not None else "malformed"
        log.warning("operator reset %s refused (%s): %s", reset_id, kind, reason)
        await self.adapter.raise_alarm(
            "reset-refused", Severity.CRITICAL, f"operator reset refused ({kind}): {reason}",
            subject=reset_id,
            details={"kind": kind, "reason": reason, "operator": record.operator if record is not None else ""},
        )

    # -- ordering against the latch release -------------------------------------------

    async def _before_release(self, latch: LatchView) -> None:
        """Before the service exits on a release, act on every reset already published."""
        if latch.latched or self._consumer is None:
            return
        try:
            await asyncio.wait_for(self._caught_up(self._consumer), CATCH_UP_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.error("latch released but operatorReset not read to its end in %.0f s", CATCH_UP_TIMEOUT_S)

    async def _caught_up(self, consumer: AIOKafkaConsumer) -> None:
        partitions = list(self._positions)
        ends = await kafka_clients.log_ends(consumer, partitions, settings=self.adapter.settings)
        while any(self._positions[tp] < end for tp, end in ends.items()):
            await self._progress.wait()
