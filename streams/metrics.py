"""Prometheus metrics shared by every service, declared once.

Each service runs in its own process, so the default registry is per service.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_PROCESSED = Counter(
    "heater_messages_processed_total", "Records an agent handled", ["service", "topic"]
)
MESSAGES_REJECTED = Counter(
    "heater_messages_rejected_total",
    "Messages that failed to decode and went to the dead-letter topic",
    ["service", "topic", "reason"],
)
SERVICE_READY = Gauge("heater_service_ready", "1 when the service reports ready", ["service"])
SERVICE_HALTED = Gauge("heater_service_halted", "1 when the service is halted by the FATAL latch", ["service"])
HANDLE_SECONDS = Histogram(
    "heater_handle_seconds",
    "Time an agent spent on one record",
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
