"""What tracing costs: FATAL latency and BankManager events/s, with the span file exporter and without tracing.

Two measurements, each run twice — with ``HEATER_TRACE_EXPORTER=file`` (the local default)
and with ``none`` (the ``baseline``):

* **events/s** — ``bench/bank_throughput.py``'s set-up: an embedded broker and one bank
  worker, batches of N quiet readings, each timed from the first produced to the worker's
  processed counter reaching N; the best batch counts. With tracing the readings carry a
  ``traceparent`` each, as the CAN adapter's do, so the bank continues their traces.
* **FATAL latency** — ``bench/fatal_latency.py``'s set-up: the whole local platform, an
  over-temperature on the CAN bus, simulator frame → Pico power cut; a few trials with
  the operator reset between them.

Bounded: every part has a deadline (the whole run stays under about three minutes with
the defaults). Prints progress, then ONE JSON line: ``p50_ms``, ``p99_ms``,
``events_per_s`` with tracing, and the same under ``baseline``.
Run: ``python bench/tracing_overhead.py [--events N] [--batches B] [--fatal-trials K]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer  # noqa: E402

from bench import bank_throughput  # noqa: E402
from bench.fatal_latency import Bench, progress  # noqa: E402
from bench.stats import percentile  # noqa: E402
from heater.runtime.broker import EmbeddedBroker  # noqa: E402
from heater.runtime.services import ServiceProcess  # noqa: E402
from simulator import client as sim  # noqa: E402
from streams.heater_config import HeaterLimits  # noqa: E402

MODES = ("file", "none")
#: Per mode: the bank part, and the FATAL part (platform start included), give up after these.
BANK_DEADLINE_S = 40.0
FATAL_BUDGET_S = 50.0
#: Failed FATAL trials (each followed by a fresh platform) before a mode gives up.
MAX_FAILED_TRIALS = 2


@contextlib.contextmanager
def exporter(mode: str) -> Iterator[None]:
    """Processes started inside inherit ``HEATER_TRACE_EXPORTER=mode`` (supervisord passes it on)."""
    before = os.environ.get("HEATER_TRACE_EXPORTER")
    os.environ["HEATER_TRACE_EXPORTER"] = mode
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HEATER_TRACE_EXPORTER", None)
        else:
            os.environ["HEATER_TRACE_EXPORTER"] = before


async def produce(bootstrap: str, values: list[bytes], traced: bool) -> None:
    """The readings, each with a fresh ``traceparent`` when ``traced`` (as the CAN adapter sends them)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=64 * 1024)
    await producer.start()
    try:
        for value in values:
            headers = [("traceparent", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01".encode())] if traced else None
            await producer.send("sensorData", value, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


def bank_rate(mode: str, n: int, batches: int, root: Path) -> dict[str, Any]:
    """Quiet readings per second through one bank worker under ``mode``: the best of ``batches`` runs of ``n``.

    The best, because on a shared machine the others' load only ever slows a batch down.
    """
    deadline = time.monotonic() + BANK_DEADLINE_S
    rates: list[float] = []
    with exporter(mode), EmbeddedBroker(root / f"broker-{mode}") as broker:
        bank = ServiceProcess("bank", broker.url, root / f"bank-{mode}", {"HEATER_LIMIT_STALE_AFTER_S": "100000"}).start()
        try:
            bank.wait_ready(timeout=BANK_DEADLINE_S)
            t0 = time.time()
            for batch in range(batches):
                values = bank_throughput.readings(n, t0 + batch * n, toggling=False)
                before = bank_throughput.metric_sum(bank, bank_throughput.PROCESSED)
                started = time.monotonic()
                asyncio.run(produce(broker.bootstrap, values, traced=mode != "none"))
                while (done := bank_throughput.metric_sum(bank, bank_throughput.PROCESSED)) < before + n:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{mode}: the bank did not process {n} readings in time")
                    time.sleep(0.05)
                rates.append((done - before) / (time.monotonic() - started))
        finally:
            bank.stop()
    spans = sum(1 for f in (root / f"bank-{mode}" / "traces").glob("*.jsonl") for _ in f.open())
    return {"events_per_s": round(max(rates), 1), "batches_events_per_s": [round(r, 1) for r in rates],
            "spans_written": spans}


def fatal_latency(mode: str, trials: int, root: Path) -> dict[str, Any]:
    """Up to ``trials`` FATAL trials under ``mode`` (within :data:`FATAL_BUDGET_S`), reset in place between them.

    A trial that fails (the bench's own deadlines on a loaded machine) is counted and the
    next one starts on a fresh platform, as ``bench/fatal_latency.py`` does.
    """
    began = time.monotonic()
    latencies: list[float] = []
    errors: list[str] = []
    with exporter(mode):
        bench = Bench(root / f"fatal-{mode}", HeaterLimits.from_env())
        try:
            bench.start_platform()
            for round_no in range(trials + MAX_FAILED_TRIALS):
                if len(latencies) >= trials or len(errors) >= MAX_FAILED_TRIALS:
                    break
                if latencies and time.monotonic() - began > FATAL_BUDGET_S:
                    break
                try:
                    if bench.latched:
                        bench.reset_in_place()
                    sensor = bench.pick_sensor(round_no)
                    trial = bench.fatal_trial(sensor) if sensor is not None else None
                    if trial is None:
                        raise RuntimeError(f"no trip for water.{sensor}")
                except (TimeoutError, RuntimeError, OSError, sim.SimulatorError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    progress(f"{mode}: trial failed ({errors[-1]}); the next one starts on a fresh platform")
                    bench.start_platform()
                    continue
                latencies.append(trial["latency_s"] * 1000)
                progress(f"{mode}: FATAL water.{sensor} {latencies[-1]:.1f} ms via {trial['path']}")
        finally:
            bench.stop_platform()
    if not latencies:
        raise RuntimeError(f"{mode}: no FATAL trial completed: {errors}")
    return {"trials": len(latencies), "p50_ms": round(percentile(latencies, 50), 2),
            "p99_ms": round(percentile(latencies, 99), 2), "max_ms": round(max(latencies), 2), "failed": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000, help="readings per batch through the bank (default 5000)")
    parser.add_argument("--batches", type=int, default=3, help="batches per mode; the best counts (default 3)")
    parser.add_argument("--fatal-trials", type=int, default=3, help="FATAL trials per mode (default 3)")
    parser.add_argument("--run-dir", type=Path, default=None, help="keep the run directories (logs, span files) here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    result: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        if args.run_dir is not None:  # kept: the platforms' logs and span files
            root = args.run_dir.resolve()
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-tracing-")))
        for mode in MODES:
            progress(f"bank events/s with HEATER_TRACE_EXPORTER={mode}")
            bank = bank_rate(mode, args.events, args.batches, root)
            progress(f"{mode}: {bank}")
            progress(f"FATAL latency with HEATER_TRACE_EXPORTER={mode}")
            fatal = fatal_latency(mode, args.fatal_trials, root)
            result[mode] = {"p50_ms": fatal["p50_ms"], "p99_ms": fatal["p99_ms"], "max_ms": fatal["max_ms"],
                            "fatal_trials": fatal["trials"], "fatal_failed": fatal["failed"], "events_per_s": bank["events_per_s"],
                            "batches_events_per_s": bank["batches_events_per_s"], "spans_written": bank["spans_written"]}
    traced, baseline = result["file"], result["none"]
    print(json.dumps({
        **traced,
        "exporter": "file",
        "baseline": baseline,
        "events_per_s_change_pct": round((traced["events_per_s"] / baseline["events_per_s"] - 1) * 100, 1),
        "p50_ms_change": round(traced["p50_ms"] - baseline["p50_ms"], 2),
        "elapsed_s": round(time.monotonic() - started, 1),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
