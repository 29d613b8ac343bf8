"""Every topic of the platform, declared once: name, partitions, compaction, retention.

The seed names (``createAlarm``, ``deleteAlarm``, ``sensorData``, ``DisasterDetected``,
``I2CHeating``) are kept; the others are the ones the design needs. The local runtime
creates all of them up front; in production the same list renders Strimzi ``KafkaTopic``
resources. This module imports no Kafka client, so adapters and tools can read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class TopicSpec:
    """How one topic is laid out on the broker."""

    name: str
    partitions: int = 1
    compacted: bool = False
    retention_ms: int = 7 * DAY_MS
    purpose: str = ""

    @property
    def config(self) -> dict[str, str]:
        """Broker topic configuration (``cleanup.policy``, ``retention.ms``)."""
        return {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "retention.ms": str(-1 if self.compacted else self.retention_ms),
        }


CREATE_ALARM = TopicSpec("createAlarm", purpose="alarms raised by any service")
DELETE_ALARM = TopicSpec("deleteAlarm", purpose="alarm clear requests from any service")
SENSOR_DATA = TopicSpec("sensorData", retention_ms=DAY_MS, purpose="decoded CAN sensor readings")
SENSOR_FRESHNESS = TopicSpec("sensorFreshness", retention_ms=HOUR_MS,
                             purpose="the newest valid temperature and flame readings, for the gas valve's lease")
DISASTER_DETECTED = TopicSpec("DisasterDetected", retention_ms=30 * DAY_MS, purpose="disasters found")
I2C_HEATING = TopicSpec("I2CHeating", purpose="relay commands for the I2C adapter")
RELAY_STATE = TopicSpec("relayState", retention_ms=DAY_MS, purpose="relay readback from the Pico")
PLATFORM_LATCH = TopicSpec("platformLatch", compacted=True, purpose="FATAL latch every service follows")
OPERATOR_RESET = TopicSpec("operatorReset", retention_ms=365 * DAY_MS, purpose="signed operator resets")
CONFIG = TopicSpec("config", compacted=True, purpose="validated, versioned configuration")
HEARTBEATS = TopicSpec("heartbeats", retention_ms=HOUR_MS, purpose="liveness of every service")
HEATING_STATE = TopicSpec("heatingJobState", compacted=True, purpose="state of the heating job")
EXCEPTIONS = TopicSpec("exceptions", retention_ms=30 * DAY_MS, purpose="unhandled exceptions")
DEAD_LETTER = TopicSpec("deadLetter", retention_ms=30 * DAY_MS, purpose="messages that failed to decode")
#: BankManager's own staleness ticks. Declared here like every other topic so the broker
#: runtime creates it at each start: a broker that came back empty without it left the
#: bank's offset commits failing, and its input stalled, until the bank restarted.
BANK_TICKS = TopicSpec("bankTicks", retention_ms=HOUR_MS, purpose="BankManager staleness ticks")
REGISTRY_EVENTS = TopicSpec("registryEvents", retention_ms=HOUR_MS, purpose="StateRegistry's discovery ticks and watch requests")

ALL_TOPICS: tuple[TopicSpec, ...] = (
    CREATE_ALARM,
    DELETE_ALARM,
    SENSOR_DATA,
    SENSOR_FRESHNESS,
    DISASTER_DETECTED,
    I2C_HEATING,
    RELAY_STATE,
    PLATFORM_LATCH,
    OPERATOR_RESET,
    CONFIG,
    HEARTBEATS,
    HEATING_STATE,
    EXCEPTIONS,
    DEAD_LETTER,
    BANK_TICKS,
    REGISTRY_EVENTS,
)

BY_NAME: dict[str, TopicSpec] = {spec.name: spec for spec in ALL_TOPICS}
