"""The gate's copy of the logs, without a broker: what it serves and when it stands aside."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder, DefaultRecordBatch

from heater.runtime import kafka_wire as wire
from heater.runtime.log_mirror import LogMirror


def batch(*values: bytes) -> bytes:
    """A v2 record batch as a producer sends it (base offset 0)."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for index, value in enumerate(values):
        builder.append(index, timestamp=1_700_000_000_000 + index, key=b"k", value=value, headers=[])
    return bytes(builder.build())


def values(records: bytes) -> list[tuple[int, bytes]]:
    """(offset, value) of every record in served batches."""
    out: list[tuple[int, bytes]] = []
    at = 0
    while at < len(records):
        header = next(wire.batches(records[at:]))
        parsed = DefaultRecordBatch(records[at:at + header.size])
        out.extend((record.offset, record.value) for record in parsed)
        at += header.size
    return out


def want(offset: int, topic: str = "t", partition: int = 0, max_bytes: int = 1 << 20) -> wire.WantedPartition:
    return wire.WantedPartition(topic, partition, offset, max_bytes)


def test_serves_what_the_broker_acknowledged_in_its_offsets() -> None:
    mirror = LogMirror()
    mirror.acknowledged("t", 0, 0, batch(b"a", b"b"))
    mirror.acknowledged("t", 0, 2, batch(b"c"))
    (served,), _ = mirror.serve([want(0)], 1 << 20)
    assert served.high_watermark == 3
    assert values(served.records) == [(0, b"a"), (1, b"b"), (2, b"c")]


def test_an_offset_inside_a_batch_gets_the_whole_batch_as_kafka_does() -> None:
    mirror = LogMirror()
    mirror.acknowledged("t", 0, 0, batch(b"a", b"b", b"c"))
    mirror.acknowledged("t", 0, 3, batch(b"d"))
    (served,), _ = mirror.serve([want(1)], 1 << 20)
    assert [offset for offset, _ in values(served.records)] == [0, 1, 2, 3]  # the client skips 0


def test_at_or_past_the_end_nothing_and_no_error() -> None:
    mirror = LogMirror()
    mirror.acknowledged("t", 0, 0, batch(b"a"))
    for offset in (1, 7):
        (served,), size = mirror.serve([want(offset)], 1 << 20)
        assert (served.records, size, served.high_watermark) == (b"", 0, 1)


def test_a_partition_never_written_is_empty_and_served() -> None:
    mirror = LogMirror()
    assert mirror.can_serve([want(0, topic="quiet")])
    (served,), _ = mirror.serve([want(0, topic="quiet")], 1 << 20)
    assert (served.high_watermark, served.records) == (0, b"")


def test_answers_arriving_out_of_order_are_served_only_once_contiguous() -> None:
    mirror = LogMirror()
    mirror.acknowledged("t", 0, 1, batch(b"second"))
    (served,), _ = mirror.serve([want(0)], 1 << 20)
    assert served.high_watermark == 0 and served.records == b""
    mirror.acknowledged("t", 0, 0, batch(b"first"))
    (served,), _ = mirror.serve([want(0)], 1 << 20)
    assert values(served.records) == [(0, b"first"), (1, b"second")]


def test_offsets_that_disagree_with_the_copy_send_the_partition_to_the_broker() -> None:
    mirror = LogMirror()
    mirror.acknowledged("t", 0, 0, batch(b"a", b"b"))
    mirror.acknowledged("t", 0, 1, batch(b"x"))  # the broker says 1; the copy ends at 2
    assert not mirror.can_serve([want(0)])
    assert mirror.can_serve([want(0, partition=1)])


def test_a_gap_that_never_closes_sends_the_partition_to_the_broker() -> None:
    mirror = LogMirror(gap_timeout_s=0.05)
    mirror.acknowledged("t", 0, 5, batch(b"after a batch the gate never saw"))
    mirror.check_gaps()
    assert mirror.can_serve([want(0)])
    time.sleep(0.06)
    mirror.check_gaps()
    assert not mirror.can_serve([want(0)])


