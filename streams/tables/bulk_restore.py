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

A store *ahead* of its changelog (persisted offset at or past the log's end) means the
broker lost the log — the local broker keeps everything in memory, so a broker restart
does exactly that. Faust would stop with a ConsistencyError and the service would crash
in a loop; worse, the local copy would be the only one left. :func:`prerestore` re-seeds
the changelog from the local store instead (every key once, in one batch per partition)
and records the new offset, so the data survive and the next restore finds them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Dict, Iterable, List

import aiokafka
import faust
import rocksdict
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from faust.stores import by_url
from faust.stores.rocksdb import Store as RocksStore
from faust.tables.base import Collection
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list
from yarl import URL

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
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                **credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context))
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
        return 0
    producer = aiokafka.AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, acks="all",
        **credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context),
    )
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
    consumer = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
        max_partition_fetch_bytes=_MAX_PARTITION_FETCH_BYTES, fetch_max_bytes=2 * _MAX_PARTITION_FETCH_BYTES,
        isolation_level="read_committed" if app.in_transaction else "read_uncommitted",
        request_timeout_ms=int(conf.broker_request_timeout * 1000),
        **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
    )
    await consumer.start()
    restored: Dict[str, int] = {}
    try:
        cluster = await consumer._client.fetch_all_metadata()
        for name, (table, store) in stores.items():
            topic = table.changelog_topic.get_topic_name()
            tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
            if not tps:
                local = _local_partitions(store, table.partitions or conf.topic_partitions)
                if not local:
                    continue  # no changelog and no local data: nothing to restore
                await _ensure_changelog(app, bootstrap, table, topic)
                tps = [TopicPartition(topic, p) for p in local]
            ends = await consumer.end_offsets(tps)
            if conf.broker[0].scheme == TANSU_SCHEME:
                ends = await true_end_offsets(consumer, ends)
            firsts = await consumer.beginning_offsets(tps)
            starts: Dict[TopicPartition, int] = {}
            for tp in tps:
                persisted = _persisted_offset(store, tp.partition) if store.partition_path(tp.partition).exists() else None
                if persisted is not None and persisted >= ends[tp]:
                    count = await _reseed(app, bootstrap, store, tp)
                    logger.warning("changelog %s ends at %d but the local store holds offset %d: the broker lost it; "
                                   "re-seeded %d key(s) from the local store", tp, ends[tp], persisted, count)
                    persisted = _persisted_offset(store, tp.partition)
                    ends[tp] = (persisted or 0) + 1
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
