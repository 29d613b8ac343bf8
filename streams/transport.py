"""Faust transport for the embedded Tansu broker used in local runs and tests.

Tansu speaks the Kafka protocol but differs from Kafka in two ways that matter
to Faust:

* A fetch does not return early when new data arrives, so latency is about
  half the fetch wait, and Faust hard-codes a 1500 ms wait.
* ``ListOffsets(latest)`` answers the base offset of the last record *batch*
  plus one instead of the high watermark.  Faust's table recovery reads the
  changelog up to that offset, so it stops early and misses keys (or raises
  ``ConsistencyError`` when a persisted offset lies beyond it).  The broker's
  gate answers it correctly for every log its copy holds
  (:mod:`heater.runtime.log_mirror`); the tail probe here stays for the rest,
  and then finds the end in one read.

An app opts in through its broker URL, e.g.
``broker="tansu://127.0.0.1:9092?fetch_wait_ms=10"``, after :func:`register`
has been called.  Production keeps ``kafka://``: Faust's aiokafka transport, whose
consumer differs only in its drain loop (:mod:`streams.drain`) and in leaving the group
in a dead predecessor's name (:mod:`streams.group_member`), both in both profiles, so
none of the work-arounds runs against a real Kafka cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Mapping, Set, Tuple

import aiokafka
from aiokafka import TopicPartition
from aiokafka import errors as Errors
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from yarl import URL

from streams import group_member
from streams.drain import EagerDrain

__all__ = [
    "DEFAULT_FETCH_WAIT_MS",
    "SCHEME",
    "Transport",
    "fetch_wait_ms",
    "register",
    "true_end_offsets",
]

logger = logging.getLogger(__name__)

#: URL scheme under which :func:`register` installs the transport.
SCHEME = "tansu"
#: The production profile's scheme: Faust's own transport, with the eager drain.
KAFKA_SCHEME = "kafka"
#: Fetch wait used when the broker URL does not set ``fetch_wait_ms``.
DEFAULT_FETCH_WAIT_MS = 100
#: Bytes asked for per partition while probing the log tail.  One producer
#: batch is far smaller, so one probe normally reaches the end of the log.
_PROBE_MAX_BYTES = 4 * 1024 * 1024
#: Fetch wait for probes.  This broker answers an empty fetch when the wait
#: is 0 even if data exists, so the smallest non-zero wait is used.
_PROBE_WAIT_MS = 1
#: Fetch wait that confirms an empty probe answer really is the end of the log.
_CONFIRM_WAIT_MS = 100
#: Upper bound on probe rounds, so a log that keeps growing cannot pin us.
_MAX_PROBE_ROUNDS = 64


def fetch_wait_ms(urls: List[URL]) -> int:
    """Return the fetch wait requested by the first broker URL's query."""
    value = urls[0].query.get("fetch_wait_ms") if urls else None
    if value is None:
        return DEFAULT_FETCH_WAIT_MS
    wait = int(value)
    if wait < 0:
        raise ValueError(f"fetch_wait_ms must be >= 0, got {wait}")
    return wait


def fetch_min_bytes(urls: List[URL]) -> int:
    """Return the bytes a fetch waits for (at most its fetch wait), from the first broker URL's query."""
    value = urls[0].query.get("fetch_min_bytes") if urls else None
    if value is None:
        return 1
    wanted = int(value)
    if wanted < 1:
        raise ValueError(f"fetch_min_bytes must be >= 1, got {wanted}")
    return wanted


