"""``streams.delivery``: refused sends are resent, counted, or crash — never dropped.

The integration tests make the real broker refuse produces. The local broker accepts a
produce for a topic it does not have (a producer with cached metadata, e.g. after the broker
restarted empty, or after the topic was deleted), storing it at offsets 0.. ("ghosts");
creating the topic then resets its end offset without removing them, so the next produces
are given offsets already taken and answered ``UnknownError`` — one refused record per
ghost record, after which writes land again. :func:`poison` sets that up on purpose.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter as Tally
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import UnknownError
from prometheus_client import REGISTRY

from heater.runtime.broker import EmbeddedBroker
from streams.delivery import DeliveryFailed, deliver
from tests.support import consume_until, create_topic, run, wait_for

REPO = Path(__file__).resolve().parents[1]
GHOST_KEY = b"__ghost__"


def refusals(service: str, topic: str) -> float:
    return REGISTRY.get_sample_value("heater_produce_refusals_total", {"service": service, "topic": topic}) or 0.0


# -- deliver() with a fake send ------------------------------------------------------------


def flaky_send(failures: int, error: BaseException | None = None) -> tuple[Callable[[], Awaitable[Any]], list[int]]:
    """A send whose first ``failures`` deliveries fail; returns it and the list of attempts."""
    calls: list[int] = []

    async def send() -> "asyncio.Future[str]":
        calls.append(len(calls))
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if len(calls) <= failures:
            future.set_exception(error or UnknownError())
        else:
            future.set_result(f"offset-{len(calls)}")
        return future

    return send, calls


@pytest.mark.parametrize("failures", [0, 1, 4])
async def test_deliver_resends_until_the_broker_accepts(failures: int) -> None:
    send, calls = flaky_send(failures)
    before = refusals("unit", "fake")
    assert await deliver(send, "alarm a1", attempts=5, backoff_s=0, service="unit", topic="fake") == f"offset-{failures + 1}"
    assert len(calls) == failures + 1
    assert refusals("unit", "fake") - before == failures


async def test_deliver_raises_naming_the_record_when_every_attempt_is_refused() -> None:
    send, calls = flaky_send(10)
    before = refusals("unit", "exhausted")
    with pytest.raises(DeliveryFailed, match="command c7: not delivered after 3 attempt") as failed:
        await deliver(send, "command c7", attempts=3, backoff_s=0, service="unit", topic="exhausted")
    assert failed.value.what == "command c7" and isinstance(failed.value.last, UnknownError)
    assert len(calls) == 3 and refusals("unit", "exhausted") - before == 3


async def test_deliver_does_not_retry_a_bug_in_send() -> None:
    send, calls = flaky_send(1, TypeError("bad value"))
    with pytest.raises(TypeError):
        await deliver(send, "x", attempts=5, backoff_s=0)
    assert len(calls) == 1


async def test_deliver_backs_off_between_attempts() -> None:
    send, _ = flaky_send(2)
    started = time.monotonic()
    await deliver(send, "x", attempts=3, backoff_s=0.05)
    assert time.monotonic() - started >= 0.05 + 0.1 - 0.01  # 0.05, then doubled


# -- the real broker ------------------------------------------------------------------------


async def poison(bootstrap: str, topic: str, ghosts: int) -> None:
    """Create ``topic`` so that its next ``ghosts`` produced records are refused (see module doc)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await admin.start()
    await producer.start()
    try:
        new = NewTopic(topic, num_partitions=1, replication_factor=1, topic_configs={"cleanup.policy": "compact"})
        await admin.create_topics([new])
        await producer.send_and_wait(topic, None, key=GHOST_KEY)  # the producer now knows the topic
        await admin.delete_topics([topic])
        for _ in range(ghosts):  # accepted, though the topic is gone
            await producer.send_and_wait(topic, None, key=GHOST_KEY)
        await admin.create_topics([new])
    finally:
        await producer.stop()
        await admin.close()


def test_deliver_through_refusals_of_the_real_broker_delivers_each_effect_once(broker: EmbeddedBroker) -> None:
    topic = f"effects-{uuid.uuid4().hex[:8]}"
    ghosts = 4
    ids = [f"alarm-{i}" for i in range(10)]

    async def scenario() -> list[Any]:
        await poison(broker.bootstrap, topic, ghosts)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        await producer.start()
        try:
            for effect_id in ids:
                await deliver(lambda: producer.send(topic, effect_id.encode(), key=effect_id.encode()),
                              f"effect {effect_id}", attempts=ghosts + 2, backoff_s=0.01, service="test", topic=topic)
        finally:
            await producer.stop()
        return await consume_until(broker.bootstrap, topic, lambda ms: sum(m.key != GHOST_KEY for m in ms) >= len(ids))

    before = refusals("test", topic)
    messages = run(scenario())
    assert refusals("test", topic) - before == ghosts, "each ghost record costs exactly one refused send"
    delivered = Tally(m.key.decode() for m in messages if m.key != GHOST_KEY)
    assert delivered == Tally(ids), "every effect exactly once"


