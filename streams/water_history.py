"""Water temperature over the last hour, for the status page's plot: bounded whatever the reading rate.

The plot shows the median of the water sensors' latest readings (the value the HomeKit
bridge shows as the water temperature). The last :data:`RECENT_S` are kept point by point,
so a heating curve is drawn as it happens; older points are kept as one mean per minute
for an hour. Memory stays bounded (at most :data:`MAX_RECENT` points plus 60 minutes), and
nothing is stored in a table: the history starts when AlarmsServer starts, as a live plot's
should.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Iterable

from streams.heater_config import WATER_SENSORS

HOUR_S = 3600.0
RECENT_S = 300.0
MAX_RECENT = 3000

Point = tuple[float, float]  # (epoch seconds, °C)


class WaterHistory:
    """Median water temperature points: per minute for an hour, in full for the last minutes."""

    def __init__(self, sensors: Iterable[str] = WATER_SENSORS) -> None:
        self.sensors = frozenset(sensors)
        self.latest: dict[str, float] = {}
        self.recent: deque[Point] = deque(maxlen=MAX_RECENT)
        self.minutes: dict[int, tuple[float, int]] = {}  # minute → (sum, count)

    def add(self, sensor: str, value: float, at: float) -> None:
        """Take one reading; readings of other sensors are ignored."""
        if sensor not in self.sensors:
            return
        self.latest[sensor] = value
        median = statistics.median(self.latest.values())
        self.recent.append((at, median))
        minute = int(at // 60)
        total, count = self.minutes.get(minute, (0.0, 0))
        self.minutes[minute] = (total + median, count + 1)
        self._forget(at)

    def _forget(self, now: float) -> None:
        while self.recent and self.recent[0][0] < now - RECENT_S:
            self.recent.popleft()
        oldest = int((now - HOUR_S) // 60)
        for minute in [m for m in self.minutes if m < oldest]:
            del self.minutes[minute]

    def points(self, now: float) -> list[Point]:
        """The plot's points in time order: minute means before the recent window, then every recent point."""
        start = self.recent[0][0] if self.recent else now
        older = [((m + 0.5) * 60, total / count) for m, (total, count) in sorted(self.minutes.items())
                 if (m + 1) * 60 <= start and (m + 0.5) * 60 > now - HOUR_S]
        return older + [p for p in self.recent if p[0] > now - HOUR_S]
