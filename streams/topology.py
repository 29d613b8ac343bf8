"""Which topics each service produces and consumes: the communication matrix, declared once.

Kafka ACLs in production are rendered from this (``deploy/gen``), so a service gets
exactly the topics it uses and nothing else; ``tests/test_topology.py`` checks it
against what the code subscribes to and names. Faust's internal topics (table
changelogs) are named after the service's app id, ``heater-NAME``, which is also
its consumer group. Like :mod:`streams.topics`, this module imports no Kafka client.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams import topics as t

APP_ID_PREFIX = "heater-"

#: What every process reads to follow the FATAL latch, the alarm book and the live config.
WATCHED: tuple[str, ...] = (t.CREATE_ALARM.name, t.DELETE_ALARM.name, t.PLATFORM_LATCH.name, t.CONFIG.name)
#: What every process writes: its alarms (raised and cleared), heartbeats, exception reports.
REPORTS: tuple[str, ...] = (t.CREATE_ALARM.name, t.DELETE_ALARM.name, t.HEARTBEATS.name, t.EXCEPTIONS.name)


def app_id(service: str) -> str:
    """A Faust service's app id: its consumer group and the prefix of its internal topics."""
    return f"{APP_ID_PREFIX}{service}"


def changelog_topic(service: str, table: str) -> str:
    """The changelog topic Faust names for one table of a service."""
    return f"{app_id(service)}-{table}-changelog"


#: StateRegistry's verdict on every service, and ExceptionsServer's counts: the HomeKit feed shows both.
REGISTRY_SERVICES = changelog_topic("registry", "registry-services")
EXCEPTION_COUNTS = changelog_topic("exceptions", "exceptions-senders")


@dataclass(frozen=True)
class ServiceTopics:
    """One service's own topics; the shared plumbing (watch, reports, dead letters) is added by the properties."""

    name: str
    produces: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    """Faust table names; each has a changelog that only this service writes."""
    follows: tuple[str, ...] = ()
    """Other services' changelogs it reads (never writes) to show their state: :mod:`streams.table_mirror`."""
    faust: bool = False
    """A Faust app: it commits offsets in the consumer group :func:`app_id` and dead-letters bad input."""

    @property
    def changelogs(self) -> tuple[str, ...]:
        return tuple(changelog_topic(self.name, table) for table in self.tables)

    @property
    def group(self) -> str | None:
        """The consumer group it commits offsets in (None: it only reads assigned partitions)."""
        return app_id(self.name) if self.faust else None

    @property
    def writes(self) -> frozenset[str]:
        dead_letters = (t.DEAD_LETTER.name,) if self.faust else ()
        return frozenset((*self.produces, *REPORTS, *dead_letters, *self.changelogs))

    @property
    def reads(self) -> frozenset[str]:
        return frozenset((*self.consumes, *WATCHED, *self.changelogs, *self.follows))


SERVICES: tuple[ServiceTopics, ...] = (
    ServiceTopics("config", produces=(t.CONFIG.name,), consumes=(t.CONFIG.name,), faust=True),
    ServiceTopics(
        "registry",
        produces=(t.REGISTRY_EVENTS.name,),
        consumes=(t.HEARTBEATS.name, t.DISASTER_DETECTED.name, t.REGISTRY_EVENTS.name),
        tables=("registry-ledger", "registry-services", "registry-strangers", "registry-disasters"),
        faust=True,
    ),
    ServiceTopics(
        "exceptions",
        consumes=(t.EXCEPTIONS.name,),
        tables=("exceptions-ledger", "exceptions-senders", "exceptions-recent"),
        faust=True,
    ),
    ServiceTopics(
        "alarms",
        produces=(t.PLATFORM_LATCH.name, t.I2C_HEATING.name, t.OPERATOR_RESET.name),
        # sensorData, relayState and heatingJobState feed the HomeKit backend (streams.homekit_feed).
        consumes=(t.CREATE_ALARM.name, t.DELETE_ALARM.name, t.OPERATOR_RESET.name, t.RELAY_STATE.name,
                  t.SENSOR_DATA.name, t.HEATING_STATE.name),
        tables=("alarms-ledger", "alarm-history", "alarm-active", "alarm-timelines", "platform-latch", "reset-nonces"),
        follows=(REGISTRY_SERVICES, EXCEPTION_COUNTS),
        faust=True,
    ),
    ServiceTopics("can", produces=(t.SENSOR_DATA.name, t.SENSOR_FRESHNESS.name)),
    # The SecretsRotator sends only what every service sends (alarms, heartbeats, reports).
    ServiceTopics("secrets"),
    ServiceTopics(
        "i2c",
        produces=(t.RELAY_STATE.name,),
        consumes=(t.I2C_HEATING.name, t.SENSOR_FRESHNESS.name, t.HEARTBEATS.name, t.OPERATOR_RESET.name),
    ),
    ServiceTopics(
        "bank",
        produces=(t.BANK_TICKS.name,),
        consumes=(t.SENSOR_DATA.name, t.BANK_TICKS.name),
        tables=("bank-ledger", "bank-state", "bank-windows"),
        faust=True,
    ),
    ServiceTopics(
        "disaster",
        produces=(t.DISASTER_DETECTED.name,),
        consumes=(t.SENSOR_DATA.name, t.HEATING_STATE.name, t.RELAY_STATE.name, t.I2C_HEATING.name),
        tables=("disaster-ledger", "disaster-job", "disaster-valve", "disaster-windows", "disaster-detections"),
        faust=True,
    ),
    # The bridge hosts the heating controller, which announces the ends of the jobs it ran.
    ServiceTopics("homekit", produces=(t.HEATING_STATE.name,)),
    ServiceTopics(
        "heating-job",
        produces=(t.I2C_HEATING.name, t.HEATING_STATE.name),
        consumes=(t.SENSOR_DATA.name, t.RELAY_STATE.name),
    ),
)

BY_NAME: dict[str, ServiceTopics] = {s.name: s for s in SERVICES}


def internal_topics() -> tuple[str, ...]:
    """Every changelog topic of every service, in declaration order."""
    return tuple(topic for service in SERVICES for topic in service.changelogs)
