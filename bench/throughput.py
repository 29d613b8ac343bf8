"""End-to-end throughput: the simulator at a fixed frame rate → CAN adapter → ``sensorData`` → BankManager
(or, with ``--service disaster``, DisasterDetector).

Starts its own broker, Vault, simulator, CAN adapter and the service's worker (as the platform
does, each with its certificate), waits until the service is ready and caught up, then has
the simulator send WaterTemp frames at ``--rate`` frames/s for ``--duration`` s (a
burst) and samples, every ``--sample-s``:

* ``sensorData``'s end offset (what the adapter has published) and the service's decided
  count (``heater_messages_processed_total``): its lag in readings, over time;
* latency: for each sample, the time until the service has decided every reading that was
  on ``sensorData`` then (resolution: the sample period). Readings still undecided when
  the bench stops count with the time they have waited so far (a lower bound;
  ``latency_censored`` says how many samples that was);
* CPU (% of one core) and peak RSS of every process.

The bench does not wait for the service to work off its backlog: it stops ``--drain-s``
after the burst at the latest. Bounded; prints progress, then ONE JSON line.
Run: ``python bench/throughput.py [--rate 9000] [--duration 60] [--service bank|disaster]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from bench.can_ingest import burst_state, start_adapter, start_simulator, stop_simulator  # noqa: E402
from bench.procstats import cpu_seconds, rss_mb  # noqa: E402
from bench.stats import percentile  # noqa: E402
from heater.runtime.broker import EmbeddedBroker  # noqa: E402
from heater.runtime.services import ServiceProcess  # noqa: E402
from heater.runtime.vault import EmbeddedVault  # noqa: E402
from simulator import client  # noqa: E402

#: The services that follow every reading, and the metric that counts the ones each decided.
SERVICES = ("bank", "disaster")
PROCESSED = 'heater_messages_processed_total{{service="{}",topic="sensorData"}}'
EFFECTS = "heater_bank_effects_total"
START_TIMEOUT_S = 120.0
SENSOR_DATA = TopicPartition("sensorData", 0)


def progress(text: str) -> None:
    print(f"[throughput {time.strftime('%H:%M:%S')}] {text}", flush=True)


def metric_sum(service: ServiceProcess, prefix: str) -> float:
    text = urllib.request.urlopen(service.probe_url + "/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


class Sampler:
    """sensorData's end offset, the service's decided count, CPU and RSS, over time."""

    def __init__(self, bootstrap: str, service: ServiceProcess, pids: dict[str, int]) -> None:
        self.bootstrap, self.service, self.pids = bootstrap, service, pids
        self.samples: list[tuple[float, int, float]] = []  # (monotonic, end offset, decided)
        self.rss: dict[str, float] = {name: 0.0 for name in pids}
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self.consumer.start()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def end_offset(self) -> int:
        assert self.consumer is not None
        return (await self.consumer.end_offsets([SENSOR_DATA]))[SENSOR_DATA]

    async def decided(self) -> float:
        return await asyncio.to_thread(metric_sum, self.service, PROCESSED.format(self.service.name))

    async def sample(self) -> tuple[float, int, float]:
        end, decided = await asyncio.gather(self.end_offset(), self.decided())
        at = time.monotonic()
        self.samples.append((at, end, decided))
        for name, pid in self.pids.items():
            self.rss[name] = max(self.rss[name], rss_mb([pid]))
        return at, end, decided

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds([pid]) for name, pid in self.pids.items()}


def start_py_spy(args: argparse.Namespace, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the service while the burst runs (``--py-spy FILE``: collapsed stacks)."""
    if not args.py_spy:
        return None
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "-p", str(pid), "-f", "raw", "-o", str(args.py_spy), "-r", "200",
                             "-d", str(int(args.duration)), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish_py_spy(spy: subprocess.Popen[bytes] | None, args: argparse.Namespace) -> dict[str, float] | None:
    if spy is None:
        return None
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.send_signal(signal.SIGINT)
        spy.wait(10)
    from bench.profile_share import shares

    return shares(Path(args.py_spy)) if Path(args.py_spy).exists() else None


def latencies(samples: list[tuple[float, int, float]], base: float) -> tuple[list[float], int]:
    """Per sample: seconds until the service's position reached that sample's end offset; and how many never did."""
    out, censored, j = [], 0, 0
    last_at = samples[-1][0]
    for at, end, _ in samples:
        while j < len(samples) and (samples[j][0] < at or samples[j][2] + base < end):
            j += 1
        if j < len(samples):
            out.append(samples[j][0] - at)
        else:
            out.append(last_at - at)
            censored += 1
    return out, censored


