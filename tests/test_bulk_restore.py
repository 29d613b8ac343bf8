"""Integration tests for ``streams.tables.bulk_restore`` on the session broker.

Changelogs are written with normal producer batching (5 ms linger), in batches
of many records, as the services write them (the broker's own short end offsets
for such logs, and their correction, are in ``tests/test_transport.py``).
A worker subprocess then starts Faust on the data directory and reports its
table and how many changelog records Faust's own recovery had to replay.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import faust
import rocksdict
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from heater.runtime.broker import EmbeddedBroker
from streams.tables.bulk_restore import prerestore
from streams.transport import register
from tests.support import consume_until

REPO = Path(__file__).resolve().parents[1]

#: Starts Faust on DATADIR (after a bulk restore when PRERESTORE=1) and writes
#: the table, the records bulk-restored and those Faust replayed as JSON.
WORKER = """
import json, os
import faust
from streams.tables.bulk_restore import prerestore_sync
from streams.transport import register

register()
app = faust.App(os.environ["APP_ID"], broker=os.environ["BROKER"], store="rocksdb://",
                datadir=os.environ["DATADIR"], broker_session_timeout=2,
                broker_heartbeat_interval=0.5, web_enabled=False)
table = app.Table("kv", default=None, partitions=int(os.environ["PARTITIONS"]))
restored = prerestore_sync(app) if os.environ["PRERESTORE"] == "1" else {}
replayed = 0
apply_batch = table.apply_changelog_batch


def counting_apply(batch):
    global replayed
    events = list(batch)
    replayed += len(events)
    apply_batch(events)


table.apply_changelog_batch = counting_apply


class Worker(faust.Worker):
    async def on_startup_finished(self):
        await super().on_startup_finished()
        with open(os.environ["RESULT"], "w") as f:
            json.dump({"items": dict(table.items()), "replayed": replayed,
                       "prerestored": restored.get("kv", 0)}, f)
        os._exit(0)


Worker(app, loglevel="warning", redirect_stdouts=False).execute_from_commandline()
"""

Record = Tuple[str, Optional[int]]


async def write_changelog(bootstrap: str, topic: str, records: List[Record], partitions: int = 1,
                          create: bool = True) -> None:
    """Write JSON records (``None`` → tombstone), key ``k<i>`` always to partition ``i % partitions``."""
    if create:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, key=json.dumps(key).encode(),
                                value=None if value is None else json.dumps(value).encode(),
                                partition=int(key[1:]) % partitions)
        await producer.flush()
    finally:
        await producer.stop()


def expected(records: List[Record]) -> Dict[str, int]:
    state: Dict[str, Any] = {}
    for key, value in records:
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state


def run_worker(broker: Any, app_id: str, datadir: Path, *, prerestore_on: bool, partitions: int = 1) -> Dict[str, Any]:
    """Run :data:`WORKER` to Faust's Ready and return what it reported."""
    script = datadir.parent / f"{app_id}-worker.py"
    script.write_text(WORKER)
    result = datadir.parent / f"{app_id}-result.json"
    result.unlink(missing_ok=True)
    env = dict(os.environ, APP_ID=app_id, BROKER=f"tansu://{broker.bootstrap}?fetch_wait_ms=10",
               DATADIR=str(datadir), RESULT=str(result), PARTITIONS=str(partitions),
               PRERESTORE="1" if prerestore_on else "0", PYTHONPATH=str(REPO))
    log_path = datadir.parent / f"{app_id}-worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert result.exists(), log_path.read_text()[-3000:]
    return json.loads(result.read_text())


def local_app(broker: Any, app_id: str, datadir: Path, partitions: int = 1, store: str = "rocksdb://") -> faust.App:
    """The same app as :data:`WORKER`, in this process, for calling :func:`prerestore` directly."""
    register()
    app = faust.App(app_id, broker=f"tansu://{broker.bootstrap}", store=store, datadir=str(datadir))
    app.Table("kv", default=None, partitions=partitions)
    return app


def db_items(datadir: Path, partition: int = 0) -> Dict[bytes, bytes]:
    db = rocksdict.Rdict(str(datadir / "v1" / "tables" / f"kv-{partition}.db"),
                         options=rocksdict.Options(raw_mode=True))
    try:
        return dict(db.items())
    finally:
        db.close()


def new_app_id(kind: str) -> str:
    return f"bulk-{kind}-{uuid.uuid4().hex[:8]}"


async def test_empty_data_dir_is_rebuilt_before_faust_starts(broker: Any, tmp_path: Path) -> None:
    app_id = new_app_id("empty")
    records: List[Record] = [(f"k{i}", i) for i in range(20_000)]
    await write_changelog(broker.bootstrap, f"{app_id}-kv-changelog", records, partitions=2)
    result = await asyncio.to_thread(run_worker, broker, app_id, tmp_path / "data", prerestore_on=True, partitions=2)
    assert result["prerestored"] == 20_000
    assert result["replayed"] == 0
    assert result["items"] == expected(records)


