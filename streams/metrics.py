"""Prometheus metrics shared by every service, declared once.

Each service runs in its own process, so the default registry is per service. Counters
count from the process start (``rate()`` copes with restarts); gauges that describe live
state (table sizes, consumer lag, active alarms) are read when ``/metrics`` is scraped, by
the one :data:`LIVE` collector, so they are never stale and cost nothing between scrapes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

MESSAGES_PROCESSED = Counter(
    "heater_messages_processed_total", "Records an agent handled", ["service", "topic"]
)
MESSAGES_SENT = Counter(
    "heater_messages_sent_total",
    "Records the broker confirmed on the reliable send paths (effects, alarms, dead letters, adapter messages)",
    ["service", "topic"],
)
MESSAGES_REJECTED = Counter(
    "heater_messages_rejected_total",
    "Messages that failed to decode and went to the dead-letter topic",
    ["service", "topic", "reason"],
)
SERVICE_READY = Gauge("heater_service_ready", "1 when the service reports ready", ["service"])
SERVICE_HALTED = Gauge("heater_service_halted", "1 when the service is halted by the FATAL latch", ["service"])
BATCHES = Counter(
    "heater_batches_total",
    "Batches an agent handled (HeaterService.record_batches); records per batch = messages processed / batches",
    ["service", "topic"],
)
HANDLE_SECONDS = Histogram(
    "heater_processing_seconds",
    "Time an agent spent on one decoded record (from its delivery to the agent asking for the next)",
    ["service", "topic"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
WATCH_SKIPPED = Counter(
    "heater_platform_watch_skipped_total",
    "Alarm/latch messages the platform watch could not decode (AlarmsServer dead-letters them)",
    ["service", "topic", "reason"],
)
SKIPPED = Counter(
    "heater_messages_skipped_total",
    "Messages a group-less reader (e.g. the heating job) could not decode and skipped; the topic's agents dead-letter them",
    ["service", "topic", "reason"],
)
LATCHED = Gauge("heater_platform_latched", "1 while this service sees the FATAL latch set", ["service"])
CONFIG_VERSION = Gauge("heater_config_version", "Configuration version in force (0: built-in defaults)", ["service"])

REFUSALS = Counter(
    "heater_produce_refusals_total",
    "Sends the broker refused (or that failed to reach it); each was sent again or crashed the service",
    ["service", "topic"],
)


@dataclass(frozen=True)
class LiveGauge:
    """A gauge family whose samples are read from live state at scrape time."""

    name: str
    doc: str
    labels: tuple[str, ...]


TABLE_KEYS = LiveGauge("heater_table_keys", "Keys in each changelog table (the service's ledger included)", ("service", "table"))
CONSUMER_LAG = LiveGauge(
    "heater_consumer_lag",
    "Messages on an input partition not yet delivered to the agent (the log's end minus the read position)",
    ("service", "topic", "partition"),
)
ALARMS_ACTIVE = LiveGauge("heater_alarms_active", "Active alarms in AlarmsServer's book, by severity", ("severity",))
LIVE_GAUGES: tuple[LiveGauge, ...] = (TABLE_KEYS, CONSUMER_LAG, ALARMS_ACTIVE)

#: One read of live state: (label values, value) pairs for one family.
Read = Callable[[], Iterable[tuple[tuple[str, ...], float]]]


class LiveCollector:
    """Reads every registered source of the :data:`LIVE_GAUGES` when ``/metrics`` is scraped.

    Each service adds its reads at construction (one process may hold several services in
    tests); a read that fails (a table still recovering, a consumer not yet started) only
    leaves its samples out of that scrape: a scrape never fails because of live state.
    """

    def __init__(self) -> None:
        self._reads: dict[str, list[Read]] = defaultdict(list)

    def add(self, gauge: LiveGauge, read: Read) -> None:
        self._reads[gauge.name].append(read)

    def describe(self) -> Iterator[Metric]:
        for gauge in LIVE_GAUGES:
            yield GaugeMetricFamily(gauge.name, gauge.doc, labels=gauge.labels)

    def collect(self) -> Iterator[Metric]:
        for gauge in LIVE_GAUGES:
            family = GaugeMetricFamily(gauge.name, gauge.doc, labels=gauge.labels)
            for read in self._reads.get(gauge.name, ()):
                try:
                    samples = list(read())
                except Exception:  # live state not readable right now: leave it out of this scrape
                    log.debug("%s: live read failed", gauge.name, exc_info=True)
                    continue
                for labels, value in samples:
                    family.add_metric(list(labels), value)
            yield family


LIVE = LiveCollector()
REGISTRY.register(LIVE)
