"""The few Kafka wire formats the local broker's gate reads and writes.

The gate (:mod:`heater.runtime.gate`) looks into four kinds of request — Produce, to keep
its copy of every log; Fetch and ListOffsets, to answer from that copy; DeleteTopics, to
forget a log — and into Produce answers, for the offsets the broker gave. Only the non-flexible versions that
aiokafka (and so Faust) speaks are read; anything else is passed through untouched, and a
Produce the gate cannot read makes it stop answering fetches (see :mod:`heater.runtime.log_mirror`).
The request and answer layouts are aiokafka's own protocol classes.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from io import BytesIO
from typing import Iterable, Iterator

from aiokafka.protocol import admin as _admin
from aiokafka.protocol import fetch as _fetch
from aiokafka.protocol import offset as _offset
from aiokafka.protocol import produce as _produce

PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
DELETE_TOPICS = 20

#: Versions read here: the non-flexible ones (flexible headers carry tagged fields).
PRODUCE_VERSIONS = range(3, 9)
FETCH_VERSIONS = range(4, 12)
DELETE_TOPICS_VERSIONS = range(0, 4)
#: v0 asks for a list of offsets per partition, a different layout; aiokafka speaks v1-v3.
LIST_OFFSETS_VERSIONS = range(1, 4)

_PRODUCE_REQUESTS = {v: getattr(_produce, f"ProduceRequest_v{v}") for v in PRODUCE_VERSIONS}
_PRODUCE_RESPONSES = {v: getattr(_produce, f"ProduceResponse_v{v}") for v in PRODUCE_VERSIONS}
_FETCH_REQUESTS = {v: getattr(_fetch, f"FetchRequest_v{v}") for v in FETCH_VERSIONS}
_FETCH_RESPONSES = {v: getattr(_fetch, f"FetchResponse_v{v}") for v in FETCH_VERSIONS}
_DELETE_TOPICS_REQUESTS = {v: getattr(_admin, f"DeleteTopicsRequest_v{v}") for v in DELETE_TOPICS_VERSIONS}
_LIST_OFFSETS_REQUESTS = {v: getattr(_offset, f"OffsetRequest_v{v}") for v in LIST_OFFSETS_VERSIONS}
_LIST_OFFSETS_RESPONSES = {v: getattr(_offset, f"OffsetResponse_v{v}") for v in LIST_OFFSETS_VERSIONS}

NO_ERROR = 0
#: ListOffsets' timestamps that ask for the log's end and its start.
LATEST = -1
EARLIEST = -2
#: A record batch's fixed header: base offset (8), length (4), leader epoch (4), magic (1),
#: crc (4), attributes (2), last offset delta (4).
_BATCH_HEADER = struct.Struct(">qiibIhi")
MAGIC_V2 = 2


class WireError(ValueError):
    """A frame that does not read as what its header says."""


@dataclass(frozen=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    body_at: int  # where the request body starts in the frame (after the client id)


def request_header(frame: bytes) -> RequestHeader:
    """The header of a request frame (no length prefix), in its non-flexible form (v1)."""
    if len(frame) < 10:
        raise WireError(f"a request of {len(frame)} bytes has no header")
    api_key, api_version, correlation_id, client_id_length = struct.unpack_from(">hhih", frame)
    return RequestHeader(api_key, api_version, correlation_id, 10 + max(client_id_length, 0))


def response_correlation_id(frame: bytes) -> int:
    if len(frame) < 4:
        raise WireError("an answer without a correlation id")
    return struct.unpack_from(">i", frame)[0]


@dataclass(frozen=True)
class ProducedPartition:
    topic: str
    partition: int
    records: bytes


@dataclass(frozen=True)
class Produce:
    acks: int
    partitions: tuple[ProducedPartition, ...]


def read_produce(header: RequestHeader, frame: bytes) -> Produce:
    request_type = _PRODUCE_REQUESTS.get(header.api_version)
    if request_type is None:
        raise WireError(f"Produce v{header.api_version} is not read here")
    request = _decode(request_type, frame, header.body_at)
    partitions = tuple(
        ProducedPartition(topic, partition, records or b"")
        for topic, entries in request.topics
        for partition, records in entries
    )
    return Produce(request.required_acks, partitions)


@dataclass(frozen=True)
class Appended:
    """One partition of a Produce answer: where the broker put the first batch, or its refusal."""

    topic: str
    partition: int
    error_code: int
    base_offset: int


def read_produce_answer(api_version: int, frame: bytes) -> list[Appended]:
    response_type = _PRODUCE_RESPONSES.get(api_version)
    if response_type is None:
        raise WireError(f"Produce v{api_version} answers are not read here")
    response = _decode(response_type, frame, 4)
    return [Appended(topic, entry[0], entry[1], entry[2]) for topic, entries in response.topics for entry in entries]


@dataclass(frozen=True)
class WantedPartition:
    topic: str
    partition: int
    offset: int
    max_bytes: int


@dataclass(frozen=True)
class Fetch:
    version: int
    max_wait_ms: int
    min_bytes: int
    max_bytes: int
    partitions: tuple[WantedPartition, ...]
    #: A fetch session (KIP-227) asks for what changed since the last answer; the gate
    #: answers only sessionless, full fetches.
    sessionless: bool


def read_fetch(header: RequestHeader, frame: bytes) -> Fetch:
    if header.api_version not in _FETCH_REQUESTS:
        raise WireError(f"Fetch v{header.api_version} is not read here")
    return _read_fetch_body(header.api_version, frame[header.body_at:])


#: How many distinct Fetch requests (and empty answers) are remembered read (and written).
#: A reader with nothing new asks the same question again and again, word for word: each
#: waiting reader of the idle platform about once a second, those on the FATAL path ten times.
REMEMBERED = 256


@functools.lru_cache(maxsize=REMEMBERED)
def _read_fetch_body(version: int, body: bytes) -> Fetch:
    request = _decode(_FETCH_REQUESTS[version], body, 0)
    wanted: list[WantedPartition] = []
    for topic, entries in request.topics:
        for entry in entries:
            # v4: (partition, offset, max); v5-v8: (partition, offset, log start, max);
            # v9+: (partition, leader epoch, offset, log start, max).
            offset = entry[1] if version < 9 else entry[2]
            wanted.append(WantedPartition(topic, entry[0], offset, entry[-1]))
    sessionless = version < 7 or (request.session_id == 0 and request.session_epoch == -1
                                  and not request.forgotten_topics_data)
    return Fetch(version, request.max_wait_time, request.min_bytes, request.max_bytes, tuple(wanted), sessionless)


@dataclass(frozen=True)
class Served:
    """One partition of a Fetch answer."""

    topic: str
    partition: int
    high_watermark: int
    records: bytes


def fetch_answer(version: int, correlation_id: int, served: list[Served]) -> bytes:
    """A Fetch answer frame (with its length prefix) in ``version``'s layout, no errors, no throttle."""
    if any(entry.records for entry in served):
        body = _fetch_answer_body(version, served)
    else:
        body = _empty_fetch_answer_body(version, tuple(served))
    return struct.pack(">ii", 4 + len(body), correlation_id) + body


