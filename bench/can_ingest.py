"""CAN ingest under a saturated bus: loss and latency from the simulator to ``sensorData``.

Starts its own broker, simulator and CAN adapter (``python -m adapters.can``), lets the
simulator send a burst of sequenced WaterTemp frames at about 9,000 frames/s (a
saturated 1 Mbit/s bus) for about 5 s, and reads ``sensorData`` back:

* loss: every burst sequence number must arrive exactly once;
* latency per frame from the simulator's send time (the frame's bus timestamp, taken
  by a listener of this bench on the same bus) to the record's ``received_at`` (the
  adapter's reception) and to the Kafka record timestamp (the producer's).  The
  listener is one more node for the simulator to serve; ``--send-times schedule``
  drops it and takes the burst's pacing (start + i / rate) as the send time instead,
  which overstates latency whenever the simulator falls behind its schedule.

Prints progress, then ONE JSON line.  Bounded: every wait has a deadline.
Run: ``python bench/can_ingest.py [--count N] [--rate R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import can  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402

from adapters.can import frames  # noqa: E402
from bench.procstats import cpu_seconds  # noqa: E402
from bench.stats import percentile  # noqa: E402
from heater.runtime.broker import EmbeddedBroker  # noqa: E402
from heater.runtime.services import ServiceProcess  # noqa: E402
from heater.runtime.vault import EmbeddedVault  # noqa: E402
from simulator import client  # noqa: E402

SENSOR = 0
START_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 20.0


def progress(text: str) -> None:
    print(f"[can-ingest {time.strftime('%H:%M:%S')}] {text}", flush=True)


def start_simulator(run_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "simulator.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--run-dir", str(run_dir), "--can-port", "0",
         "--i2c-port", "0", "--control-port", "0", "--log-level", "WARNING"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        info = client.read_marker(run_dir)
        if info is not None and info.get("pid") == proc.pid:
            client.wait_ready(int(info["control_port"]), timeout=10)
            return proc, info
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"simulator did not start; see {run_dir / 'simulator.log'}")
        time.sleep(0.05)


def stop_simulator(sim: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as the platform stops it (its Pico ends with it); SIGKILL if it does not go."""
    sim.send_signal(signal.SIGTERM)
    try:
        sim.wait(10)
    except subprocess.TimeoutExpired:
        sim.kill()


def start_adapter(run_dir: Path, broker: EmbeddedBroker, channel: str, vault: EmbeddedVault) -> ServiceProcess:
    """The adapter as the platform runs it, with its certificate and AppRole from ``vault`` (``/can`` takes the viewer role)."""
    adapter = ServiceProcess("can", broker.url, run_dir, {"HEATER_CAN_INTERFACE": "remote", "HEATER_CAN_CHANNEL": channel},
                             vault=vault).start()
    try:
        adapter.wait_ready(START_TIMEOUT_S)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"CAN adapter did not start: {exc}") from None
    return adapter


