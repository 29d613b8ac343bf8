"""Follow the alarm, latch and configuration topics, in every service.

A plain aiokafka consumer without a consumer group: every instance of every service
must see every message. It keeps an in-memory replica of this service's own alarms
(so it can clear them at start-up) and the FATAL latch (so it halts at once, even
while AlarmsServer is down). Alarm keys are their ids, ``source/code[/subject]``, so
other services' alarms are skipped by key and only FATAL ones are decoded: reading
the whole history at start-up stays cheap; of the latch, every reset's own record and
only the newest records of the latch now are read (:mod:`streams.latch`). Messages that
fail to decode are skipped and counted here; AlarmsServer dead-letters them. It also
keeps every version of the configuration (:mod:`streams.config_rules`) and tells the
service when a new one is in force, so a changed limit applies within a poll, without
a restart.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import Awaitable, Callable, Iterator, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from streams import metrics, topics, tracing
from streams.alarm_book import AlarmBook
from streams.codec import DecodeError, decode
from streams.config_rules import ConfigBook
from streams.heater_config import HeaterLimits
from streams.latch import LatchView, is_reset_key
from streams.records import RECORD_FOR_TOPIC, Alarm, AlarmClear, PlatformLatch
from streams.readers import follower, open_reader_at_ends, reaches
from streams.settings import WATCH_FETCH_WAIT_MS

log = logging.getLogger(__name__)

WATCHED = (topics.CREATE_ALARM.name, topics.DELETE_ALARM.name, topics.PLATFORM_LATCH.name, topics.CONFIG.name)
LatchCallback = Callable[[LatchView], Awaitable[None]]
ConfigCallback = Callable[[ConfigBook], Awaitable[None]]
#: A partition whose position has not moved for this long, short of its end offset, has ended.
UNREADABLE_TAIL_S = 2.0
#: The newest records of the latch now (``platformLatch`` under ``LATCH_KEY``) a watch reads at
#: its start; every reset's own record it reads whatever its age, since each holds one reset's
#: releases. A record of the latch now holds the rest (what latches, what the last reset
#: released), so the newest that decodes is in force and the older ones only repeat what
#: followed them. A few, not one, so that one record that does not decode is not the latch.
LATCH_RECORDS_READ = 8


class PlatformWatch:
    """The alarm book and FATAL latch, followed live."""

    def __init__(self, bootstrap: str, service: str, fetch_wait_ms: int = WATCH_FETCH_WAIT_MS,
                 resume: PlatformWatch | None = None) -> None:
        self.bootstrap = bootstrap
        self.service = service
        self.fetch_wait_ms = fetch_wait_ms
        self.book = AlarmBook({}, {}, {})
        self.latch = LatchView()
        self.on_change: list[LatchCallback] = []
        self.config = ConfigBook()
        self.on_config: list[ConfigCallback] = []
        self._config_changed = False
        self._own_prefix = f"{service}/".encode()
        self._consumer: AIOKafkaConsumer | None = None
        self._broker = follower("platform watch")
        self._task: asyncio.Task[None] | None = None
        #: Where the state stands: the offset after the last record applied, per partition
        #: read from. A watch that ``resume``s this one (stopped) reads on from there.
        self.positions: dict[TopicPartition, int] = {}
        self._resume = resume
        #: Where the records of the latch now that a start reads begin (older ones are passed over).
        self._latch_now_from: dict[TopicPartition, int] = {}

    async def start(self, timeout: float = 15.0) -> None:
        """Connect and read everything up to the current end, so decisions start informed.

        A process reads the history once: a watch that resumes one this process stopped (the
        latch check before the worker starts, the halted wait) takes over its state and reads
        on from its positions. Each start read the whole alarm history twice or three times,
        and it grows with every FATAL and reset. Where a log no longer reaches a position (the
        local broker started over in between), the history is read from the beginning.
        """
        resume = self._resume if self._resume is not None and self._resume.positions else None
        self._consumer, ends = await open_reader_at_ends(
            self.bootstrap, WATCHED, fetch_wait_ms=self.fetch_wait_ms, from_end=False, timeout=timeout, follow=True,
            start_at=resume.positions if resume is not None else None)
        self._latch_now_from = {tp: end - LATCH_RECORDS_READ for tp, end in ends.items()
                                if tp.topic == topics.PLATFORM_LATCH.name}
        if resume is not None and reaches(ends, resume.positions):
            self.book, self.latch, self.config = resume.book, resume.latch, resume.config
            self._config_changed = resume._config_changed  # not yet told to anyone
            self.positions = dict(resume.positions)
        self._resume = None
        await asyncio.wait_for(self._catch_up(ends), timeout)
        self._latch_now_from = {}  # followed live, every record counts (a log that starts over begins at 0)

    async def _catch_up(self, ends: dict[TopicPartition, int]) -> None:
        """Read up to ``ends``; a partition that stops advancing short of its end has ended there.

        The embedded broker, after it restarted empty, can count records in its end offset
        that no fetch returns (writes it took for a topic it did not have): waiting for them
        would keep every service from starting. Nobody can read past that point, so it is
        the end; the hardware latch does not depend on this replica.
        """
        assert self._consumer is not None
        stalled_since: float | None = None
        last: dict[TopicPartition, int] = {}
        while True:
            positions = {tp: await self._consumer.position(tp) for tp in ends}
            behind = [tp for tp, end in ends.items() if positions[tp] < end]
            if not behind:
                return
            if positions != last:
                last, stalled_since = positions, time.monotonic()
            elif time.monotonic() - stalled_since > UNREADABLE_TAIL_S:  # type: ignore[operator]
                log.warning("platform watch: %s stop short of their end offsets %s; reading on from there",
                            {str(tp): positions[tp] for tp in behind}, {str(tp): ends[tp] for tp in behind})
                return
            await self._poll(notify=False)

    async def follow_limits(self, apply: Callable[[HeaterLimits], None], default: HeaterLimits) -> None:
        """Apply the limits in force now, then each new configuration version as it is published (hot reload).

        ``default`` (the environment's) holds until ConfigurationServer has published a version.
        Call it once the watch has started: it has read the ``config`` topic by then.
        """
        async def on_config(book: ConfigBook) -> None:
            apply(book.limits(default))
            metrics.CONFIG_VERSION.labels(self.service).set(book.version)
            if book.version:
                log.warning("%s: configuration version %d in force", self.service, book.version)

        self.on_config.append(on_config)
        await on_config(self.config)

    def run_in_background(self) -> None:
        self._task = asyncio.ensure_future(self._follow())

    async def _follow(self) -> None:
        while True:
            try:
                await self._poll(notify=True)
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed callback must not end the following (the broker's failures are retried in _poll)
                log.exception("platform watch: a change callback failed; following on")

    async def _poll(self, notify: bool) -> None:
        """The next batches, through the broker dependency: backoff and breaker while the broker is away."""
        consumer = self._consumer
        assert consumer is not None
        batches = await self._broker.until_answered(
            lambda: consumer.getmany(timeout_ms=max(self.fetch_wait_ms * 2, 50)))
        was_latched = latched = self.latch.latched
        changed_by = None
        for tp, message in in_time_order(batches):
            # Whether the latch holds is asked only after a record that reached it: the
            # question takes as long as the FATAL history, and a start reads all of it.
            if (message.offset >= self._latch_now_from.get(tp, 0) or is_reset_key(message.key)) \
                    and self._apply(tp.topic, message.key, message.value):
                now = self.latch.latched
                if now != latched and changed_by is None:
                    changed_by = message
                latched = now
            self.positions[tp] = message.offset + 1
        metrics.LATCHED.labels(self.service).set(int(latched))
        if notify and latched != was_latched:
            # What a service does about the latch (the I2C adapter's trip) continues the trace
            # of the record that changed it.
            with tracing.with_parent(tracing.extract(changed_by.headers if changed_by is not None else None)):
                for callback in list(self.on_change):
                    await callback(self.latch)
        if notify and self._config_changed:
            self._config_changed = False
            for config_callback in list(self.on_config):
                await config_callback(self.config)

    def _apply(self, topic: str, key: bytes | None, payload: bytes | None) -> bool:
        """Apply one message; True when it reached the latch (a FATAL alarm or a latch record)."""
        if topic == topics.CONFIG.name:
            self._config_changed |= self.config.apply(key, payload)
            return False
        if topic != topics.PLATFORM_LATCH.name and not (key or b"").startswith(self._own_prefix):
            if topic == topics.DELETE_ALARM.name or not _may_be_fatal(payload):
                return False
        try:
            record = decode(payload, RECORD_FOR_TOPIC[topic])
        except DecodeError as exc:
            metrics.WATCH_SKIPPED.labels(self.service, topic, exc.reason).inc()
            return False
        if isinstance(record, (Alarm, AlarmClear)):
            if record.alarm_id.startswith(self.service + "/"):
                self.book.apply(record)
            if isinstance(record, Alarm) and record.is_fatal:
                self.latch.on_alarm(record)
                return True
        elif isinstance(record, PlatformLatch):
            self.latch.on_latch(record)
            return True
        return False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()


def in_time_order(batches: Mapping[TopicPartition, list[ConsumerRecord]]) -> Iterator[tuple[TopicPartition, ConsumerRecord]]:
    """The messages of several partitions merged by their timestamps, each partition's own order kept.

    A start fetches the whole of ``createAlarm`` and of ``deleteAlarm`` at once: applied one
    topic after the other, every raise of an alarm comes before its first clear, each alarm's
    timeline holds its whole history with nothing settled to fold away, and each clear
    re-derives all of it (a start's time grew with the square of the history). The alarm book
    gives the same result in any order; in time order it does the least work.
    """
    return heapq.merge(*([(tp, m) for m in messages] for tp, messages in batches.items()),
                       key=lambda item: item[1].timestamp)


def _may_be_fatal(payload: bytes | None) -> bool:
    """Cheap pre-filter: only a payload that mentions FATAL can be a FATAL alarm."""
    return payload is not None and (b'"FATAL"' in payload or b"\\u" in payload)
