"""Test support shared by every integration test: service processes and topic I/O.

The one way to start a broker and a Vault in tests is the session fixtures in
``conftest.py``; the one way to run a service is
:class:`heater.runtime.services.ServiceProcess` (``vault=`` gives it its own AppRole there).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from heater.probes import post_json
from heater.runtime.services import ServiceProcess

__all__ = ["ServiceProcess", "produce", "consume_until", "end_offset", "run", "wait_for", "metric", "post_json", "try_get",
           "may_raise_priority"]


async def create_topic(bootstrap: str, topic: str) -> None:
    """A topic of one partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    await produce_in_order(bootstrap, [(topic, key, value) for value in values])


async def produce_in_order(bootstrap: str, records: list[tuple[str, bytes | None, bytes]]) -> None:
    """Send (topic, key, value) records one after the other, across topics, as services write them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for topic, key, value in records]
        await asyncio.gather(*futures)  # a refused send raises: a test never loses its own input silently
    finally:
        await producer.stop()


async def consume_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Any]], bool],
    timeout: float = 20.0,
    start_at: int | None = None,
) -> list[Any]:
    """Read ``topic`` from the start (or from offset ``start_at`` of its one partition) until
    ``done(messages)`` holds; return the messages."""
    consumer = AIOKafkaConsumer(
        *(() if start_at is not None else (topic,)), bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, fetch_max_wait_ms=50,
    )
    await consumer.start()
    messages: list[Any] = []
    try:
        if start_at is not None:
            consumer.assign([TopicPartition(topic, 0)])
            consumer.seek(TopicPartition(topic, 0), start_at)
        deadline = time.monotonic() + timeout
        while not done(messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: condition not met in {timeout} s; got {len(messages)} messages")
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                messages.extend(records)
        return messages
    finally:
        await consumer.stop()


async def end_offset(bootstrap: str, topic: str) -> int:
    """Where the one partition of ``topic`` ends now: what a test reads from to see only what comes next."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout} s (last value {value!r})")
        time.sleep(interval)


#: Alarm occurrences as a test compares them: occurrence id → (active, cleared_at).
Occurrences = dict[str, tuple[bool, "float | None"]]


def wait_for_history(read: Callable[[], Occurrences], want: Occurrences, timeout: float, what: str,
                     explain: Callable[[str], str] = lambda key: "") -> None:
    """Wait until ``read()`` equals ``want``; prints what was lost, doubled or wrong either way."""
    final: Occurrences = {}

    def matches() -> bool:
        final.clear()
        final.update(read())
        return final == want

    try:
        wait_for(matches, timeout, 0.5, what)
    finally:
        lost, doubled = sorted(set(want) - set(final)), sorted(set(final) - set(want))
        wrong = sorted(k for k in set(want) & set(final) if want[k] != final[k])
        print(f"\n{what}: occurrences={len(want)} lost={len(lost)} doubled={len(doubled)} wrong={len(wrong)}")
        for key in (lost + doubled + wrong)[:10]:  # to tell a lost clear from a lost raise
            print(f"   {key}{explain(key)}: expected {want.get(key)}, got {final.get(key)}")


def metric(proc: ServiceProcess, name: str, **labels: str) -> float:
    """Current value of one Prometheus sample of a service (0 when not exported yet)."""
    import urllib.request

    text = urllib.request.urlopen(proc.probe_url + "/metrics", timeout=2).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") and line.split("{", 1)[1].split("}", 1)[0] == want:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def metric_sum(url: str, name: str) -> float:
    """Sum of every sample of one metric family a service exports (``url``: its probe port), whatever its labels."""
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + "{", name + " ")))


def try_get(url: str, token: str | None = None) -> tuple[int, Any] | None:
    """GET a JSON view (with a bearer ``token`` when given); None while nothing listens there yet."""
    from heater.probes import http_json

    try:
        return http_json(url, token=token)
    except OSError:
        return None


def may_raise_priority() -> bool:
    """Whether this process holds CAP_SYS_NICE (bit 23 of its effective capabilities): root does."""
    caps = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapEff:"))
    return bool(int(caps.split()[1], 16) >> 23 & 1)