class SendTimes:
    """Listens on the bus like any node and keeps each burst frame's send timestamp."""

    def __init__(self, channel: str) -> None:
        self.bus = can.Bus(interface="remote", channel=channel)
        self.raw: list[tuple[bytes, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.bus.recv(0.1)
            if msg is not None and msg.arbitration_id == frames.WATER_TEMP_ID and not msg.is_error_frame:
                self.raw.append((bytes(msg.data), msg.timestamp))

    def by_sequence(self) -> dict[int, float]:
        """Send time of each frame of the burst sensor, by sequence number."""
        out: dict[int, float] = {}
        for data, timestamp in self.raw:
            try:
                decoded = frames.decode(frames.WATER_TEMP_ID, data)
            except frames.FrameError:
                continue
            if decoded.sensor == SENSOR:
                out[decoded.sequence] = timestamp
        return out

    def close(self) -> None:
        """Stop listening (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(2)
        self.bus.shutdown()


async def consume(
    bootstrap: str, expected: set[int], control_port: int, cap: float
) -> dict[int, list[tuple[float, float, float]]]:
    """Burst sequence → [(received_at, kafka timestamp s, consumed at)] until all arrived or the deadline.

    The deadline is ``DRAIN_TIMEOUT_S`` after the simulator finished sending (a loaded
    machine slows the sender too), and never later than ``cap``.
    """
    deadline = cap
    next_check = time.monotonic() + 1.0
    consumer = AIOKafkaConsumer(
        "sensorData", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, fetch_max_wait_ms=20, max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    seen: dict[int, list[tuple[float, float, float]]] = {}
    sensor = f"water.{SENSOR}"
    last_report = time.monotonic()
    try:
        while time.monotonic() < deadline and not expected <= seen.keys():
            batches = await consumer.getmany(timeout_ms=200, max_records=20_000)
            consumed_at = time.time()
            for records in batches.values():
                for record in records:
                    value = json.loads(record.value)
                    if value["sensor"] != sensor or value["sequence"] not in expected:
                        continue
                    seen.setdefault(value["sequence"], []).append(
                        (value["received_at"], record.timestamp / 1000.0, consumed_at)
                    )
            if deadline == cap and time.monotonic() > next_check:
                next_check = time.monotonic() + 1.0
                try:
                    burst = client.get_state(control_port)["burst"]
                except client.SimulatorError:  # its loop is busy sending the burst; ask again later
                    burst = None
                if burst is not None and not burst["running"]:
                    deadline = min(cap, time.monotonic() + DRAIN_TIMEOUT_S)
            if time.monotonic() - last_report > 1.0:
                last_report = time.monotonic()
                progress(f"consumed {len(seen)}/{len(expected)} burst frames")
    finally:
        await consumer.stop()
    return seen


def summary_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "p50": round(percentile(ms, 50), 3),
        "p99": round(percentile(ms, 99), 3),
        "max": round(max(ms), 3) if ms else float("nan"),
        "mean": round(statistics.fmean(ms), 3) if ms else float("nan"),
    }


def burst_state(control_port: int, timeout: float = 30.0) -> dict[str, Any]:
    """The burst record, retried while the simulator is too busy to answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.get_state(control_port)["burst"]
        except client.SimulatorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def scheduled_send_times(burst: dict[str, Any], count: int, rate: float) -> dict[int, float]:
    """Send time of each burst frame by its pacing: frame i is due at start + i / rate."""
    first, start = burst["first_sequence"], burst["started_at"]
    return {(first + i) % frames.SEQUENCE_MODULO: start + i / rate for i in range(count)}


def run(count: int, rate: float, send_times: str = "bus") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-can-") as tmp:
        root = Path(tmp)
        progress("starting broker")
        with EmbeddedBroker(root / "broker") as broker, EmbeddedVault(root / "vault") as vault:
            progress("starting simulator")
            sim, info = start_simulator(root / "sim")
            adapter: ServiceProcess | None = None
            listener: SendTimes | None = None
            try:
                progress("starting CAN adapter")
                started = time.monotonic()
                adapter = start_adapter(root, broker, info["can_channel"], vault)
                progress(f"adapter ready in {time.monotonic() - started:.2f} s")
                listener = SendTimes(info["can_channel"]) if send_times == "bus" else None
                time.sleep(0.3)
                progress(f"burst: {count} frames at {rate:.0f} frames/s on sensor {SENSOR}")
                assert adapter.proc is not None
                cpu_before = cpu_seconds([adapter.proc.pid]), cpu_seconds([sim.pid])
                load_before = os.getloadavg()[0]
                record = client.burst(int(info["control_port"]), count=count, rate=rate, sensor=SENSOR)
                expected = {(record["first_sequence"] + i) % frames.SEQUENCE_MODULO for i in range(count)}
                cap = time.monotonic() + 10 * count / rate + 2 * DRAIN_TIMEOUT_S
                seen = asyncio.run(consume(broker.bootstrap, expected, int(info["control_port"]), cap))
                adapter_cpu = cpu_seconds([adapter.proc.pid]) - cpu_before[0]
                sim_cpu = cpu_seconds([sim.pid]) - cpu_before[1]
                final = burst_state(int(info["control_port"]))
                time.sleep(0.2)
                if listener is not None:
                    listener.close()
                    sent_at = listener.by_sequence()
                else:
                    sent_at = scheduled_send_times(final, count, rate)
                view = adapter.get("/can")[1]
                still_running = adapter.proc.poll() is None
            finally:
                if listener is not None:
                    listener.close()
                if adapter is not None:
                    adapter.stop()
                stop_simulator(sim)
    send_s = (final["finished_at"] - final["started_at"]) if final and final["finished_at"] else float("nan")
    to_received = [arrivals[0][0] - sent_at[seq] for seq, arrivals in seen.items() if seq in sent_at]
    to_kafka = [arrivals[0][1] - sent_at[seq] for seq, arrivals in seen.items() if seq in sent_at]
    to_consumer = [arrivals[0][2] - sent_at[seq] for seq, arrivals in seen.items() if seq in sent_at]
    received = sorted(arrivals[0][0] for arrivals in seen.values())
    ingest_s = received[-1] - received[0] if len(received) > 1 else float("nan")
    lat_received, lat_kafka = summary_ms(to_received), summary_ms(to_kafka)
    return {
        "frames_per_s": round(count / send_s, 1),
        "ingest_frames_per_s": round((len(received) - 1) / ingest_s, 1),
        "sent": final["sent"] if final else None,
        "suppressed": final["suppressed"] if final else None,
        "received": len(seen),
        "lost": len(expected - seen.keys()),
        "duplicates": sum(len(a) - 1 for a in seen.values()),
        "p50_ms": lat_received["p50"],
        "p99_ms": lat_received["p99"],
        "max_ms": lat_received["max"],
        "kafka_p50_ms": lat_kafka["p50"],
        "kafka_p99_ms": lat_kafka["p99"],
        "kafka_max_ms": lat_kafka["max"],
        "consumer_p50_ms": summary_ms(to_consumer)["p50"],
        "latency_samples": len(to_received),
        "adapter_cpu_us_per_frame": round(adapter_cpu / count * 1e6, 1),
        "simulator_cpu_us_per_frame": round(sim_cpu / count * 1e6, 1),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(load_before, 2),
        "adapter_lost_by_gap": view["frames"]["lost"],
        "adapter_bad_frames": view["frames"]["bad"],
        "adapter_largest_batch": view["bus"]["largest_batch"],
        "adapter_alive": still_running,
        "count": count,
        "rate": rate,
        "send_times": send_times,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=45_000, help="burst frames (default 45,000 = 5 s at 9k/s)")
    parser.add_argument("--rate", type=float, default=9_000.0, help="frames per second (default 9,000)")
    parser.add_argument("--send-times", choices=("bus", "schedule"), default="bus",
                        help="send time per frame: its bus timestamp (a listener node) or the burst's pacing")
    args = parser.parse_args(argv)
    result = run(args.count, args.rate, args.send_times)
    print(json.dumps(result), flush=True)
    return 0 if result["lost"] == 0 and result["adapter_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
