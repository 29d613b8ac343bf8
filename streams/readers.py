"""Group-less readers: every partition of some topics, from their true end or their beginning.

Edge adapters and the heating job read *live* data only (a command or reading issued
while they were down must never drive the hardware); the platform watch reads the whole
history. Neither wants a consumer group: every instance must see every message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import kafka_clients
from streams.resilience import BROKER, Dependency
from streams.settings import Settings

log = logging.getLogger(__name__)

#: How often a reader checks that its topics' logs did not start over below its position.
REALIGN_EVERY_S = 1.0
#: How long stopping a reader may wait for the broker.
STOP_TIMEOUT_S = 3.0


class Reader(AIOKafkaConsumer):
    """A consumer that notices when a log starts over below its position.

    The local broker keeps its logs in memory: restarted, every topic begins again at
    offset 0, and a reader still fetching at offset 50,000 is answered with nothing —
    no error — until the new log grows past it, minutes later. The I2C adapter would see
    no sensor data and the heating job no relay state all that time. So once a second
    the reader compares its position with the log's end, and where the log is now
    shorter it reads the new log from its beginning: everything on it was written after
    the restart, so it is live data.
    """

    _next_check = 0.0

    async def stop(self) -> None:
        """Stop, but give up waiting on a broker that does not answer: a service on its way
        out (a failed heating job, a halting adapter) must not hang on its reader."""
        try:
            await asyncio.wait_for(super().stop(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("reader did not stop within %.0f s (broker unreachable?); leaving it", STOP_TIMEOUT_S)

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + REALIGN_EVERY_S
            await self.realign()
        return await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)

    async def realign(self) -> list[TopicPartition]:
        """Move to the beginning of every log that is now shorter than the position; which ones.

        The end is the high watermark of the last fetch answer (this broker's ListOffsets
        answer is not the end of the log; its fetch high watermark is). That watermark can
        trail the position by a record or a batch for a moment, so a log counts as started
        over only when it is more than one record short at two checks in a row.
        """
        suspects: set[TopicPartition] = getattr(self, "_suspects", set())
        short = set()
        for tp in self.assignment():
            highwater = self.highwater(tp)
            if highwater is not None and highwater < await self.position(tp) - 1:
                short.add(tp)
        restarted = sorted(short & suspects)
        self._suspects = short - suspects
        for tp in restarted:
            log.warning("%s starts over below our position (end %d < %d; a broker restart?): "
                        "reading the new log from its beginning", tp, self.highwater(tp), await self.position(tp))
            self.seek(tp, 0)
        return restarted


async def open_reader(
    bootstrap: str, topic_names: Iterable[str], *, fetch_wait_ms: int, from_end: bool, timeout: float = 15.0,
    fetch_min_bytes: int = 1,
) -> AIOKafkaConsumer:
    """A started consumer assigned every partition of ``topic_names``, positioned as asked.

    A fetch is answered once ``fetch_min_bytes`` are there or ``fetch_wait_ms`` is over:
    the default answers each record as it arrives.
    """
    consumer, _ = await open_reader_at_ends(bootstrap, topic_names, fetch_wait_ms=fetch_wait_ms, from_end=from_end,
                                            timeout=timeout, fetch_min_bytes=fetch_min_bytes)
    return consumer


async def open_reader_at_ends(
    bootstrap: str, topic_names: Iterable[str], *, fetch_wait_ms: int, from_end: bool, timeout: float = 15.0,
    fetch_min_bytes: int = 1, follow: bool = False, start_at: Mapping[TopicPartition, int] | None = None,
) -> tuple[AIOKafkaConsumer, dict[TopicPartition, int]]:
    """:func:`open_reader`, and where each partition's log ended as it opened (``follow`` as in
    :func:`streams.kafka_clients.log_ends`). With ``start_at``, every partition is read from
    there instead, if the logs reach all those positions (:func:`reaches`); if one does not,
    none is (the logs started over: what was read from them before no longer holds).

    The ends are asked before the reader is assigned anything. Once it is, its fetch waits at
    the broker for data, and the broker answers a connection's requests in the order they
    came: a question asked behind that fetch on a quiet log waits out ``fetch_wait_ms``.
    """
    settings = Settings.from_env()
    consumer = kafka_clients.consumer(
        bootstrap,
        settings=settings,
        cls=Reader if settings.profile == "local" else AIOKafkaConsumer,  # only a local log starts over
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_wait_ms,
        fetch_min_bytes=fetch_min_bytes,
        request_timeout_ms=int(timeout * 1000),
    )
    await asyncio.wait_for(consumer.start(), timeout)
    partitions = [
        TopicPartition(topic, p) for topic in topic_names for p in (consumer.partitions_for_topic(topic) or {0})
    ]
    ends = await kafka_clients.log_ends(consumer, partitions, follow=follow, settings=settings)
    consumer.assign(partitions)
    placed = dict(start_at) if start_at and reaches(ends, start_at) else {}
    for tp, offset in placed.items():
        consumer.seek(tp, offset)
    rest = [tp for tp in partitions if tp not in placed]
    if from_end:
        for tp in rest:
            consumer.seek(tp, ends.get(tp, 0))
    elif rest:
        await consumer.seek_to_beginning(*rest)
    return consumer, ends


def reaches(ends: Mapping[TopicPartition, int], positions: Mapping[TopicPartition, int]) -> bool:
    """Whether logs ending at ``ends`` still hold every one of ``positions``."""
    return all(tp in ends and offset <= ends[tp] for tp, offset in positions.items())


def follower(what: str) -> Dependency:
    """The broker as one follower sees it (its own breaker; ``what`` names it in logs)."""
    return Dependency(BROKER, name=f"broker ({what})")


async def poll(reader: AIOKafkaConsumer, timeout_ms: int, broker: Dependency) -> dict[Any, list[Any]]:
    """The next batches of a reader that follows topics for good, through ``broker`` (:func:`follower`).

    The broker may be away for a while (restarted, or the machine busy): a follower keeps
    following instead of dying with it, with backoff and a breaker instead of a fixed pause.
    """
    return await broker.until_answered(lambda: reader.getmany(timeout_ms=timeout_ms))
