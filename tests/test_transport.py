"""Integration tests for the Tansu transport (``streams.transport``) on a real broker.

The broker's ``ListOffsets(latest)`` answers the base offset of the last batch
plus one. The gate answers it right for every log its copy holds, so these tests
run the broker without the copy, as it answers where the gate stands aside
(``tests/test_gate.py`` shows the gate's answers). They produce with normal
batching (5 ms linger) to make the raw end offset fall short, then check that the
transport corrects it, that a Faust table rebuilt from an empty data directory
holds every key, and that the fetch wait set on the broker URL reaches the
aiokafka consumer.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from heater.runtime.broker import EmbeddedBroker
from streams.transport import DEFAULT_FETCH_WAIT_MS, register, true_end_offsets

REPO = Path(__file__).resolve().parents[1]
RECOVERY_KEYS = 20_000

#: A worker that rebuilds table ``kv`` from its changelog, checks every key
#: and writes the result as JSON; run as a subprocess so RocksDB, threads and
#: the event loop die with it.
WORKER = """
import json, os
import faust
from streams.transport import register

register()
app = faust.App(os.environ["APP_ID"], broker=os.environ["BROKER"], store="rocksdb://",
                datadir=os.environ["DATADIR"], broker_session_timeout=2,
                broker_heartbeat_interval=0.5, web_enabled=False, topic_partitions=1)
table = app.Table("kv", default=None, partitions=1)
N = int(os.environ["N"])


@app.task
async def check() -> None:
    await app.tables.wait_until_recovery_completed()
    missing = sum(1 for i in range(N) if table.get(f"k{i}") != i)
    wait = app.consumer._thread._consumer._fetch_max_wait_ms
    with open(os.environ["RESULT"], "w") as f:
        json.dump({"missing": missing, "fetch_wait_ms": wait}, f)
    os._exit(0)


app.main()
"""


@pytest.fixture(scope="module")
def bare_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The broker binary answering every request itself (the gate keeps no copy)."""
    with EmbeddedBroker(tmp_path_factory.mktemp("bare-broker"), mirror=False) as running:
        yield running


async def fill(bootstrap: str, topic: str, n: int, partitions: int = 1) -> Dict[int, int]:
    """Create ``topic`` and write ``n`` JSON records in normal batches; count per partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    counts: Dict[int, int] = {p: 0 for p in range(partitions)}
    try:
        for i in range(n):
            partition = i % partitions
            await producer.send(topic, key=json.dumps(f"k{i}").encode(),
                                value=json.dumps(i).encode(), partition=partition)
            counts[partition] += 1
        await producer.flush()
    finally:
        await producer.stop()
    return counts


def run_worker(broker_url: str, app_id: str, tmp_path: Path) -> Dict[str, Any]:
    """Run :data:`WORKER` with an empty data directory and return its result."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    result = tmp_path / "result.json"
    env = dict(os.environ, APP_ID=app_id, BROKER=broker_url, N=str(RECOVERY_KEYS),
               DATADIR=str(tmp_path / "data"), RESULT=str(result), PYTHONPATH=str(REPO))
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(script), "worker", "--without-web",
                                 "-l", "warn"], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert result.exists(), (tmp_path / "worker.log").read_text()[-3000:]
    return json.loads(result.read_text())


async def test_corrected_end_offsets_count_every_record(bare_broker: EmbeddedBroker) -> None:
    topic = f"offsets-{uuid.uuid4().hex[:8]}"
    counts = await fill(bare_broker.bootstrap, topic, 5_000, partitions=2)
    consumer = AIOKafkaConsumer(bootstrap_servers=bare_broker.bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in counts]
        raw = await consumer.end_offsets(tps)
        assert any(raw[tp] < counts[tp.partition] for tp in tps), "raw end offsets not short"
        corrected = await true_end_offsets(consumer, raw)
    finally:
        await consumer.stop()
    assert {tp.partition: end for tp, end in corrected.items()} == counts


async def test_table_recovers_every_key(bare_broker: EmbeddedBroker, tmp_path: Path) -> None:
    app_id = f"recover-{uuid.uuid4().hex[:8]}"
    await fill(bare_broker.bootstrap, f"{app_id}-kv-changelog", RECOVERY_KEYS)
    url = f"tansu://{bare_broker.bootstrap}?fetch_wait_ms=10"
    result = await asyncio.to_thread(run_worker, url, app_id, tmp_path)
    assert result == {"missing": 0, "fetch_wait_ms": 10}


async def test_plain_kafka_transport_misses_keys(bare_broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Control: without the correction the same recovery stops early."""
    app_id = f"plain-{uuid.uuid4().hex[:8]}"
    await fill(bare_broker.bootstrap, f"{app_id}-kv-changelog", RECOVERY_KEYS)
    result = await asyncio.to_thread(run_worker, f"kafka://{bare_broker.bootstrap}", app_id, tmp_path)
    assert result["missing"] > 0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("tansu://127.0.0.1:9092?fetch_wait_ms=10", 10),
        ("tansu://127.0.0.1:9092", DEFAULT_FETCH_WAIT_MS),
        ("kafka://127.0.0.1:9092", 1500),
    ],
)
async def test_fetch_wait_comes_from_broker_url(url: str, expected: int) -> None:
    register()
    register()
    app = faust.App(f"wait-{uuid.uuid4().hex[:8]}", broker=url)
    consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
    assert consumer._fetch_max_wait_ms == expected