async def true_end_offsets(
    consumer: aiokafka.AIOKafkaConsumer, reported: Mapping[TP, int], *, follow: bool = True
) -> Dict[TP, int]:
    """Correct ``ListOffsets(latest)`` answers by reading the log tail.

    For each partition with a reported end ``E > 0`` the batch containing
    ``E - 1`` is fetched; the offset after its last batch, or the answer's high
    watermark if higher, is the new candidate end.  With ``follow`` (table recovery: the end must really be
    the end) reading goes on from there while records come back or the fetch
    response's high watermark says more exist, which normally takes two
    requests per leader.  Without it one round settles each partition: a live
    reader wants "now", and chasing a topic that streams sensor data only
    makes it start seconds behind.
    """
    client = consumer._client
    isolation = consumer._fetcher._isolation_level
    ends: Dict[TP, int] = dict(reported)
    pending = {tp: end - 1 for tp, end in reported.items() if end and end > 0}
    confirming: set[TP] = set()
    for _ in range(_MAX_PROBE_ROUNDS if follow else 1):
        if not pending:
            break
        # A confirming partition gets a request of its own: a fetch returns as soon as any
        # of its partitions has data, so in a shared one a busy topic would answer for it.
        by_request: Dict[Tuple[int, TP | None], Dict[str, List[Tuple[int, int, int]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for tp, offset in pending.items():
            node = client.cluster.leader_for_partition(tp)
            if node is None or node == -1:
                await client.force_metadata_update()
                node = client.cluster.leader_for_partition(tp)
            key = (node, tp if tp in confirming else None)
            by_request[key][tp.topic].append((tp.partition, offset, _PROBE_MAX_BYTES))
        # The round's requests go out together: each confirmation waits out its fetch wait
        # on a quiet log, and one after the other they added up on every start.
        requests = [
            client.send(node, FetchRequest(_CONFIRM_WAIT_MS if alone is not None else _PROBE_WAIT_MS,
                                           1, _PROBE_MAX_BYTES, isolation, list(topics.items())))
            for (node, alone), topics in by_request.items()
        ]
        for response in await asyncio.gather(*requests):
            for topic, partitions in response.topics:
                for partition, error_code, highwater, *data in partitions:
                    tp = TopicPartition(topic, partition)
                    if error_code:
                        raise Errors.for_code(error_code)(f"tail probe of {tp}")
                    records = MemoryRecords(data[-1])
                    read_to = None
                    while records.has_next():
                        batch = records.next_batch()
                        if batch is None:
                            break
                        read_to = batch.next_offset
                        ends[tp] = max(ends[tp], batch.next_offset)
                    # The fetch answer's high watermark is the true end (only ListOffsets
                    # is wrong); a probe that lands inside a batch reads nothing, so
                    # chasing the watermark by reading alone could never reach it.
                    ends[tp] = max(ends[tp], highwater)
                    if read_to is not None and highwater > 0 and read_to >= highwater:
                        # Records read up to the watermark the same answer gives: the end,
                        # seen by the broker itself; a confirming wait would add nothing.
                        pending.pop(tp, None)
                        confirming.discard(tp)
                    elif read_to is not None:
                        pending[tp] = ends[tp]
                        confirming.discard(tp)
                    elif tp not in confirming:
                        # A loaded broker may answer a 1 ms fetch empty although data
                        # exist: ask once more with a longer wait before believing it.
                        confirming.add(tp)
                    else:
                        pending.pop(tp, None)
                        confirming.discard(tp)
    else:
        if follow:
            logger.warning("End offsets still moving after %d probes", _MAX_PROBE_ROUNDS)
    changed = {tp: (reported[tp], end) for tp, end in ends.items() if end != reported[tp]}
    if changed:
        logger.debug("Corrected end offsets (reported, true): %r", changed)
    return ends


class KafkaConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, whose worker takes its dead predecessor out of the group (:mod:`streams.group_member`)."""

    async def on_start(self) -> None:
        """Start the consumer, then leave in the predecessor's name: it joins once Faust subscribes, after this."""
        await super().on_start()
        if not self.app.client_only:
            consumer = self._ensure_consumer()
            await group_member.leave_for_predecessor(consumer._client, consumer._group_id, Path(self.app.conf.datadir))

    async def on_partitions_assigned(self, assigned: Set[TP], generation_id: int = 0) -> None:
        consumer = self._ensure_consumer()
        if consumer._group_id is not None and consumer._coordinator is not None:
            group_member.record(Path(self.app.conf.datadir), consumer._group_id, consumer._coordinator.member_id)
        await super().on_partitions_assigned(assigned, generation_id)


class ConsumerThread(KafkaConsumerThread):
    """Consumer thread with a configurable fetch wait and true end offsets."""

    def _create_consumer(
        self, loop: asyncio.AbstractEventLoop
    ) -> aiokafka.AIOKafkaConsumer:
        """Build the stock consumer, then replace Faust's fixed fetch wait.

        aiokafka hands ``_fetch_max_wait_ms`` to its fetcher only in
        ``start()``, so setting it here, before start, is enough.
        """
        consumer = super()._create_consumer(loop)
        consumer._fetch_max_wait_ms = fetch_wait_ms(self.transport.url)
        consumer._fetch_min_bytes = fetch_min_bytes(self.transport.url)
        return consumer

    async def _highwaters(self, partitions: List[TP]) -> Mapping[TP, int]:
        """Return end offsets corrected for the broker's batch-based answer.

        Table recovery (active and standby) takes its target offsets from
        here; the fetch response's high watermark (``highwater()``) is
        already correct on this broker and is left alone.
        """
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return reported
        return await true_end_offsets(self._ensure_consumer(), reported)


class KafkaConsumer(EagerDrain, faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with the eager drain (:mod:`streams.drain`) and
    :class:`KafkaConsumerThread`: the production profile's."""

    def _new_consumer_thread(self) -> KafkaConsumerThread:
        return KafkaConsumerThread(self, loop=self.loop, beacon=self.beacon)


class KafkaTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`KafkaConsumer`; producer unchanged."""

    Consumer = KafkaConsumer


class Consumer(KafkaConsumer):
    """The production consumer, running :class:`ConsumerThread`."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(KafkaTransport):
    """The production transport with the Tansu work-arounds."""

    Consumer = Consumer


def register(scheme: str = SCHEME) -> None:
    """Make ``<scheme>://`` broker URLs select :class:`Transport`, and ``kafka://`` :class:`KafkaTransport`.

    Idempotent; call it before the App's transport is first used.
    """
    TRANSPORTS[scheme] = f"{__name__}:Transport"
    TRANSPORTS[KAFKA_SCHEME] = f"{__name__}:KafkaTransport"
