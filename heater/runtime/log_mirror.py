"""The gate's copy of the local broker's logs, from which it answers fetches and offset queries.

Why: the broker's memory storage keeps each record batch as an object of its own and lists
every object of a partition on each fetch that returns data (measured: ~1 µs per batch per
fetch). The CAN adapter writes some 40 batches a second to ``sensorData`` and five services
follow it at a 10 ms fetch wait, so after five minutes the broker used a whole core, the
bank was 17 s behind, and after about fifteen no reader kept up at all. Every record reaches
the broker through the gate, so the gate can keep what it acknowledged and answer fetches
itself, in time independent of the log's length, and as soon as data arrives (the broker
always waits out the fetch wait).

The copy only ever serves what the broker acknowledged, in the broker's offsets. It stays
out of the way wherever it is not sure:

- a partition whose offsets disagree with the broker's (an answer the gate did not expect,
  or a gap that does not close) is *unmirrored* for good: fetches of it go to the broker;
- a Produce the gate cannot read, or one with ``acks=0`` (no answer, so no offsets),
  unmirrors everything;
- each partition keeps its newest ``max_bytes_per_partition``; reading below that goes to
  the broker.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from dataclasses import dataclass, field
from typing import Iterable

from heater.runtime.kafka_wire import EARLIEST, LATEST, AskedOffset, BatchHeader, Served, WantedPartition, batches, with_base_offset

log = logging.getLogger(__name__)

#: Newest bytes kept per partition (older reads are the broker's).
MAX_BYTES_PER_PARTITION = 32 * 1024 * 1024
#: How long an acknowledged batch may wait for the one before it (answers on different
#: connections arrive in any order, within milliseconds) before the partition is given up
#: as inconsistent. Readers of the partition see nothing new meanwhile.
GAP_TIMEOUT_S = 0.5

Key = tuple[str, int]


@dataclass
class PartitionLog:
    """One partition's acknowledged batches, contiguous from ``start`` to ``high``."""

    start: int = 0
    high: int = 0
    #: Each batch's next offset (ascending), and the batches themselves.
    ends: list[int] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    size: int = 0
    #: Acknowledged batches beyond a gap: base offset → (next offset, batch, since).
    waiting: dict[int, tuple[int, bytes, float]] = field(default_factory=dict)

    def read(self, offset: int, max_bytes: int) -> bytes:
        """Batches from the one holding ``offset``, up to ``max_bytes`` (at least one batch)."""
        first = bisect.bisect_right(self.ends, offset)
        out: list[bytes] = []
        total = 0
        for index in range(first, len(self.data)):
            batch = self.data[index]
            if out and total + len(batch) > max_bytes:
                break
            out.append(batch)
            total += len(batch)
        return b"".join(out)