def test_reads_below_what_is_kept_go_to_the_broker() -> None:
    one = batch(b"x" * 1000)
    mirror = LogMirror(max_bytes_per_partition=3 * len(one))
    for offset in range(10):
        mirror.acknowledged("t", 0, offset, one)
    kept = mirror.partitions[("t", 0)].start
    assert 7 <= kept <= 8, "the newest batches, within the bound"
    assert not mirror.can_serve([want(0)]) and not mirror.can_serve([want(kept - 1)])
    assert mirror.can_serve([want(kept)])
    (served,), _ = mirror.serve([want(kept)], 1 << 20)
    assert [offset for offset, _ in values(served.records)] == list(range(kept, 10))


def test_deleted_topics_and_unreadable_produce_leave_fetches_to_the_broker() -> None:
    mirror = LogMirror()
    mirror.acknowledged("gone", 0, 0, batch(b"a"))
    mirror.forget_topics(["gone"])
    assert not mirror.can_serve([want(0, topic="gone")])
    mirror.acknowledged("t", 0, 0, b"\x00" * 70)  # not a v2 batch
    assert not mirror.can_serve([want(0)])
    mirror.give_up("a Produce the gate cannot read")
    assert not mirror.can_serve([want(0, topic="other")])


def test_max_bytes_bounds_the_answer_but_one_batch_always_goes() -> None:
    big = batch(b"x" * 5000)
    mirror = LogMirror()
    for offset in range(3):
        mirror.acknowledged("t", 0, offset, big)
    (served,), _ = mirror.serve([want(0, max_bytes=100)], 1 << 20)
    assert [offset for offset, _ in values(served.records)] == [0]
    (served,), _ = mirror.serve([want(0)], 2 * len(big))
    assert [offset for offset, _ in values(served.records)] == [0, 1]


async def test_a_waiting_fetch_wakes_when_its_partition_grows_not_before() -> None:
    mirror = LogMirror()
    started = asyncio.get_running_loop().time()
    await mirror.wait_for_growth([want(0)], 0.05)
    assert asyncio.get_running_loop().time() - started >= 0.045
    waiting = asyncio.ensure_future(mirror.wait_for_growth([want(0)], 10.0))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    mirror.acknowledged("t", 0, 0, batch(b"a"))
    await asyncio.wait_for(waiting, 1.0)


async def test_a_record_answers_the_readers_with_the_shortest_fetch_wait_before_the_others_are_woken() -> None:
    """A FATAL alarm wakes the I2C adapter's watch (0.1 s) and the other services' (1 s): the
    first answer is built and on its way (a second step: the gate's reply) before the herd's."""
    mirror = LogMirror()
    steps: list[str] = []

    async def reader(name: str, fetch_wait_ms: int) -> None:
        await mirror.wait_for_growth([want(0)], 10.0, fetch_wait_ms)
        steps.append(f"{name} woken")
        await asyncio.sleep(0)  # the reply that sends the answer: another turn of the loop
        steps.append(f"{name} answered")

    patient = [asyncio.ensure_future(reader(f"watch{i}", 1000)) for i in range(3)]  # waiting first
    urgent = asyncio.ensure_future(reader("i2c", 100))
    await asyncio.sleep(0.01)
    mirror.acknowledged("t", 0, 0, batch(b"FATAL"))
    await asyncio.wait_for(asyncio.gather(urgent, *patient), 1.0)
    assert steps[:2] == ["i2c woken", "i2c answered"], steps
    assert sorted(steps[2:]) == sorted(f"watch{i} {what}" for i in range(3) for what in ("woken", "answered"))


async def test_readers_with_the_same_fetch_wait_are_woken_together() -> None:
    mirror = LogMirror()
    readers = [asyncio.ensure_future(mirror.wait_for_growth([want(0)], 10.0, 100)) for _ in range(3)]
    await asyncio.sleep(0.01)
    mirror.acknowledged("t", 0, 0, batch(b"a"))
    await asyncio.sleep(0)
    assert all(reader.done() for reader in readers)


def test_fetch_answers_read_back_in_every_version_the_gate_answers() -> None:
    records = batch(b"a")
    for version in wire.FETCH_VERSIONS:
        frame = wire.fetch_answer(version, 42, [wire.Served("t", 3, 9, records)])
        body = frame[4:]
        assert wire.response_correlation_id(body) == 42
        answer = wire._FETCH_RESPONSES[version].decode(body[4:])
        ((topic, partitions),) = answer.topics
        (partition,) = partitions
        assert (topic, partition[0], partition[1], partition[2], partition[-1]) == ("t", 3, 0, 9, records)


