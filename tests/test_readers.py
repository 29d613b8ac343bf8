"""Group-less readers across a broker restart: the memory-backed broker comes back empty,
and a reader far ahead of the new log must pick up what is written to it at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from heater.runtime.broker import EmbeddedBroker
from streams.readers import open_reader
from streams.topics import TopicSpec
from tests.support import produce

TOPIC = TopicSpec("readerRestart", retention_ms=60_000, purpose="reader restart test")


async def read(consumer, count: int, timeout: float = 10.0) -> list[bytes]:
    values: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(values) < count and asyncio.get_running_loop().time() < deadline:
        for records in (await consumer.getmany(timeout_ms=100)).values():
            values.extend(r.value for r in records)
    return values


async def test_a_reader_follows_a_log_that_starts_over_after_a_broker_restart(tmp_path: Path) -> None:
    first = await asyncio.to_thread(EmbeddedBroker(tmp_path / "a").start, topics=[TOPIC])
    port = first.port
    await produce(first.bootstrap, TOPIC.name, [b"old-%d" % i for i in range(200)])
    consumer = await open_reader(first.bootstrap, [TOPIC.name], fetch_wait_ms=10, from_end=False)
    second: EmbeddedBroker | None = None
    try:
        assert len(await read(consumer, 200)) == 200
        await asyncio.to_thread(first.stop)
        second = await asyncio.to_thread(EmbeddedBroker(tmp_path / "b", port=port).start, topics=[TOPIC])
        await produce(second.bootstrap, TOPIC.name, [b"new-%d" % i for i in range(3)])
        assert await read(consumer, 3) == [b"new-0", b"new-1", b"new-2"]
    finally:
        await consumer.stop()
        if second is not None:
            await asyncio.to_thread(second.stop)
