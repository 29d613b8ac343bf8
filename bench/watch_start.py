"""A control service's start against the alarm history: the platform watch's read, as the history grows.

Every control service started by an operator reset (or after kill -9) reads the whole alarm
and latch history before its worker starts (the latch check), and keeps a replica of its own
alarms. The history is written here as ``bench/fatal_latency.py``'s rounds leave it, in time
order across the topics as the services write it: per round a FATAL of the CAN adapter (one of
three sensors), the bank's four alarms around the crossing raised and cleared, and
AlarmsServer's latch records (the FATAL, the Pico's trip, the reset). At each history length in
``ROUNDS`` a fresh watch is started ``STARTS`` times for the CAN adapter (its own FATALs), the
bank (its own alarms) and the I2C adapter (no alarm of its own: reading alone), on the real
local broker.

Ends with one JSON line: the median start per service at each length (``start_p50_ms``), the
growth per 100 rounds, and ``p50_ms``, the slowest service's start at the longest history.
Run: ``python bench/watch_start.py`` (about a minute).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from heater.runtime.broker import EmbeddedBroker  # noqa: E402
from streams import kafka_clients, topics  # noqa: E402
from streams.codec import encode  # noqa: E402
from streams.latch import LatchState, Occurrence  # noqa: E402
from streams.platform_watch import PlatformWatch  # noqa: E402
from streams.records import Alarm, AlarmClear, Severity  # noqa: E402

ROUNDS = (0, 50, 100, 200)
STARTS = 5
SERVICES = ("can", "bank", "i2c")
BANK_ALARMS = ("sensor-implausible/{sensor}", "overtemp-warning/{sensor}", "overtemp-critical/{sensor}",
               "sensor-disagreement/water")
#: A round's span, as the bench's rounds are about 8 s apart.
ROUND_S = 8.0

Record = tuple[float, str, str, bytes]  # when, topic, key, value


def round_records(n: int, state: LatchState, start: float) -> list[Record]:
    """What one FATAL round leaves on the alarm and latch topics."""
    at = start + n * ROUND_S
    sensor = f"water.{n % 3}"
    fatal = Alarm(alarm_id=f"can/overtemp-fatal/{sensor}", source="can", code="overtemp-fatal",
                  severity=Severity.FATAL, message=f"{sensor} at 85.5 C", raised_at=at)
    records: list[Record] = [(at, topics.CREATE_ALARM.name, fatal.alarm_id, encode(fatal))]
    for index, name in enumerate(BANK_ALARMS):
        alarm_id = "bank/" + name.format(sensor=sensor)
        raised = Alarm(alarm_id=alarm_id, source="bank", code=name.split("/")[0], severity=Severity.WARNING,
                       message="bench", raised_at=at - 0.1 + index * 0.001)
        cleared = AlarmClear(alarm_id=alarm_id, cleared_by="bank", cleared_at=at + 3.0 + index * 0.001, reason="bench")
        records += [(raised.raised_at, topics.CREATE_ALARM.name, alarm_id, encode(raised)),
                    (cleared.cleared_at, topics.DELETE_ALARM.name, alarm_id, encode(cleared))]
    state.on_fatal(Occurrence.of(fatal))
    records += [(at + 0.001, topics.PLATFORM_LATCH.name, key, encode(r)) for key, r in state.to_records(at, "alarms")]
    state.trip_count += 1
    records += [(at + 0.002, topics.PLATFORM_LATCH.name, key, encode(r)) for key, r in state.to_records(at, "alarms")]
    state.recorded()
    reset_id = f"reset-{n}"
    state.on_reset(reset_id, [fatal.occurrence_id], state.trip_count, {"sensorData:0": n * 100})
    records += [(at + 2.5, topics.PLATFORM_LATCH.name, key, encode(r))
                for key, r in state.to_records(at + 2.5, "operator", reset_id)]
    state.recorded()
    return records


async def write(bootstrap: str, records: list[Record]) -> None:
    producer = kafka_clients.producer(bootstrap, linger_ms=5)
    await producer.start()
    try:
        sent = [await producer.send(topic, value, key=key.encode(), timestamp_ms=int(at * 1000))
                for at, topic, key, value in sorted(records, key=lambda r: r[0])]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def start_ms(bootstrap: str, service: str) -> float:
    watch = PlatformWatch(bootstrap, service)
    started = time.perf_counter()
    await watch.start()
    elapsed = (time.perf_counter() - started) * 1000
    await watch.stop()
    if watch.latch.latched:
        raise RuntimeError(f"{service}: the history's FATALs were all released, yet the watch latches")
    return elapsed


async def main() -> dict[str, object]:
    broker = await asyncio.to_thread(EmbeddedBroker(Path(tempfile.mkdtemp(prefix="bench-watch-"))).start)
    try:
        state, origin, written = LatchState(trip_count=0), time.time() - 10 * 86400.0, 0
        starts: dict[str, list[float]] = {service: [] for service in SERVICES}
        records_read = []
        for rounds in ROUNDS:
            records = [r for n in range(written, rounds) for r in round_records(n, state, origin)]
            await write(broker.bootstrap, records)
            written = rounds
            records_read.append(records_read[-1] + len(records) if records_read else len(records))
            for service in SERVICES:
                await start_ms(broker.bootstrap, service)  # the first start pays for the connection and imports
                starts[service].append(statistics.median([await start_ms(broker.bootstrap, service)
                                                          for _ in range(STARTS)]))
            print(f"[watch-start] {rounds} rounds ({records_read[-1]} records): "
                  + ", ".join(f"{s} {starts[s][-1]:.1f} ms" for s in SERVICES), file=sys.stderr, flush=True)
    finally:
        broker.stop()
    span = (ROUNDS[-1] - ROUNDS[0]) / 100
    return {
        "rounds": list(ROUNDS),
        "records": records_read,
        "starts_each": STARTS,
        "start_p50_ms": {s: [round(v, 1) for v in values] for s, values in starts.items()},
        "growth_ms_per_100_rounds": {s: round((values[-1] - values[0]) / span, 1) for s, values in starts.items()},
        "p50_ms": round(max(values[-1] for values in starts.values()), 1),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
