"""Following a long log on the local broker: tail latency and broker CPU against log length.

Like ``sensorData`` under ``heater up``: one partition grows by 40 single-record batches a
second and six readers follow its tail at a 10 ms fetch wait. The partition is first filled
to each length in ``LENGTHS``; at each, the readers follow for ``FOLLOW_S`` seconds and the
bench reports produce → read latency, the share of records delivered in time, and the CPU of
the broker's process tree (binary and gate). Measured twice: with the gate answering fetches
from its copy (the platform's setting) and, as the baseline, with every fetch passed to the
broker binary (``--no-log-mirror``).

Ends with one JSON line. Run: ``python bench/broker_tail.py`` (about two minutes).
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import TopicPartition  # noqa: E402

from bench.procstats import cpu_seconds, tree_pids  # noqa: E402
from bench.stats import percentile  # noqa: E402
from heater.runtime.broker import EmbeddedBroker, create_topics  # noqa: E402
from streams import kafka_clients  # noqa: E402
from streams.topics import TopicSpec  # noqa: E402

TOPIC = "tail-bench"
LENGTHS = (0, 5_000, 10_000, 20_000)
READERS = 6
RATE_PER_S = 40.0
FOLLOW_S = 6.0
FETCH_WAIT_MS = 10


async def follow(bootstrap: str, stop: asyncio.Event, latencies: list[float]) -> None:
    reader = kafka_clients.consumer(bootstrap, enable_auto_commit=False, fetch_max_wait_ms=FETCH_WAIT_MS)
    await reader.start()
    try:
        tp = TopicPartition(TOPIC, 0)
        reader.assign([tp])
        await reader.seek_to_end(tp)
        await reader.position(tp)
        while not stop.is_set():
            for records in (await reader.getmany(timeout_ms=100)).values():
                now = time.time()
                latencies.extend(now - struct.unpack(">d", r.value[:8])[0] for r in records if r.value)
    finally:
        await reader.stop()


async def measure(broker: EmbeddedBroker, pids: list[int]) -> list[dict[str, float]]:
    producer = kafka_clients.producer(broker.bootstrap, linger_ms=0)
    await producer.start()
    rows = []
    have = 0
    try:
        for length in LENGTHS:
            for _ in range(length - have):
                await producer.send_and_wait(TOPIC, b"fill")
            have = length
            stop, latencies = asyncio.Event(), []
            readers = [asyncio.ensure_future(follow(broker.bootstrap, stop, latencies)) for _ in range(READERS)]
            await asyncio.sleep(1.0)
            cpu_before, started, sent = cpu_seconds(pids), time.monotonic(), 0
            while time.monotonic() - started < FOLLOW_S:
                await producer.send(TOPIC, struct.pack(">d", time.time()) + b"x" * 32)
                sent += 1
                await asyncio.sleep(1 / RATE_PER_S)
            await asyncio.sleep(1.0)
            cpu = (cpu_seconds(pids) - cpu_before) / (time.monotonic() - started)
            stop.set()
            await asyncio.gather(*readers)
            have += sent
            ms = [x * 1000 for x in latencies]
            row = {"batches": length, "p50_ms": _ms(percentile(ms, 50)), "p99_ms": _ms(percentile(ms, 99)),
                   "delivered_pct": round(100 * len(ms) / (sent * READERS), 1), "cpu_pct": round(100 * cpu, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        await producer.stop()
    return rows


def _ms(value: float) -> float | None:
    """Rounded, or None when nothing arrived (JSON has no NaN)."""
    return None if value != value else round(value, 1)


def run(mirror: bool, root: Path) -> list[dict[str, float]]:
    with EmbeddedBroker(root, mirror=mirror) as broker:
        create_topics(broker.bootstrap, [TopicSpec(TOPIC, purpose="bench")])
        pids = tree_pids(broker.process.pid)
        return asyncio.run(measure(broker, pids))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-tail-") as tmp:
        print("through the gate's copy:", flush=True)
        mirrored = run(True, Path(tmp) / "mirror")
        print("baseline, every fetch to the broker binary:", flush=True)
        baseline = run(False, Path(tmp) / "baseline")
    last, base = mirrored[-1], baseline[-1]
    print(json.dumps({"batches": last["batches"], "readers": READERS, "p50_ms": last["p50_ms"], "p99_ms": last["p99_ms"],
                      "delivered_pct": last["delivered_pct"], "cpu_pct": last["cpu_pct"],
                      "baseline": {k: base[k] for k in ("p50_ms", "p99_ms", "delivered_pct", "cpu_pct")},
                      "by_length": mirrored, "baseline_by_length": baseline}))


if __name__ == "__main__":
    main()
