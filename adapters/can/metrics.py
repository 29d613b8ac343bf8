"""Prometheus metrics of the CAN adapter, declared once and exposed from plain counters.

At about 9,000 frames/s a labelled ``prometheus_client.Counter`` per frame would cost
a lock and a label lookup each time; the adapter counts in :class:`CanStats` (plain
``collections.Counter`` fields, also the data of the ``/can`` view) and one collector
turns them into metric families when ``/metrics`` is scraped.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


@dataclass
class CanStats:
    """Everything the adapter counts; the one source for ``/metrics`` and ``/can``."""

    frames: Counter[str] = field(default_factory=Counter)
    bad: Counter[str] = field(default_factory=Counter)
    error_frames: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    limit_trips: Counter[str] = field(default_factory=Counter)
    untraced: Counter[str] = field(default_factory=Counter)
    published: int = 0
    publish_errors: int = 0
    bus_opens: int = 0
    bus_failures: int = 0
    bus_open: bool = False
    last_frame_at: float | None = None
    backlog: Callable[[], int] = lambda: 0

    def last_frame_age(self, now: float | None = None) -> float | None:
        """Seconds since the last valid frame (wall clock), None before the first."""
        if self.last_frame_at is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.last_frame_at)


# (name, help, CanStats field, label) of every labelled counter, declared once.
_LABELLED: tuple[tuple[str, str, str, str], ...] = (
    ("heater_can_frames", "Valid CAN frames decoded and published, by frame kind", "frames", "kind"),
    ("heater_can_bad_frames", "CAN frames rejected by the codec, by reason", "bad", "reason"),
    ("heater_can_error_frames", "CAN error frames received, by SocketCAN error class", "error_frames", "error_class"),
    ("heater_can_frames_lost", "Frames missing from a sensor's sequence counter, by sensor", "lost", "sensor"),
    ("heater_can_fatal_limit_trips", "FATAL alarms raised by the adapter's own limit check, by sensor", "limit_trips", "sensor"),
    ("heater_can_readings_untraced", "Readings published without a trace of their own (over the sensor's trace budget)",
     "untraced", "sensor"),
)
_PLAIN: tuple[tuple[str, str, str], ...] = (
    ("heater_can_published", "Readings handed to the producer for sensorData", "published"),
    ("heater_can_publish_errors", "Readings the producer refused", "publish_errors"),
    ("heater_can_bus_opens", "Times the CAN bus was opened", "bus_opens"),
    ("heater_can_bus_failures", "Times the CAN bus failed to open or failed under the reader", "bus_failures"),
)


class StatsCollector:
    """A ``prometheus_client`` collector reading one :class:`CanStats`."""

    def __init__(self, stats: CanStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        for name, doc, attr, label in _LABELLED:
            family = CounterMetricFamily(name, doc, labels=[label])
            for value, count in sorted(getattr(self.stats, attr).items()):
                family.add_metric([value], count)
            yield family
        for name, doc, attr in _PLAIN:
            yield CounterMetricFamily(name, doc, value=getattr(self.stats, attr))
        age = self.stats.last_frame_age()
        yield GaugeMetricFamily(
            "heater_can_last_frame_age_seconds", "Seconds since the last valid frame (-1 before the first)",
            value=-1.0 if age is None else age,
        )
        yield GaugeMetricFamily("heater_can_bus_open", "1 while the CAN bus is open", value=int(self.stats.bus_open))
        yield GaugeMetricFamily(
            "heater_can_reader_backlog", "Frames received by the reader thread, not yet handled", value=self.stats.backlog()
        )


def register(stats: CanStats, registry: CollectorRegistry = REGISTRY) -> StatsCollector:
    """Expose ``stats`` on ``/metrics`` (one adapter per process, the default registry)."""
    collector = StatsCollector(stats)
    registry.register(collector)
    return collector