class LogMirror:
    def __init__(self, max_bytes_per_partition: int = MAX_BYTES_PER_PARTITION,
                 gap_timeout_s: float = GAP_TIMEOUT_S) -> None:
        self.max_bytes_per_partition = max_bytes_per_partition
        self.gap_timeout_s = gap_timeout_s
        self.partitions: dict[Key, PartitionLog] = {}
        self.unmirrored: set[Key] = set()
        self.given_up: str | None = None  # why every fetch goes to the broker, once it does
        #: Fetches waiting for a partition to grow, with each one's fetch wait (ms).
        self._waiters: dict[Key, dict[asyncio.Future[None], int]] = {}

    # -- what the broker acknowledged -----------------------------------------------------

    def acknowledged(self, topic: str, partition: int, base_offset: int, records: bytes) -> None:
        """The broker appended ``records`` (one Produce partition) at ``base_offset``."""
        key = (topic, partition)
        if self.given_up or key in self.unmirrored:
            return
        log_ = self.partitions.setdefault(key, PartitionLog())
        try:
            headers: list[BatchHeader] = list(batches(records))
        except ValueError as exc:
            self.unmirror(key, f"records not read ({exc})")
            return
        now = time.monotonic()
        offset = base_offset
        for header in headers:
            batch = with_base_offset(records, header, offset)
            if offset < log_.high or offset in log_.waiting:
                self.unmirror(key, f"the broker put a batch at {offset}, below the copy's end {log_.high}")
                return
            log_.waiting[offset] = (offset + header.records, batch, now)
            offset += header.records
        self._advance(key, log_)

    def _advance(self, key: Key, log_: PartitionLog) -> None:
        moved = False
        while log_.high in log_.waiting:
            end, batch, _ = log_.waiting.pop(log_.high)
            if not log_.data:
                log_.start = log_.high
            log_.ends.append(end)
            log_.data.append(batch)
            log_.size += len(batch)
            log_.high = end
            moved = True
        if log_.size > self.max_bytes_per_partition and len(log_.data) > 1:
            # Down to seven eighths in one cut: one list deletion per many batches, not one each.
            keep_at_most = self.max_bytes_per_partition - self.max_bytes_per_partition // 8
            dropped = 0
            while log_.size > keep_at_most and dropped < len(log_.data) - 1:
                log_.size -= len(log_.data[dropped])
                dropped += 1
            log_.start = log_.ends[dropped - 1]
            del log_.ends[:dropped], log_.data[:dropped]
        if moved:
            self._wake(key)

    def check_gaps(self) -> None:
        """Give up partitions whose gap did not close in time (a batch the gate never saw)."""
        now = time.monotonic()
        for key, log_ in list(self.partitions.items()):
            if log_.waiting and any(now - since > self.gap_timeout_s for _, _, since in log_.waiting.values()):
                self.unmirror(key, f"offsets {log_.high}.. never acknowledged through the gate")

    # -- giving up ------------------------------------------------------------------------

    def unmirror(self, key: Key, why: str) -> None:
        if key in self.unmirrored:
            return
        log.warning("fetches of %s[%d] go to the broker from now on: %s", key[0], key[1], why)
        self.unmirrored.add(key)
        self.partitions.pop(key, None)
        self._wake(key)

    def forget_topics(self, topics: Iterable[str]) -> None:
        """Deleted topics: what the gate kept of them is no longer the broker's."""
        names = set(topics)
        for key in [k for k in self.partitions if k[0] in names]:
            self.unmirror(key, "topic deleted")

    def give_up(self, why: str) -> None:
        if self.given_up is None:
            log.warning("every fetch goes to the broker from now on: %s", why)
            self.given_up = why
            self.partitions.clear()
            for key in list(self._waiters):
                self._wake(key)

    # -- answering fetches ----------------------------------------------------------------

    def can_serve(self, wanted: Iterable[WantedPartition]) -> bool:
        """True when every partition asked for is in the copy from the offset asked for.

        A partition the copy has never seen is empty: every record reaches the broker
        through the gate, and the gate has been there since the broker started.
        """
        if self.given_up:
            return False
        for want in wanted:
            key = (want.topic, want.partition)
            if key in self.unmirrored:
                return False
            log_ = self.partitions.get(key)
            if log_ is not None and log_.data and want.offset < log_.start:
                return False
        return True

    def serve(self, wanted: Iterable[WantedPartition], max_bytes: int) -> tuple[list[Served], int]:
        """What the copy holds for ``wanted`` (at least one batch overall), and its size."""
        served: list[Served] = []
        total = 0
        for want in wanted:
            log_ = self.partitions.get((want.topic, want.partition))
            records = b""
            high = 0
            if log_ is not None:
                high = log_.high
                if want.offset < log_.high and (total < max_bytes or total == 0):
                    records = log_.read(want.offset, min(want.max_bytes, max(max_bytes - total, 1)))
            served.append(Served(want.topic, want.partition, high, records))
            total += len(records)
        return served, total

    def offsets(self, asked: Iterable[AskedOffset]) -> dict[AskedOffset, int]:
        """The ends (LATEST) and starts (EARLIEST) the copy knows for certain, of those asked.

        Why: the broker's memory storage answers ListOffsets in time proportional to the
        partition's batch count (measured on ``sensorData``, a record a batch: 1.2 ms empty,
        23 ms at 20,000 records, 58 ms at 60,000), every start of a service asks many times,
        so starts grew slower the longer the platform ran; and for ``latest`` it answers the
        last batch's base offset plus one, short of the end (:mod:`streams.transport`).

        A partition the copy holds had records acknowledged since the broker started, so it
        exists; with no batch waiting behind a gap, its end is the copy's end. The memory
        store keeps every record, so a log starts at 0 (as fetch answers say). A time, a
        partition the copy has not seen (it may not exist) or one given up: the broker answers.
        """
        if self.given_up:
            return {}
        known: dict[AskedOffset, int] = {}
        for question in asked:
            log_ = self.partitions.get((question.topic, question.partition))
            if log_ is None or log_.waiting:
                continue
            if question.timestamp == LATEST:
                known[question] = log_.high
            elif question.timestamp == EARLIEST:
                known[question] = 0
        return known

    async def wait_for_growth(self, wanted: Iterable[WantedPartition], timeout: float, fetch_wait_ms: int = 0) -> None:
        """Return when any of ``wanted`` grows (or leaves the copy), or after ``timeout``.

        Among the fetches a record wakes, those with the shortest fetch wait go first
        (:meth:`_wake`): ``fetch_wait_ms`` is how long the reader would have waited.
        """
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        keys = {(want.topic, want.partition) for want in wanted}
        for key in keys:
            self._waiters.setdefault(key, {})[woken] = fetch_wait_ms
        timer = loop.call_later(max(timeout, 0.0), _resolve, woken)
        try:
            await woken
        finally:
            timer.cancel()
            for key in keys:
                waiting = self._waiters.get(key)
                if waiting is not None:
                    waiting.pop(woken, None)
                    if not waiting:
                        del self._waiters[key]

    def _wake(self, key: Key) -> None:
        """Answer the fetches with the shortest fetch wait now, the others one turn of the loop later.

        A reader's fetch wait says how soon it wants a record: the I2C adapter's FATAL watch
        (and every other reader on the FATAL path) waits a tenth of a second, the watches of
        the services off the path a second. A FATAL alarm wakes them all at once; woken
        together, each answer was built before the first went out, and the I2C adapter's came
        after the herd's. One turn later, the first answers are on their way before the rest
        are built, and their readers ahead of the herd for a core.
        """
        waiting = self._waiters.pop(key, None)
        if not waiting:
            return
        first = min(waiting.values())
        later = [woken for woken, wait_ms in waiting.items() if wait_ms > first]
        for woken, wait_ms in waiting.items():
            if wait_ms == first:
                _resolve(woken)
        if later:
            asyncio.get_running_loop().call_soon(_resolve_all, later)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resolve_all(futures: Iterable[asyncio.Future[None]]) -> None:
    for future in futures:
        _resolve(future)
