"""Group-less readers: every partition of some topics, from their true end or their beginning.

Edge adapters and the heating job read *live* data only (a command or reading issued
while they were down must never drive the hardware); the platform watch reads the whole
history. Neither wants a consumer group: every instance must see every message.
"""

from __future__ import annotations

import asyncio
from typing import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.transport import true_end_offsets


async def open_reader(
    bootstrap: str, topic_names: Iterable[str], *, fetch_wait_ms: int, from_end: bool, timeout: float = 15.0
) -> AIOKafkaConsumer:
    """A started consumer assigned every partition of ``topic_names``, positioned as asked."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_wait_ms,
        request_timeout_ms=int(timeout * 1000),
    )
    await asyncio.wait_for(consumer.start(), timeout)
    partitions = [
        TopicPartition(topic, p) for topic in topic_names for p in (consumer.partitions_for_topic(topic) or {0})
    ]
    consumer.assign(partitions)
    if from_end:
        ends = await true_end_offsets(consumer, await consumer.end_offsets(partitions))
        for tp in partitions:
            consumer.seek(tp, ends.get(tp, 0))
    else:
        await consumer.seek_to_beginning(*partitions)
    return consumer