@functools.lru_cache(maxsize=REMEMBERED)
def _empty_fetch_answer_body(version: int, served: tuple[Served, ...]) -> bytes:
    """An answer with no records: the same for a reader until its partitions grow."""
    return _fetch_answer_body(version, served)


def _fetch_answer_body(version: int, served: Iterable[Served]) -> bytes:
    """The answer after its correlation id."""
    by_topic: dict[str, list[tuple[object, ...]]] = {}
    for entry in served:
        fields: list[object] = [entry.partition, NO_ERROR, entry.high_watermark, entry.high_watermark]
        if version >= 5:
            fields.append(0)  # log start offset: the memory store keeps everything
        fields.append([])  # aborted transactions: none
        if version >= 11:
            fields.append(-1)  # preferred read replica: none
        fields.append(entry.records)
        by_topic.setdefault(entry.topic, []).append(tuple(fields))
    topics = list(by_topic.items())
    response_type = _FETCH_RESPONSES[version]
    head: list[object] = [0]  # throttle time
    if version >= 7:
        head += [NO_ERROR, 0]  # error, session id
    return response_type(*head, topics).encode()


@dataclass(frozen=True)
class AskedOffset:
    """One partition of a ListOffsets request: its offset at ``timestamp`` (or LATEST, EARLIEST)."""

    topic: str
    partition: int
    timestamp: int


@dataclass(frozen=True)
class ListOffsets:
    version: int
    replica_id: int
    isolation_level: int  # read (v2+) and written back as it came; v1 has none
    partitions: tuple[AskedOffset, ...]


