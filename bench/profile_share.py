"""Where a process's CPU goes, from a py-spy ``raw`` (collapsed stacks) profile.

Each sample is put in the first category whose marker appears in its stack, innermost
frame first (so JSON decoding inside the tracing code counts as JSON decoding); idle
samples (the event loop waiting: ``select``/``poll``/``epoll``) are left out of the shares.

Run: ``python bench/profile_share.py PROFILE.txt`` — ONE JSON line.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

#: (category, markers in a frame's text), checked innermost frame first.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("json_decode", ("codec.py", "json/decoder", "orjson", "loads (")),
    ("tracing", ("streams/tracing.py", "opentelemetry")),
    ("rules", ("bank_rules.py",)),
    ("state_rows", ("tables/bank.py",)),
    ("ledger", ("consistency.py",)),
    ("changelog", ("faust/tables", "faust/stores")),
    ("metrics", ("prometheus_client",)),
    ("kafka_client", ("aiokafka", "kafka/")),
    ("agent", ("streams/agents/", "streams/app.py")),
    ("faust", ("faust/", "mode/")),
)
IDLE = ("select (", "poll (", "epoll", "_run_once (asyncio/base_events.py", "wait (threading.py", "sleep (")


def classify(stack: str) -> str | None:
    frames = stack.split(";")
    if frames and any(marker in frames[-1] for marker in IDLE):
        return None
    for frame in reversed(frames):
        for category, markers in CATEGORIES:
            if any(marker in frame for marker in markers):
                return category
    return "other"


def shares(path: Path) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        category = classify(stack)
        if category is not None:
            counts[category] += int(n)
    total = sum(counts.values()) or 1
    return {name: round(100 * n / total, 1) for name, n in counts.most_common()} | {"busy_samples": total}


if __name__ == "__main__":
    print(json.dumps(shares(Path(sys.argv[1]))))
