"""Rebuild RocksDB tables from their changelogs before the Faust worker starts.

Faust's recovery applies each changelog record through its stream machinery at
roughly 360 µs per record, so a 100k-record changelog takes ~40 s to rebuild
from an empty data directory, while a plain consumer reads the same records in
well under a second.  :func:`prerestore` copies the changelog into each table's
RocksDB partitions itself, writing exactly what ``faust.stores.rocksdb.Store``
writes (raw changelog key/value bytes, tombstones as deletes, and the offset of
the last applied record under ``Store.offset_key``).  Faust then seeks to that
persisted offset and finds nothing (or only a short tail) left to replay.

Each fetched batch and its offset go into one RocksDB ``WriteBatch``, so a crash
leaves a store whose data and persisted offset agree; the next run resumes there.
Any store other than RocksDB through ``rocksdict`` is left to Faust untouched.

A service that keeps a ledger (:mod:`streams.consistency`) holds every write it ever made
in its local stores, newer than or equal to what its changelogs hold: Faust writes RocksDB
at once and the changelog later. Replaying the changelog tail over such a store would put
some keys back to older values and leave others new — a state from no single moment. So
when the local ledger row is at least as new as the changelog's, the tail is skipped
(every table's persisted offset is set to its log's end) and the local store is the
state; the ledger then completes its last step. A store whose ledger is older than the
changelog's (another worker wrote since) is brought up to date from the changelog as usual.

A store *ahead* of its changelog (persisted offset at or past the log's end) means the
broker lost the log — the local broker keeps everything in memory, so a broker restart
does exactly that. Faust would stop with a ConsistencyError and the service would crash
in a loop; worse, the local copy would be the only one left. :func:`prerestore` re-seeds
the changelog from the local store instead (every key once, in one batch per partition)
and records the new offset, so the data survive and the next restore finds them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Dict, Iterable, List

import aiokafka
import faust
import rocksdict
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError
from faust.stores import by_url
from faust.stores.rocksdb import Store as RocksStore
from faust.tables.base import Collection
from faust.transport.drivers.aiokafka import server_list
from yarl import URL

from streams import kafka_clients
from streams.consistency import LEDGER_SUFFIX
from streams.transport import SCHEME as TANSU_SCHEME
from streams.transport import true_end_offsets

__all__ = ["DEFAULT_THRESHOLD", "prerestore", "prerestore_sync"]

logger = logging.getLogger(__name__)

#: Below this many records Faust's own recovery is fast enough (< 1 s).
DEFAULT_THRESHOLD = 2_000
#: One fetch may carry a whole partition's backlog; Faust's 1 MiB default would
#: need a round trip (at least one fetch wait) per MiB.
_MAX_PARTITION_FETCH_BYTES = 32 * 1024 * 1024
_FETCH_MAX_WAIT_MS = 10
#: Give up (and leave the rest to Faust) after this long without a record.
_STALL_TIMEOUT_S = 10.0


def _rocksdb_store(app: faust.App, table: Collection) -> RocksStore | None:
    """Build a Store the way Faust does for ``table``, or None if Faust's path differs.

    A separate instance is built (rather than ``table.data``) so the table's
    own store is not created here and bound to this short-lived event loop, and
    ``options`` is copied because ``Store.__init__`` pops keys from it.
    """
    if type(table)._new_store is not Collection._new_store:
        return None  # e.g. SetTable: the changelog holds operations, not values
    if type(table).apply_changelog_batch is not Collection.apply_changelog_batch:
        return None
    url = table._store or app.conf.store
    if URL(str(url)).scheme != "rocksdb":
        return None
    store = by_url(url)(
        url, app, table, table_name=table.name, key_type=table.key_type,
        key_serializer=table.key_serializer, value_serializer=table.value_serializer,
        value_type=table.value_type, options=dict(table.options or {}),
    )
    if not isinstance(store, RocksStore) or not store.use_rocksdict:
        return None
    if store.apply_changelog_batch.__func__ is not RocksStore.apply_changelog_batch:  # type: ignore[attr-defined]
        return None
    return store


async def _restore_table(
    consumer: aiokafka.AIOKafkaConsumer, store: RocksStore, tps: List[TopicPartition],
    starts: Dict[TopicPartition, int], ends: Dict[TopicPartition, int],
) -> int:
    """Copy ``[start, end)`` of each partition into its DB; return records applied."""
    dbs = {tp: store.rocksdb_options.open(store.partition_path(tp.partition)) for tp in tps}
    applied = 0
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, starts[tp])
        pending = set(tps)
        last_progress = time.monotonic()
        while pending:
            fetched = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in fetched.items():
                applied += _write(dbs[tp], records, store.offset_key)
                last_progress = time.monotonic()
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
            if pending and time.monotonic() - last_progress > _STALL_TIMEOUT_S:
                logger.warning("bulk restore stalled on %s; Faust recovery takes over", sorted(pending))
                break
    finally:
        for db in dbs.values():
            db.close()
    return applied


def _write(db: rocksdict.Rdict, records: Iterable[aiokafka.ConsumerRecord], offset_key: bytes) -> int:
    """Apply records like ``Store.apply_changelog_batch``, offset in the same atomic batch."""
    batch = rocksdict.WriteBatch(raw_mode=True)
    count, last = 0, None
    for record in records:
        last = record.offset
        if record.key is None:
            continue
        if record.value is None:
            batch.delete(record.key)
        else:
            batch.put(record.key, record.value)
        count += 1
    if last is not None:
        batch.put(offset_key, str(last).encode())
        db.write(batch)
    return count


def _local_partitions(store: RocksStore, partitions: int) -> list[int]:
    return [p for p in range(partitions) if store.partition_path(p).exists()]


def _local_items(store: RocksStore, partition: int) -> list[tuple[bytes, bytes]]:
    db = store.rocksdb_options.open(store.partition_path(partition))
    try:
        return [(k, v) for k, v in db.items() if k != store.offset_key]
    finally:
        db.close()


def _set_persisted_offset(store: RocksStore, partition: int, offset: int) -> None:
    db = store.rocksdb_options.open(store.partition_path(partition))
    try:
        db.put(store.offset_key, str(offset).encode())
    finally:
        db.close()


async def _ensure_changelog(app: faust.App, bootstrap: str | List[str], table: Collection, topic: str) -> None:
    """Create a lost changelog topic as Faust declares it (compacted, the table's partitions)."""
    admin = kafka_clients.admin(bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            config = {"cleanup.policy": "compact"}
            await admin.create_topics([NewTopic(topic, table.partitions or app.conf.topic_partitions, 1, topic_configs=config)])
    finally:
        await admin.close()


async def _reseed(app: faust.App, bootstrap: str | List[str], store: RocksStore, tp: TopicPartition) -> int:
    """Write the local store's items to its (lost) changelog partition; return how many."""
    items = _local_items(store, tp.partition)
    if not items:
        _clear_persisted_offset(store, tp.partition)  # nothing to keep: read the new log from its start
        return 0
    producer = kafka_clients.producer(bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(tp.topic, key=k, value=v, partition=tp.partition) for k, v in items]
        last = -1
        for future in futures:
            last = max(last, (await future).offset)
    finally:
        await producer.stop()
    _set_persisted_offset(store, tp.partition, last)
    return len(items)


def _clear_persisted_offset(store: RocksStore, partition: int) -> None:
    db = store.rocksdb_options.open(store.partition_path(partition))
    try:
        db.delete(store.offset_key)
    finally:
        db.close()


def _ledger_seq(raw: bytes | None) -> int:
    try:
        return int(json.loads(raw)["seq"]) if raw else -1
    except (ValueError, KeyError, TypeError):
        return -1


def _local_ledger_seq(store: RocksStore) -> int:
    if not store.partition_path(0).exists():
        return -1
    items = _local_items(store, 0)
    return max((_ledger_seq(v) for _, v in items), default=-1)


async def _changelog_ledger_seq(consumer: aiokafka.AIOKafkaConsumer, tp: TopicPartition, end: int) -> int:
    """The ``seq`` of the newest ledger row in the changelog (-1 when it holds none)."""
    if end <= 0:
        return -1
    consumer.assign([tp])
    consumer.seek(tp, end - 1)
    deadline = time.monotonic() + _STALL_TIMEOUT_S
    while time.monotonic() < deadline:
        fetched = await consumer.getmany(tp, timeout_ms=500)
        records = [r for r in fetched.get(tp, []) if r.offset >= end - 1]
        if records:
            return _ledger_seq(max(records, key=lambda r: r.offset).value)
    raise asyncio.TimeoutError(f"cannot read the last ledger row of {tp}")


def _persisted_offset(store: RocksStore, partition: int) -> int | None:
    """``Store.persisted_offset`` without keeping the DB open (Faust opens it later)."""
    db = store.rocksdb_options.open(store.partition_path(partition))
    try:
        raw = db.get(store.offset_key)
    finally:
        db.close()
    return None if raw is None else int(raw)


async def prerestore(app: faust.App, bootstrap: str | List[str], *, threshold: int = DEFAULT_THRESHOLD) -> Dict[str, int]:
    """Bulk-load every RocksDB table's changelog backlog larger than ``threshold``.

    Run before the worker starts: no consumer group is involved.  Returns the
    number of records applied per table name (tables left to Faust are absent).
    """
    stores = {table.name: (table, store) for table in app.tables.values()
              if (store := _rocksdb_store(app, table)) is not None}
    if not stores:
        return {}
    conf = app.conf
    consumer = kafka_clients.consumer(
        bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
        max_partition_fetch_bytes=_MAX_PARTITION_FETCH_BYTES, fetch_max_bytes=2 * _MAX_PARTITION_FETCH_BYTES,
        isolation_level="read_committed" if app.in_transaction else "read_uncommitted",
        request_timeout_ms=int(conf.broker_request_timeout * 1000),
    )
    await consumer.start()
    restored: Dict[str, int] = {}
    local_profile = conf.broker[0].scheme == TANSU_SCHEME
    try:
        cluster = await consumer._client.fetch_all_metadata()
        topics = {name: table.changelog_topic.get_topic_name() for name, (table, _) in stores.items()}
        partitions = {name: [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
                      for name, topic in topics.items()}
        # Every changelog's end in one go: on the local broker each end is confirmed by a
        # fetch that waits on a quiet log, and table by table those waits added up.
        every_tp = [tp for tps in partitions.values() for tp in tps]
        all_ends = await _end_offsets(consumer, every_tp, local_profile) if every_tp else {}
        all_firsts = await consumer.beginning_offsets(every_tp) if every_tp else {}
        trust_local = await _local_is_newest(consumer, stores, partitions, all_ends)
        for name, (table, store) in stores.items():
            topic, tps = topics[name], partitions[name]
            if tps:
                ends = {tp: all_ends[tp] for tp in tps}
                firsts = {tp: all_firsts[tp] for tp in tps}
            else:
                local = _local_partitions(store, table.partitions or conf.topic_partitions)
                if not local:
                    continue  # no changelog and no local data: nothing to restore
                await _ensure_changelog(app, bootstrap, table, topic)
                tps = [TopicPartition(topic, p) for p in local]
                ends = await _end_offsets(consumer, tps, local_profile)
                firsts = await consumer.beginning_offsets(tps)
            starts: Dict[TopicPartition, int] = {}
            for tp in tps:
                local = store.partition_path(tp.partition).exists()
                persisted = _persisted_offset(store, tp.partition) if local else None
                if local_profile and persisted is not None and persisted >= ends[tp]:
                    count = await _reseed(app, bootstrap, store, tp)
                    logger.warning("changelog %s ends at %d but the local store holds offset %d: the broker lost it; "
                                   "re-seeded %d key(s) from the local store", tp, ends[tp], persisted, count)
                    persisted = _persisted_offset(store, tp.partition)
                    ends[tp] = -1 if persisted is None else persisted + 1
                elif trust_local and local and ends[tp] > 0:
                    if persisted is None or persisted < ends[tp] - 1:
                        logger.info("%s: the local store holds every write; changelog tail %s..%d skipped",
                                    tp, "start" if persisted is None else persisted + 1, ends[tp] - 1)
                    _set_persisted_offset(store, tp.partition, ends[tp] - 1)
                    persisted = ends[tp] - 1
                starts[tp] = max(firsts[tp], -1 if persisted is None else persisted + 1)
            todo = [tp for tp in tps if ends[tp] - starts[tp] > threshold]
            if not todo:
                continue
            started = time.monotonic()
            restored[name] = await _restore_table(consumer, store, todo, starts, ends)
            elapsed = time.monotonic() - started
            logger.info("bulk restore %s: %d records in %.2f s (%.0f records/s)",
                        name, restored[name], elapsed, restored[name] / max(elapsed, 1e-9))
    finally:
        await consumer.stop()
    return restored


async def _end_offsets(consumer: aiokafka.AIOKafkaConsumer, tps: List[TopicPartition], local_profile: bool) -> Dict[TopicPartition, int]:
    ends = await consumer.end_offsets(tps)
    return await true_end_offsets(consumer, ends) if local_profile else dict(ends)


async def _local_is_newest(consumer: aiokafka.AIOKafkaConsumer, stores: Dict[str, Any],
                           partitions: Dict[str, List[TopicPartition]], ends: Dict[TopicPartition, int]) -> bool:
    """True when the service's local ledger row is at least as new as its changelog's."""
    for name, (table, store) in stores.items():
        if not name.endswith(LEDGER_SUFFIX):
            continue
        local_seq = _local_ledger_seq(store)
        if local_seq < 0:
            return False
        if not partitions[name]:
            return True  # the broker lost the changelog: the local store is all there is
        tp = TopicPartition(table.changelog_topic.get_topic_name(), 0)
        remote_seq = await _changelog_ledger_seq(consumer, tp, ends[tp])
        consumer.unsubscribe()
        if local_seq < remote_seq:
            logger.warning("%s: the local ledger (step %d) is older than the changelog's (step %d): "
                           "restoring from the changelog", name, local_seq, remote_seq)
            return False
        return True
    return False


def prerestore_sync(app: faust.App, *, threshold: int = DEFAULT_THRESHOLD) -> Dict[str, int]:
    """Run :func:`prerestore` in its own event loop, for use before ``Worker`` is built.

    A broker that cannot be reached is logged and ignored: Faust's recovery
    remains correct on its own, only slower.
    """
    bootstrap = server_list(app.conf.broker, 9092)
    try:
        return asyncio.run(prerestore(app, bootstrap, threshold=threshold))
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        logger.warning("bulk restore skipped, Faust recovery will rebuild the tables: %s", exc)
        return {}
    finally:
        asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its own; Faust needs one