@dataclass(frozen=True)
class FoundOffset:
    """One partition of a ListOffsets answer."""

    topic: str
    partition: int
    error_code: int
    timestamp: int
    offset: int


def read_list_offsets(header: RequestHeader, frame: bytes) -> ListOffsets:
    request_type = _LIST_OFFSETS_REQUESTS.get(header.api_version)
    if request_type is None:
        raise WireError(f"ListOffsets v{header.api_version} is not read here")
    request = _decode(request_type, frame, header.body_at)
    isolation_level = request.isolation_level if header.api_version >= 2 else 0
    asked = tuple(AskedOffset(topic, partition, timestamp) for topic, entries in request.topics
                  for partition, timestamp in entries)
    return ListOffsets(header.api_version, request.replica_id, isolation_level, asked)


def list_offsets_request(frame: bytes, header: RequestHeader, request: ListOffsets,
                         partitions: Iterable[AskedOffset]) -> bytes:
    """``frame`` asking for ``partitions`` only (same header, so the same correlation id)."""
    by_topic: dict[str, list[tuple[int, int]]] = {}
    for asked in partitions:
        by_topic.setdefault(asked.topic, []).append((asked.partition, asked.timestamp))
    head: list[object] = [request.replica_id]
    if request.version >= 2:
        head.append(request.isolation_level)
    return frame[:header.body_at] + _LIST_OFFSETS_REQUESTS[request.version](*head, list(by_topic.items())).encode()


def read_list_offsets_answer(version: int, frame: bytes) -> tuple[int, list[FoundOffset]]:
    """The throttle time (0 before v2) and the partitions of a ListOffsets answer (no length prefix)."""
    answer = _decode(_LIST_OFFSETS_RESPONSES[version], frame, 4)
    throttle = answer.throttle_time_ms if version >= 2 else 0
    return throttle, [FoundOffset(topic, *entry) for topic, entries in answer.topics for entry in entries]


def list_offsets_answer(version: int, correlation_id: int, found: Iterable[FoundOffset], throttle_ms: int = 0) -> bytes:
    """A ListOffsets answer body (no length prefix) in ``version``'s layout."""
    by_topic: dict[str, list[tuple[int, int, int, int]]] = {}
    for entry in found:
        by_topic.setdefault(entry.topic, []).append((entry.partition, entry.error_code, entry.timestamp, entry.offset))
    head: list[object] = [throttle_ms] if version >= 2 else []
    return struct.pack(">i", correlation_id) + _LIST_OFFSETS_RESPONSES[version](*head, list(by_topic.items())).encode()


def read_deleted_topics(header: RequestHeader, frame: bytes) -> list[str]:
    request_type = _DELETE_TOPICS_REQUESTS.get(header.api_version)
    if request_type is None:
        raise WireError(f"DeleteTopics v{header.api_version} is not read here")
    return list(_decode(request_type, frame, header.body_at).topics)


@dataclass(frozen=True)
class BatchHeader:
    at: int  # where the batch starts in its buffer
    size: int
    records: int


def batches(records: bytes) -> Iterator[BatchHeader]:
    """The record batches (magic v2) in a Produce's records, in order."""
    at = 0
    while at < len(records):
        if len(records) - at < _BATCH_HEADER.size:
            raise WireError(f"{len(records) - at} trailing bytes are not a record batch")
        _, length, _, magic, _, _, last_offset_delta = _BATCH_HEADER.unpack_from(records, at)
        size = 12 + length
        if magic != MAGIC_V2 or length <= 0 or at + size > len(records) or last_offset_delta < 0:
            raise WireError(f"not a v2 record batch at byte {at} (magic {magic}, length {length})")
        yield BatchHeader(at, size, last_offset_delta + 1)
        at += size


def with_base_offset(records: bytes, header: BatchHeader, base_offset: int) -> bytes:
    """One batch as the log holds it: the broker's base offset in place (outside the CRC)."""
    return struct.pack(">q", base_offset) + records[header.at + 8:header.at + header.size]


def _decode(struct_type: type, frame: bytes, at: int) -> object:
    try:
        return struct_type.decode(BytesIO(frame[at:]))
    except (ValueError, struct.error, UnicodeDecodeError, IndexError) as exc:
        raise WireError(f"{struct_type.__name__} does not read: {exc}") from exc
