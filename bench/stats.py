"""Summary statistics the benches share."""

from __future__ import annotations

import statistics
import time


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def machine_ms() -> float:
    """How long a fixed piece of pure-Python work takes now (the median of three), in ms.

    A shared host's speed drifts from hour to hour (seen: 5 to 10 ms here), and every figure
    a bench prints drifts with it: read them against this one, taken in the same run.
    """
    times = []
    for _ in range(3):
        started = time.perf_counter()
        sum(i * i for i in range(100_000))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)