async def measure(args: argparse.Namespace, sampler: Sampler, control_port: int) -> dict[str, Any]:
    await sampler.start()
    try:
        # caught up before the burst: the service's position then maps decided counts to offsets
        deadline = time.monotonic() + 60
        while True:
            _, end, decided = await sampler.sample()
            await asyncio.sleep(0.5)
            _, end2, decided2 = await sampler.sample()
            if end2 - end == decided2 - decided or time.monotonic() > deadline:
                break
        base = end2 - decided2
        sampler.samples.clear()
        effects0 = await asyncio.to_thread(metric_sum, sampler.service, EFFECTS)
        cpu0, t0 = sampler.cpu(), time.monotonic()
        count = int(args.rate * args.duration)
        progress(f"burst: {count} frames at {args.rate:.0f} frames/s for {args.duration:.0f} s")
        spy = start_py_spy(args, sampler.pids[args.service])
        await asyncio.to_thread(client.burst, control_port, count, args.rate, 0)
        _, end0, decided0 = await sampler.sample()
        burst_over_at: float | None = None
        stop_at = t0 + args.duration * 3 + args.drain_s
        next_report = t0 + 5
        while time.monotonic() < stop_at:
            await asyncio.sleep(args.sample_s)
            at, end, decided = await sampler.sample()
            if burst_over_at is None and at > t0 + args.duration:
                state = await asyncio.to_thread(burst_state, control_port)
                if not state["running"]:
                    burst_over_at = at
                    stop_at = min(stop_at, at + args.drain_s)
            if decided + base >= end and burst_over_at is not None:
                break
            if at > next_report:
                next_report = at + 5
                progress(f"t={at - t0:5.1f} s  in {end - end0}  decided {int(decided - decided0)}  lag {int(end - decided - base)}")
        cpu1, t1 = sampler.cpu(), time.monotonic()
        effects = await asyncio.to_thread(metric_sum, sampler.service, EFFECTS) - effects0
        final = await asyncio.to_thread(burst_state, control_port)
        profile = await asyncio.to_thread(finish_py_spy, spy, args)
    finally:
        await sampler.stop()
    samples = sampler.samples
    send_s = final["finished_at"] - final["started_at"] if final.get("finished_at") else args.duration
    # sustained rates over the burst (first to last sample while it ran)
    during = [s for s in samples if s[0] <= (burst_over_at or t1)]
    span = during[-1][0] - during[0][0] if len(during) > 1 else float("nan")
    ingested = during[-1][1] - during[0][1]
    decided_during = during[-1][2] - during[0][2]
    lat, censored = latencies(samples, base)
    lat_ms = [v * 1000 for v in lat]
    elapsed = t1 - t0
    lag_over_time = [[round(at - t0, 1), int(end - decided - base)] for at, end, decided in samples[:: max(1, int(1 / args.sample_s))]]
    return {
        "frames_per_s": round(final["sent"] / send_s, 1) if send_s else None,
        "ingest_per_s": round(ingested / span, 1),
        "events_per_s": round(decided_during / span, 1),
        "events_per_s_whole_run": round((samples[-1][2] - samples[0][2]) / (samples[-1][0] - samples[0][0]), 1),
        "p50_ms": round(percentile(lat_ms, 50), 1),
        "p99_ms": round(percentile(lat_ms, 99), 1),
        "max_ms": round(max(lat_ms), 1),
        "latency_censored": censored,
        "latency_samples": len(lat_ms),
        "lag_final": int(samples[-1][1] - samples[-1][2] - base),
        "lag_max": max(int(end - decided - base) for _, end, decided in samples),
        "lag_over_time": lag_over_time,
        "cpu_pct": {name: round(100 * (cpu1[name] - cpu0[name]) / elapsed, 1) for name in cpu0},
        "rss_mb": {name: round(v, 1) for name, v in sampler.rss.items()},
        f"{args.service}_cpu_ms_per_event": round(1000 * (cpu1[args.service] - cpu0[args.service])
                                                  / max(1.0, samples[-1][2] - samples[0][2]), 3),
        "effects": int(effects),
        **({f"{args.service}_profile_pct": profile} if profile else {}),
        "service": args.service,
        "sent": final["sent"],
        "suppressed": final["suppressed"],
        "rate": args.rate,
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 1),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        root = Path(tmp)
        progress("starting broker and vault")
        with EmbeddedBroker(root / "broker") as broker, EmbeddedVault(root / "vault") as vault:
            progress("starting simulator")
            sim, info = start_simulator(root / "sim")
            adapter: ServiceProcess | None = None
            worker: ServiceProcess | None = None
            try:
                progress(f"starting {args.service} and CAN adapter")
                worker = ServiceProcess(args.service, broker.url, root, vault=vault).start()
                adapter = start_adapter(root, broker, info["can_channel"], vault)
                worker.wait_ready(timeout=START_TIMEOUT_S)
                assert worker.proc is not None and adapter.proc is not None
                pids = {args.service: worker.proc.pid, "can": adapter.proc.pid, "simulator": sim.pid,
                        "broker": broker.process.pid}
                result = asyncio.run(measure(args, Sampler(broker.bootstrap, worker, pids), int(info["control_port"])))
                result["service_alive"] = worker.proc.poll() is None
                result["adapter_alive"] = adapter.proc.poll() is None
            finally:
                for service in (worker, adapter):
                    if service is not None:
                        service.stop()
                stop_simulator(sim)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=9_000.0, help="frames per second (default 9,000)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of sending (default 60)")
    parser.add_argument("--drain-s", type=float, default=10.0, help="how long to keep sampling after the burst (default 10)")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="FILE",
                        help="profile the service with py-spy during the burst (collapsed stacks to FILE, shares in the JSON)")
    parser.add_argument("--service", choices=SERVICES, default="bank", help="the reading follower measured (default bank)")
    parser.add_argument("--sample-s", type=float, default=0.25, help="sampling period (default 0.25 s)")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result), flush=True)
    return 0 if result["service_alive"] and result["adapter_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