#: A Faust worker whose table is built by the ``Table`` setting; it writes ``table[k] = v``
#: for each input record and reports its refusal counter.
WORKER = """
import json, os
import faust
from prometheus_client import REGISTRY
from streams.delivery import ReliableTable
from streams.transport import register

register()
ReliableTable.resend_attempts = int(os.environ["ATTEMPTS"])
app = faust.App(os.environ["APP_ID"], broker=os.environ["BROKER"], store="rocksdb://", datadir=os.environ["DATADIR"],
                broker_session_timeout=2, broker_heartbeat_interval=0.5, web_enabled=False, topic_disable_leader=True,
                producer_linger=0.002, Table="streams.delivery:ReliableTable")
table = app.Table("kv", partitions=1, key_type=str, value_type=int)
assert type(table) is ReliableTable, type(table)
source = app.topic(os.environ["INPUT"], key_type=str, value_type=int, key_serializer="raw", value_serializer="json")


@app.agent(source)
async def write(stream):
    async for event in stream.events():
        table[event.key] = event.value


@app.timer(0.1)
async def report():
    labels = {"service": app.conf.id, "topic": table.changelog_topic.get_topic_name()}
    count = REGISTRY.get_sample_value("heater_produce_refusals_total", labels) or 0.0
    with open(os.environ["RESULT"] + ".tmp", "w") as f:
        json.dump({"refusals": count}, f)
    os.replace(os.environ["RESULT"] + ".tmp", os.environ["RESULT"])


faust.Worker(app, loglevel="info", redirect_stdouts=False).execute_from_commandline()
"""


class Worker:
    """One run of :data:`WORKER` on the session broker, with a poisoned changelog."""

    def __init__(self, broker: EmbeddedBroker, run_dir: Path, attempts: int) -> None:
        tag = uuid.uuid4().hex[:8]
        self.app_id = f"reliable-{tag}"
        self.input = f"input-{tag}"
        self.changelog = f"{self.app_id}-kv-changelog"
        self.result = run_dir / "result.json"
        self.log_path = run_dir / "worker.log"
        self.env = {**os.environ, "APP_ID": self.app_id, "BROKER": broker.url, "DATADIR": str(run_dir / "data"),
                    "INPUT": self.input, "RESULT": str(self.result), "ATTEMPTS": str(attempts),
                    "PYTHONPATH": str(REPO)}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", WORKER, "worker"], env=self.env, cwd=REPO,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self) -> None:
        """Faust's recovery must be done before the changelog is poisoned: the broker's
        answers about a poisoned log disagree (ListOffsets counts the ghosts, Fetch does not)."""
        wait_for(lambda: "Ready" in self.log() or (self.proc is not None and self.proc.poll() is not None),
                 timeout=60, what="worker ready")
        assert self.proc is not None and self.proc.poll() is None, self.log()[-3000:]

    def refusals(self) -> float:
        return json.loads(self.result.read_text())["refusals"] if self.result.exists() else 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def produce_json(bootstrap: str, topic: str, records: list[tuple[str, int]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, json.dumps(value).encode(), key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


def test_reliable_table_resends_refused_changelog_rows(broker: EmbeddedBroker, run_dir: Path) -> None:
    worker = Worker(broker, run_dir, attempts=5)
    records = [(f"k{i % 8}", i) for i in range(40)]
    expected = {key: value for key, value in records}
    run(create_topic(broker.bootstrap, worker.input))
    worker.start()
    try:
        worker.wait_ready()
        run(poison(broker.bootstrap, worker.changelog, ghosts=3))
        run(produce_json(broker.bootstrap, worker.input, records))

        def last_values(messages: list[Any]) -> dict[str, int]:
            rows = {json.loads(m.key): json.loads(m.value) for m in messages if m.key != GHOST_KEY and m.value is not None}
            return rows

        messages = run(consume_until(broker.bootstrap, worker.changelog,
                                     lambda ms: last_values(ms) == expected, timeout=60))
        assert last_values(messages) == expected, "the changelog ends with every key's last value"
        wait_for(lambda: worker.refusals() >= 1, timeout=10, what="refusal counted")
        assert worker.proc is not None and worker.proc.poll() is None, "resent rows must not crash the worker"
        assert "changelog row for" in worker.log() and "refused" in worker.log()
    finally:
        worker.stop()


def test_reliable_table_crashes_the_worker_when_a_row_stays_refused(broker: EmbeddedBroker, run_dir: Path) -> None:
    worker = Worker(broker, run_dir, attempts=2)
    run(create_topic(broker.bootstrap, worker.input))
    worker.start()
    try:
        worker.wait_ready()
        run(poison(broker.bootstrap, worker.changelog, ghosts=50))
        run(produce_json(broker.bootstrap, worker.input, [("k", 1)]))
        assert worker.proc is not None
        code = worker.proc.wait(60)
        assert code != 0, "a row refused beyond its resends must crash the process"
        log = worker.log()
        assert "refused 3 times" in log and "ChangelogRefused" in log, log[-3000:]
    finally:
        worker.stop()