async def test_tombstones_delete_keys(broker: Any, tmp_path: Path) -> None:
    app_id = new_app_id("tomb")
    records: List[Record] = [(f"k{i}", i) for i in range(5_000)]
    records += [(f"k{i}", -i) for i in range(0, 5_000, 2)]
    records += [(f"k{i}", None) for i in range(0, 5_000, 3)]
    await write_changelog(broker.bootstrap, f"{app_id}-kv-changelog", records)
    result = await asyncio.to_thread(run_worker, broker, app_id, tmp_path / "data", prerestore_on=True)
    assert result["replayed"] == 0
    assert result["items"] == expected(records)
    assert "k3" not in result["items"] and result["items"]["k2"] == -2


async def test_partially_restored_store_resumes(broker: Any, tmp_path: Path) -> None:
    app_id = new_app_id("resume")
    topic = f"{app_id}-kv-changelog"
    datadir = tmp_path / "data"
    first: List[Record] = [(f"k{i}", i) for i in range(6_000)]
    await write_changelog(broker.bootstrap, topic, first)
    assert await prerestore(local_app(broker, app_id, datadir), broker.bootstrap) == {"kv": 6_000}
    assert db_items(datadir)[b"__faust\0offset__"] == b"5999"

    second: List[Record] = [(f"k{i}", i + 1) for i in range(3_000)]
    second += [(f"k{i}", None) for i in range(3_000, 4_000)]
    second += [(f"k{i}", i) for i in range(6_000, 9_000)]
    await write_changelog(broker.bootstrap, topic, second, create=False)
    assert await prerestore(local_app(broker, app_id, datadir), broker.bootstrap) == {"kv": 7_000}

    result = await asyncio.to_thread(run_worker, broker, app_id, datadir, prerestore_on=True)
    assert result["prerestored"] == 0
    assert result["replayed"] == 0
    assert result["items"] == expected(first + second)


async def test_store_matches_what_faust_recovery_writes(broker: Any, tmp_path: Path) -> None:
    app_id = new_app_id("bytes")
    records: List[Record] = [(f"k{i}", i) for i in range(3_000)]
    records += [(f"k{i}", None) for i in range(0, 3_000, 7)] + [(f"k{i}", 0) for i in range(0, 3_000, 5)]
    await write_changelog(broker.bootstrap, f"{app_id}-kv-changelog", records)
    result = await asyncio.to_thread(run_worker, broker, app_id, tmp_path / "faust", prerestore_on=False)
    assert result["replayed"] == len(records)
    restored = await prerestore(local_app(broker, app_id, tmp_path / "bulk"), broker.bootstrap, threshold=0)
    assert restored == {"kv": len(records)}
    assert db_items(tmp_path / "faust") == db_items(tmp_path / "bulk")


async def test_memory_store_is_left_alone(broker: Any, tmp_path: Path) -> None:
    app = local_app(broker, new_app_id("memory"), tmp_path / "data", store="memory://")
    assert await prerestore(app, "127.0.0.1:1") == {}
    assert not (tmp_path / "data").exists()


async def read_changelog(bootstrap: str, topic: str, at_least: int) -> Dict[str, int]:
    """The latest value per key of a changelog holding ``at_least`` records, as a table would see it."""
    messages = await consume_until(bootstrap, topic, lambda ms: len(ms) >= at_least)
    return expected([(json.loads(m.key), None if m.value is None else json.loads(m.value)) for m in messages])


async def test_a_broker_that_lost_the_changelog_is_reseeded_from_the_local_store(broker: Any, tmp_path: Path) -> None:
    """The local broker keeps logs in memory: after its restart the store is ahead of the log.
    The worker must start (not crash on Faust's ConsistencyError) with its data, and the
    changelog must hold them again."""
    app_id = new_app_id("wiped")
    records: List[Record] = [(f"k{i}", i) for i in range(3_000)] + [(f"k{i}", None) for i in range(0, 3_000, 4)]
    await write_changelog(broker.bootstrap, f"{app_id}-kv-changelog", records, partitions=2)
    datadir = tmp_path / "data"
    await asyncio.to_thread(run_worker, broker, app_id, datadir, prerestore_on=True, partitions=2)

    wiped = await asyncio.to_thread(EmbeddedBroker(tmp_path / "wiped").start)
    try:
        result = await asyncio.to_thread(run_worker, wiped, app_id, datadir, prerestore_on=True, partitions=2)
        assert result["items"] == expected(records)
        assert await read_changelog(wiped.bootstrap, f"{app_id}-kv-changelog", len(expected(records))) == expected(records)
    finally:
        await asyncio.to_thread(wiped.stop)
