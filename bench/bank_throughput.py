"""Events per second one BankManager worker sustains.

Starts an embedded broker and one bank worker, produces N readings of three water sensors
(quiet: no alarm changes), then N readings that cross the WARNING limit back and forth
(alarm raises and clears on most rounds), and times each batch from the first record
produced to the worker's ``heater_messages_processed_total`` reaching it. The worker's
CPU per event is reported too: on a shared machine it moves less than events/s.

Ends with one JSON line. Run: ``python bench/bank_throughput.py [N]`` (default 10,000).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaProducer  # noqa: E402

from heater.runtime.broker import EmbeddedBroker  # noqa: E402
from heater.runtime.services import ServiceProcess  # noqa: E402
from streams.heater_config import WATER_SENSORS  # noqa: E402
from streams.records import SensorReading  # noqa: E402

DEFAULT_N = 10_000
#: The whole bench gives up after this long, whatever N is.
DEADLINE_S = 240.0
PROCESSED = 'heater_messages_processed_total{service="bank",topic="sensorData"}'
EFFECTS = "heater_bank_effects_total"


def metric_sum(service: ServiceProcess, prefix: str) -> float:
    text = urllib.request.urlopen(service.url + "/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def cpu_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of one process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def readings(n: int, t0: float, toggling: bool) -> list[bytes]:
    """n readings, 10 ms apart per sensor round; toggling ones alternate 61/56 °C every 2 rounds."""
    out = []
    for i in range(n):
        round_, sensor = divmod(i, len(WATER_SENSORS))
        value = (61.0 if (round_ // 2) % 2 == 0 else 56.5) if toggling else 40.0 + (i % 7) * 0.1
        out.append(SensorReading(sensor=WATER_SENSORS[sensor], kind="temperature", value=value, unit="C",
                                 received_at=t0 + round_ * 0.01 + sensor * 0.001, sequence=i).dumps())
    return out


async def produce(bootstrap: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=64 * 1024)
    await producer.start()
    try:
        for value in values:
            await producer.send("sensorData", value)
        await producer.flush()
    finally:
        await producer.stop()


def timed_batch(service: ServiceProcess, bootstrap: str, values: list[bytes], deadline: float) -> dict[str, float]:
    before, effects_before = metric_sum(service, PROCESSED), metric_sum(service, EFFECTS)
    assert service.proc is not None
    user0, sys0 = cpu_s(service.proc.pid)
    started = time.monotonic()
    asyncio.run(produce(bootstrap, values))
    produced_s = time.monotonic() - started
    target = before + len(values)
    while (done := metric_sum(service, PROCESSED)) < target:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    processed = done - before
    user1, sys1 = cpu_s(service.proc.pid)
    return {
        "worker_cpu_ms_per_event": round((user1 - user0 + sys1 - sys0) * 1000 / max(processed, 1), 3),
        "worker_sys_share": round((sys1 - sys0) / max(user1 - user0 + sys1 - sys0, 1e-9), 2),
        "events": int(processed),
        "seconds": round(elapsed, 2),
        "events_per_s": round(processed / elapsed, 1),
        "produce_s": round(produced_s, 2),
        "effects": int(metric_sum(service, EFFECTS) - effects_before),
        "complete": processed >= len(values),
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_N
    deadline = time.monotonic() + DEADLINE_S
    with tempfile.TemporaryDirectory(prefix="bench-bank-") as tmp:
        root = Path(tmp)
        with EmbeddedBroker(root / "broker") as broker:
            # staleness is judged on wall time; the bench's timestamps run ahead of it
            bank = ServiceProcess("bank", broker.url, root, {"HEATER_LIMIT_STALE_AFTER_S": "100000"}).start()
            try:
                ready_s = bank.wait_ready(timeout=120)
                t0 = time.time()
                quiet = timed_batch(bank, broker.bootstrap, readings(n, t0, toggling=False), deadline)
                print(f"quiet: {quiet}", flush=True)
                toggling = timed_batch(bank, broker.bootstrap, readings(n, t0 + n, toggling=True), deadline)
                print(f"toggling: {toggling}", flush=True)
            finally:
                bank.stop()
    print(json.dumps({
        "events_per_s": quiet["events_per_s"],
        "events_per_s_toggling": toggling["events_per_s"],
        "effects_per_s_toggling": round(toggling["effects"] / toggling["seconds"], 1),
        "n": n,
        "ready_s": round(ready_s, 2),
        "quiet": quiet,
        "toggling": toggling,
    }))


if __name__ == "__main__":
    main()