@pytest.mark.parametrize("version", list(wire.FETCH_VERSIONS))
def test_fetch_requests_read_as_aiokafka_writes_them(version: int) -> None:
    from aiokafka.protocol.fetch import FetchRequest

    request = FetchRequest(10, 1, 1 << 20, 0, [("t", [(2, 17, 4096)])]).build(wire._FETCH_REQUESTS[version])
    header = wire._FETCH_REQUESTS[version].API_KEY.to_bytes(2, "big") + version.to_bytes(2, "big") + (5).to_bytes(4, "big")
    frame = header + (3).to_bytes(2, "big") + b"cli" + request.encode()
    fetch = wire.read_fetch(wire.request_header(frame), frame)
    assert fetch.partitions == (wire.WantedPartition("t", 2, 17, 4096),)
    assert (fetch.max_wait_ms, fetch.min_bytes, fetch.sessionless) == (10, 1, True)


def asked(timestamp: int, topic: str = "t", partition: int = 0) -> wire.AskedOffset:
    return wire.AskedOffset(topic, partition, timestamp)


def test_offset_queries_get_the_copy_s_end_and_start_and_only_what_it_knows() -> None:
    mirror = LogMirror()
    mirror.acknowledged("t", 0, 0, batch(b"a", b"b"))
    mirror.acknowledged("t", 0, 2, batch(b"c"))
    mirror.acknowledged("t", 1, 5, batch(b"after a gap"))  # offsets 0..4 not acknowledged yet
    questions = [asked(wire.LATEST), asked(wire.EARLIEST), asked(1_700_000_000_000), asked(wire.LATEST, partition=1),
                 asked(wire.LATEST, topic="never-written")]
    assert mirror.offsets(questions) == {asked(wire.LATEST): 3, asked(wire.EARLIEST): 0}
    mirror.acknowledged("t", 1, 0, batch(b"0", b"1", b"2", b"3", b"4"))
    assert mirror.offsets([asked(wire.LATEST, partition=1)]) == {asked(wire.LATEST, partition=1): 6}
    mirror.give_up("test")
    assert mirror.offsets([asked(wire.LATEST)]) == {}


@pytest.mark.parametrize("version", list(wire.LIST_OFFSETS_VERSIONS))
def test_offset_queries_split_and_answers_merge_as_aiokafka_reads_them(version: int) -> None:
    from aiokafka.protocol.offset import OffsetRequest

    isolation = 1 if version >= 2 else 0  # read_committed needs v2
    request = OffsetRequest(-1, isolation, [("t", [(0, wire.LATEST), (1, wire.EARLIEST)]), ("u", [(0, wire.LATEST)])])
    struct_type = wire._LIST_OFFSETS_REQUESTS[version]
    header = struct_type.API_KEY.to_bytes(2, "big") + version.to_bytes(2, "big") + (5).to_bytes(4, "big")
    frame = header + (3).to_bytes(2, "big") + b"cli" + request.build(struct_type).encode()
    parsed = wire.read_list_offsets(wire.request_header(frame), frame)
    assert parsed.partitions == (asked(wire.LATEST), asked(wire.EARLIEST, partition=1), asked(wire.LATEST, topic="u"))
    rest = wire.list_offsets_request(frame, wire.request_header(frame), parsed, parsed.partitions[2:])
    assert rest[:14] == frame[:14], "the same header, so the same correlation id"
    assert wire.read_list_offsets(wire.request_header(rest), rest).partitions == (asked(wire.LATEST, topic="u"),)
    assert wire.read_list_offsets(wire.request_header(rest), rest).isolation_level == isolation
    found = [wire.FoundOffset("t", 0, wire.NO_ERROR, -1, 7), wire.FoundOffset("u", 0, 3, -1, -1)]
    answer = wire.list_offsets_answer(version, 5, found, throttle_ms=2 if version >= 2 else 0)
    assert wire.response_correlation_id(answer) == 5
    assert wire.read_list_offsets_answer(version, answer) == (2 if version >= 2 else 0, found)
