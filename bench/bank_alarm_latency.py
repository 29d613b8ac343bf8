"""The bank's hop of an alarm: a reading on ``sensorData`` → its alarm on ``createAlarm``/``deleteAlarm``.

Starts an embedded broker and one bank worker. Each trial sends one ``water.0`` reading
that crosses the WARNING limit (up, then down past the hysteresis on the next trial: a
raise, then a clear) and times it from the reading's Kafka timestamp to the alarm
record's (both producers on this machine's clock). The trials run twice: on an otherwise
idle input, and with ``--load`` readings/s of other sensors flowing (so the bank decides
in batches; the crossing reading must not wait for the batch around it).

Trials missing their alarm within 10 s count as missed; each run stops starting trials
after 90 s. Ends with ONE JSON line. Run: ``python bench/bank_alarm_latency.py [--trials 30] [--load 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from bench.stats import percentile  # noqa: E402
from heater.runtime.broker import EmbeddedBroker  # noqa: E402
from heater.runtime.services import ServiceProcess  # noqa: E402
from streams.heater_config import HeaterLimits  # noqa: E402
from streams.records import SensorReading  # noqa: E402

LIMITS = HeaterLimits()
TRIAL_TIMEOUT_S = 10.0
#: Each run (idle, loaded) stops starting trials after this long.
RUN_BUDGET_S = 90.0


async def background(producer: AIOKafkaProducer, rate: float, stop: asyncio.Event) -> int:
    """``rate`` quiet readings/s of two other sensors until ``stop``."""
    sent, started = 0, time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - started) * rate)
        for _ in range(due - sent):
            sensor = "water.1" if sent % 2 else "water.2"
            reading = SensorReading(sensor=sensor, kind="temperature", value=40.0 + (sent % 5) * 0.1, unit="C",
                                    received_at=time.time(), sequence=sent)
            await producer.send("sensorData", reading.dumps())
            sent += 1
        await asyncio.sleep(0.005)
    return sent


async def trials(bootstrap: str, n: int, load: float, first_up: bool) -> tuple[list[float], int, bool]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer("createAlarm", "deleteAlarm", bootstrap_servers=bootstrap, auto_offset_reset="latest",
                                enable_auto_commit=False, fetch_max_wait_ms=10)
    await producer.start()
    await consumer.start()
    await consumer.getmany(timeout_ms=500)  # positioned at the end
    stop = asyncio.Event()
    loader = asyncio.create_task(background(producer, load, stop)) if load else None
    latencies: list[float] = []
    up = first_up
    budget = time.monotonic() + RUN_BUDGET_S
    try:
        await asyncio.sleep(1.0 if load else 0.1)
        for _ in range(n):
            if time.monotonic() > budget:
                break
            value = LIMITS.warning_c + 0.5 if up else LIMITS.warning_c - 2.5
            reading = SensorReading(sensor="water.0", kind="temperature", value=value, unit="C",
                                    received_at=time.time(), sequence=0)
            sent = await (await producer.send("sensorData", reading.dumps()))
            deadline = time.monotonic() + TRIAL_TIMEOUT_S
            topic = "createAlarm" if up else "deleteAlarm"
            found: Any = None
            while found is None and time.monotonic() < deadline:
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    for record in records:
                        if tp.topic == topic and b"overtemp-warning/water.0" in (record.key or b"") + record.value:
                            found = record
            if found is not None:
                latencies.append((found.timestamp - sent.timestamp) / 1000.0)
            up = not up
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        background_sent = await loader if loader is not None else 0
        await consumer.stop()
        await producer.stop()
    return latencies, background_sent, up


def summary(values: list[float], n: int) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {"p50_ms": round(percentile(ms, 50), 1), "p99_ms": round(percentile(ms, 99), 1),
            "max_ms": round(max(ms), 1) if ms else None, "trials": n, "missed": n - len(ms)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--load", type=float, default=500.0, help="background readings/s in the second run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-bank-alarm-") as tmp:
        root = Path(tmp)
        with EmbeddedBroker(root / "broker") as broker:
            bank = ServiceProcess("bank", broker.url, root, {"HEATER_LIMIT_STALE_AFTER_S": "100000"}).start()
            try:
                bank.wait_ready(timeout=120)
                idle, _, up = asyncio.run(trials(broker.bootstrap, args.trials, 0, True))
                loaded, background_sent, _ = asyncio.run(trials(broker.bootstrap, args.trials, args.load, up))
            finally:
                bank.stop()
    result = {"idle": summary(idle, args.trials), "loaded": summary(loaded, args.trials) | {"load_per_s": args.load,
              "background_sent": background_sent}}
    result |= {"p50_ms": result["idle"]["p50_ms"], "p99_ms": result["idle"]["p99_ms"],
               "loaded_p50_ms": result["loaded"]["p50_ms"], "loaded_p99_ms": result["loaded"]["p99_ms"],
               "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
