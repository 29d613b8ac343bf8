"""The job's view of the sensors: the latest water temperatures and the flame signal. Pure.

The water temperature the job acts on is the median of the fresh readings of the
redundant sensors, so one stuck, spiking or noisy sensor can neither end a heating
cycle early nor keep it alive. Readings carry the time they were taken on the
caller's clock; older readings never replace newer ones (a batch may arrive late).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    value: float
    at: float


@dataclass
class Readings:
    """Latest sample per water sensor and of the flame detector."""

    water: dict[str, Sample] = field(default_factory=dict)
    flame: Sample | None = None

    def on_temperature(self, sensor: str, value_c: float, at: float) -> None:
        current = self.water.get(sensor)
        if current is None or at >= current.at:
            self.water[sensor] = Sample(value_c, at)

    def on_flame(self, present: bool, at: float) -> None:
        if self.flame is None or at >= self.flame.at:
            self.flame = Sample(1.0 if present else 0.0, at)

    def temperature(self, now: float, max_age_s: float) -> float | None:
        """Median of the water readings taken within ``max_age_s``; None if there are none."""
        fresh = [s.value for s in self.water.values() if now - s.at <= max_age_s]
        return statistics.median(fresh) if fresh else None

    def newest_temperature_at(self) -> float | None:
        return max((s.at for s in self.water.values()), default=None)

    def flame_since(self, since: float) -> bool | None:
        """The flame signal as last read at or after ``since``; None if nothing was read since."""
        if self.flame is None or self.flame.at < since:
            return None
        return self.flame.value >= 0.5
