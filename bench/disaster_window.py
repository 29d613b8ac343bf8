"""CPU per watched reading of DisasterDetector's rules, at a quiet window and at a flooded one.

One water sensor sends noisy, steady water (no disaster: every rule runs in full at every
reading) during a running heating job with the gas valve reading closed, so all four rules
apply. Its window is filled first, unwatched (``history_s`` of record time): 10 readings/s
leave about 41 samples in it, a sensor flooding the CAN bus at 9,000 readings/s about
36,000. Then each watched reading of :meth:`streams.disaster_rules.DisasterWatch.on_reading`
is timed on its own. ``baseline`` is the same run through the rules evaluated plainly, re-filtering
and scanning the whole window at each reading: ``FullScanWatch``, the reference the tests
hold the rules to (``tests/test_disaster_rules.py``), fewer readings at the flooded size.

Ends with one JSON line; the top-level figures are the flooded window's. No broker.
Run: ``python bench/disaster_window.py`` (about 20 s).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.stats import percentile  # noqa: E402
from streams.disaster_rules import DisasterWatch, RuleLimits  # noqa: E402
from streams.heater_config import HeaterLimits  # noqa: E402
from test_disaster_rules import FullScanWatch  # noqa: E402

T0 = 1_700_000_000.0
SENSOR = "water.0"
#: Readings per second of record time: a quiet sensor, one flooding the bus.
RATES_HZ = {"41": 10, "36000": 9_000}
#: Timed readings per size (the flooded one past a copy of its list, see Samples.from_index), and a cap on
#: the time spent timing them.
READINGS = {"41": 20_000, "36000": 45_000}
BASELINE_READINGS = {"41": 20_000, "36000": 150}
BUDGET_S = 8.0


def progress(text: str) -> None:
    print(f"[disaster-window {time.strftime('%H:%M:%S')}] {text}", flush=True)


def run(watch: DisasterWatch, hz: int, readings: int) -> dict[str, float]:
    """Fill the window unwatched, then time each watched reading."""
    rng = random.Random(1)
    limits = watch.limits
    fill = int(limits.history_s * hz)
    value = lambda: round(50.0 + rng.gauss(0, 0.05), 1)  # noqa: E731
    for i in range(fill):
        watch.on_reading(SENSOR, value(), T0 + i / hz)
    start = T0 + fill / hz
    watch.on_job_state("j1", "heating", start)
    watch.on_readback(False, start)
    times: list[float] = []
    found = 0
    began = time.perf_counter()
    for i in range(fill, fill + readings):
        at, v = T0 + i / hz, value()
        t = time.perf_counter()
        outcome = watch.on_reading(SENSOR, v, at)
        times.append(time.perf_counter() - t)
        found += len(outcome.detections)
        if time.perf_counter() - began > BUDGET_S:
            break
    elapsed = time.perf_counter() - began
    assert outcome.status.watching and outcome.status.valve_closed and outcome.window is not None
    timed = times[min(10, len(times) // 10):]  # the first readings catch the window's summaries up
    return {
        "window_samples": len(outcome.window.samples),
        "readings": len(times),
        "events_per_s": round(len(times) / elapsed),
        "p50_ms": round(percentile(timed, 50) * 1000, 4),
        "p99_ms": round(percentile(timed, 99) * 1000, 4),
        "max_ms": round(max(timed) * 1000, 4),
        "detections": found,
    }


def main() -> None:
    limits = RuleLimits.from_heater(HeaterLimits())
    by_window, baseline = {}, {}
    for size, hz in RATES_HZ.items():
        by_window[size] = run(DisasterWatch(limits), hz, READINGS[size])
        progress(f"window {size}: {by_window[size]}")
        baseline[size] = run(FullScanWatch(limits), hz, BASELINE_READINGS[size])
        progress(f"window {size}, baseline (full scan): {baseline[size]}")
    flooded, base = by_window["36000"], baseline["36000"]
    print(json.dumps({
        "events_per_s": flooded["events_per_s"], "p50_ms": flooded["p50_ms"], "p99_ms": flooded["p99_ms"],
        "by_window": by_window,
        "baseline": {"events_per_s": base["events_per_s"], "p50_ms": base["p50_ms"], "p99_ms": base["p99_ms"],
                     "by_window": baseline},
    }), flush=True)


if __name__ == "__main__":
    main()
