"""The broker's gate on the real broker: fetches answered from its copy are the broker's records,
a long log's tail stays readable, offset queries agree with the logs, and a producer the gate
cannot read sends fetches to the broker."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path

from aiokafka import TopicPartition

from heater.runtime.broker import EmbeddedBroker
from streams import kafka_clients
from streams.topics import TopicSpec
from tests import debian


def fresh_topic(broker: EmbeddedBroker) -> str:
    from heater.runtime.broker import create_topics

    name = f"gate-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, [TopicSpec(name, purpose="gate test")])
    return name


async def read_all(bootstrap: str, topic: str, count: int, start: int = 0, timeout: float = 30.0) -> list[tuple[int, bytes | None, bytes | None, list]]:
    consumer = kafka_clients.consumer(bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, start)
        got: list[tuple[int, bytes | None, bytes | None, list]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend((r.offset, r.key, r.value, list(r.headers)) for r in records)
        return got
    finally:
        await consumer.stop()


def test_records_come_back_exactly_as_sent_whatever_the_batching(broker: EmbeddedBroker) -> None:
    topic = fresh_topic(broker)
    sent: list[tuple[bytes | None, bytes | None, list]] = []

    async def produce() -> None:
        producer = kafka_clients.producer(broker.bootstrap, linger_ms=5, acks="all")
        await producer.start()
        try:
            for index in range(300):  # single sends, then bursts that batch together
                key = None if index % 7 == 0 else f"k{index % 5}".encode()
                value = None if index % 11 == 0 and key is not None else bytes([index % 256]) * (index % 900)
                headers = [("h", str(index).encode())] if index % 3 == 0 else []
                sent.append((key, value, headers))
                future = await producer.send(topic, value=value, key=key, headers=headers)
                if index < 100:
                    await future
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(produce())
    got = asyncio.run(read_all(broker.bootstrap, topic, len(sent)))
    assert [offset for offset, *_ in got] == list(range(len(sent)))
    assert [(key, value, headers) for _, key, value, headers in got] == sent
    middle = asyncio.run(read_all(broker.bootstrap, topic, len(sent) - 150, start=150))
    assert [offset for offset, *_ in middle] == list(range(150, len(sent)))


def test_the_tail_of_a_partition_of_20000_batches_stays_readable(broker: EmbeddedBroker) -> None:
    """The broker's own fetches list every batch of a partition: at 20,000 batches a reader at
    the tail got nothing in 15 s. Through the gate it follows as on an empty log."""
    topic = fresh_topic(broker)

    async def run() -> list[int]:
        producer = kafka_clients.producer(broker.bootstrap, linger_ms=0)
        await producer.start()
        try:
            for index in range(20_000):
                await producer.send_and_wait(topic, b"%d" % index)  # one batch each
            follower = kafka_clients.consumer(broker.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
            await follower.start()
            try:
                tp = TopicPartition(topic, 0)
                follower.assign([tp])
                await follower.seek_to_end(tp)
                await follower.position(tp)
                for index in range(100):
                    await producer.send_and_wait(topic, b"new %d" % index)
                    await asyncio.sleep(0.005)
                got: list[int] = []
                deadline = time.monotonic() + 15
                while len(got) < 100 and time.monotonic() < deadline:
                    for records in (await follower.getmany(timeout_ms=200)).values():
                        got.extend(r.offset for r in records)
                return got
            finally:
                await follower.stop()
        finally:
            await producer.stop()

    assert asyncio.run(run()) == list(range(20_000, 20_100))


def test_records_from_a_librdkafka_producer_come_back_too(broker: EmbeddedBroker) -> None:
    kcat = debian.required("kcat", "kcat")
    topic = fresh_topic(broker)
    asyncio.run(_produce(broker.bootstrap, topic, [b"before"]))
    subprocess.run([kcat, "-b", broker.bootstrap, "-P", "-t", topic, "-p", "0"], input=b"from kcat\n",
                   check=True, timeout=30, capture_output=True)
    asyncio.run(_produce(broker.bootstrap, topic, [b"after"]))
    got = asyncio.run(read_all(broker.bootstrap, topic, 3))
    assert [value for _, _, value, _ in got] == [b"before", b"from kcat", b"after"]


def test_a_producer_without_answers_sends_every_fetch_to_the_broker(tmp_path: Path) -> None:
    """acks=0: the broker does not say where the records went, so the copy cannot follow."""
    with EmbeddedBroker(tmp_path) as broker:
        topic = fresh_topic(broker)
        asyncio.run(_produce(broker.bootstrap, topic, [b"before"]))
        asyncio.run(_produce(broker.bootstrap, topic, [b"unanswered"], acks=0))
        asyncio.run(_produce(broker.bootstrap, topic, [b"after"]))
        got = asyncio.run(read_all(broker.bootstrap, topic, 3))
        assert [value for _, _, value, _ in got] == [b"before", b"unanswered", b"after"]
        assert "every fetch goes to the broker from now on" in (tmp_path / "logs" / "broker.log").read_text()


def test_records_of_a_producer_gone_before_its_answer_are_served_at_once(tmp_path: Path) -> None:
    """A producer killed right after sending: the broker appended its records, and the gate
    still reads the answer, so readers get them, and what follows, without waiting."""
    from aiokafka.protocol.produce import ProduceRequest_v7
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    with EmbeddedBroker(tmp_path) as broker:
        topic = fresh_topic(broker)
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                            producer_epoch=-1, base_sequence=-1, batch_size=1 << 16)
        builder.append(0, timestamp=None, key=None, value=b"last words", headers=[])
        request = ProduceRequest_v7(None, -1, 10_000, [(topic, [(0, bytes(builder.build()))])]).encode()
        frame = struct.pack(">hhih", 0, 7, 1, 4) + b"gone" + request
        with socket.create_connection(("127.0.0.1", broker.port)) as gone:
            gone.sendall(struct.pack(">i", len(frame)) + frame)
        asyncio.run(_produce(broker.bootstrap, topic, [b"next"]))
        started = time.monotonic()
        got = asyncio.run(read_all(broker.bootstrap, topic, 2, timeout=10))
        assert [value for _, _, value, _ in got] == [b"last words", b"next"]
        assert time.monotonic() - started < 2.0, "readers waited for a gap to close"
        assert "go to the broker" not in (tmp_path / "logs" / "broker.log").read_text()


def test_offset_queries_the_copy_answers_and_those_it_passes_on_agree_with_the_logs(broker: EmbeddedBroker) -> None:
    """Ends and starts of partitions written through the gate come from its copy; a partition
    it has not seen, in the same request, from the broker; the client gets one answer."""
    written, empty = fresh_topic(broker), fresh_topic(broker)

    async def offsets() -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        consumer = kafka_clients.consumer(broker.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(written, 0), TopicPartition(empty, 0)]
            return await consumer.end_offsets(tps), await consumer.beginning_offsets(tps)
        finally:
            await consumer.stop()

    asyncio.run(_produce(broker.bootstrap, written, [b"a", b"b", b"c"]))
    assert asyncio.run(offsets()) == ({TopicPartition(written, 0): 3, TopicPartition(empty, 0): 0},
                                      {TopicPartition(written, 0): 0, TopicPartition(empty, 0): 0})
    asyncio.run(_produce(broker.bootstrap, written, [b"d", b"e"]))
    asyncio.run(_produce(broker.bootstrap, empty, [b"first"]))
    assert asyncio.run(offsets())[0] == {TopicPartition(written, 0): 5, TopicPartition(empty, 0): 1}


async def _produce(bootstrap: str, topic: str, values: list[bytes], acks: int | str = "all") -> None:
    producer = kafka_clients.producer(bootstrap, acks=acks)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


def test_readers_asking_the_same_question_again_and_again_each_get_their_own_answers(broker: EmbeddedBroker) -> None:
    """Idle readers repeat their Fetch word for word (the gate reads it once and writes the empty
    answer once); every answer still carries its own request's id, and a record arriving later
    reaches every reader."""
    topic = fresh_topic(broker)

    async def scenario() -> list[list[bytes | None]]:
        readers = [kafka_clients.consumer(broker.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5)
                   for _ in range(3)]
        tp = TopicPartition(topic, 0)
        for reader in readers:
            await reader.start()
            reader.assign([tp])
            reader.seek(tp, 0)
        try:
            idle_until = time.monotonic() + 1.0
            while time.monotonic() < idle_until:  # a few hundred identical fetches each, all empty
                for reader in readers:
                    assert not await reader.getmany(timeout_ms=20)
            producer = kafka_clients.producer(broker.bootstrap)
            await producer.start()
            try:
                await producer.send_and_wait(topic, b"at last")
            finally:
                await producer.stop()
            got: list[list[bytes | None]] = []
            for reader in readers:
                values: list[bytes | None] = []
                deadline = time.monotonic() + 10.0
                while not values and time.monotonic() < deadline:
                    values = [r.value for records in (await reader.getmany(timeout_ms=200)).values() for r in records]
                got.append(values)
            return got
        finally:
            for reader in readers:
                await reader.stop()

    assert asyncio.run(scenario()) == [[b"at last"]] * 3


def test_an_empty_fetch_answer_written_once_carries_each_requests_id() -> None:
    from heater.runtime import kafka_wire as wire

    served = [wire.Served("readings", 0, 42, b""), wire.Served("alarms", 3, 7, b"")]
    answers = [wire.fetch_answer(11, correlation_id, list(served)) for correlation_id in (1, 2, 1 << 30)]
    assert [struct.unpack_from(">i", answer, 4)[0] for answer in answers] == [1, 2, 1 << 30]
    assert answers[0][8:] == answers[1][8:] == answers[2][8:]
    assert all(struct.unpack_from(">i", answer)[0] == len(answer) - 4 for answer in answers)
