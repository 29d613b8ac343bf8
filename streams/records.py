"""One versioned record schema per topic.

Every record carries ``schema_version``; a reader accepts only the versions it knows
(``SUPPORTED_VERSIONS``) so a producer that moved ahead is dead-lettered, not
misread. Records validate themselves on construction (``__post_init__``): a record
that exists is a record that makes sense. Field meanings are documented on the class;
``schema_of(record_type)`` gives a JSON-able schema a test can pin.
"""

from __future__ import annotations

import enum
import math
import time
import typing
from typing import Any, ClassVar

import faust

from streams.ids import alarm_id_for, occurrence_key  # noqa: F401 - the records' ids, defined without Faust

SCHEMA_VERSION = 1


class RecordInvalid(ValueError):
    """A record's fields do not make sense (bad enum, non-finite number, empty id...)."""


class Severity(str, enum.Enum):
    """Alarm severities, in rising order; FATAL cuts the heater's power."""

    INFO = "INFO"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"
    FATAL = "FATAL"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class HeaterRecord(
    faust.Record,
    abstract=True,
    serializer="json",
    include_metadata=False,
    coerce=True,
):
    """Base of every topic's record: versioned, JSON, self-validating."""

    SUPPORTED_VERSIONS: ClassVar[frozenset[int]] = frozenset({SCHEMA_VERSION})

    def __post_init__(self) -> None:
        version = getattr(self, "schema_version", None)
        if version not in self.SUPPORTED_VERSIONS:
            raise RecordInvalid(
                f"{type(self).__name__}: schema_version {version!r} not supported "
                f"(supported: {sorted(self.SUPPORTED_VERSIONS)})"
            )
        self.check()

    def check(self) -> None:
        """Record-specific invariants; raise :class:`RecordInvalid` when broken."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise RecordInvalid(message)


def _finite(value: float, name: str) -> None:
    _require(isinstance(value, (int, float)) and math.isfinite(value), f"{name} must be a finite number")


def _one_of(value: str, allowed: typing.Iterable[str], name: str) -> None:
    allowed = tuple(allowed)
    _require(value in allowed, f"{name}={value!r}: expected one of {', '.join(allowed)}")




class Alarm(HeaterRecord):
    """``createAlarm``: one alarm raised by a service.

    ``alarm_id`` is deterministic (:func:`alarm_id_for`), so raising the same condition
    twice is one alarm. ``raised_at`` is seconds since the epoch. ``occurrence`` is the
    source's own name for this FATAL occurrence (e.g. the Pico trip it caused), when the
    time its condition started does not name it (see :mod:`streams.latch`).
    """

    alarm_id: str
    source: str
    code: str
    severity: Severity
    message: str
    raised_at: float
    details: dict[str, str] = {}
    occurrence: str = ""
    schema_version: int = SCHEMA_VERSION

    def check(self) -> None:
        _require(bool(self.alarm_id) and len(self.alarm_id) <= 200, "alarm_id must be 1..200 characters")
        _require(bool(self.source), "source must not be empty")
        _require(bool(self.code), "code must not be empty")
        _one_of(str(getattr(self.severity, "value", self.severity)), (s.value for s in Severity), "severity")
        self.severity = Severity(self.severity)
        _finite(self.raised_at, "raised_at")

    @property
    def is_fatal(self) -> bool:
        return self.severity is Severity.FATAL

    @property
    def occurrence_id(self) -> str:
        """The id a reset names to release this FATAL occurrence (deterministic from the source's input)."""
        return occurrence_key(self.alarm_id, self.raised_at, self.occurrence)


class AlarmClear(HeaterRecord):
    """``deleteAlarm``: a request to mark an alarm inactive (never to remove it)."""

    alarm_id: str
    cleared_by: str
    cleared_at: float
    reason: str = ""
    schema_version: int = SCHEMA_VERSION

    def check(self) -> None:
        _require(bool(self.alarm_id), "alarm_id must not be empty")
        _require(bool(self.cleared_by), "cleared_by must not be empty")
        _finite(self.cleared_at, "cleared_at")


class SensorReading(HeaterRecord):
    """``sensorData``: one decoded sensor frame, timestamped at reception by the CAN adapter."""

    sensor: str
    kind: str
    value: float
    unit: str
    received_at: float
    sequence: int = 0
    status: int = 0
    schema_version: int = SCHEMA_VERSION

    KINDS: ClassVar[tuple[str, ...]] = ("temperature", "flame")

    def check(self) -> None:
        _require(bool(self.sensor), "sensor must not be empty")
        _one_of(self.kind, self.KINDS, "kind")
        _finite(self.value, "value")
        _finite(self.received_at, "received_at")


class SensorFreshness(HeaterRecord):
    """``sensorFreshness``: the newest valid temperature and flame readings the CAN adapter has published.

    The valve lease needs only these two (DESIGN rule 3: fresh temperature data, and the
    flame that proves ignition or its loss), not every reading: the I2C adapter follows
    this instead of ``sensorData``, so a flooded bus does not fill the process that cuts
    the power. Times are the readings' ``received_at``; 0 means none yet. The CAN adapter
    publishes one with each batch of readings that changed them (at most every 100 ms), in
    the same produce request as the readings.
    """

    temperature_at: float = 0.0
    flame: bool = False
    flame_at: float = 0.0
    sent_at: float = 0.0
    schema_version: int = SCHEMA_VERSION

    def check(self) -> None:
        for name in ("temperature_at", "flame_at", "sent_at"):
            _finite(getattr(self, name), name)
            _require(getattr(self, name) >= 0, f"{name} must not be negative")


class DisasterEvent(HeaterRecord):
    """``DisasterDetected``: a disaster the detector found, with the rule and the evidence."""

    disaster_id: str
    rule: str
    message: str
    detected_at: float
    value: float = 0.0
    limit: float = 0.0
    schema_version: int = SCHEMA_VERSION

    def check(self) -> None:
        _require(bool(self.disaster_id) and bool(self.rule), "disaster_id and rule are required")
        _finite(self.detected_at, "detected_at")


class RelayAction(str, enum.Enum):
    """What an ``I2CHeating`` command asks of the relay board."""

    POWER = "power"
    VALVE = "valve"
    SPARK = "spark"
    LEASE = "lease"
    CUTOFF = "cutoff"


class RelayCommand(HeaterRecord):
    """``I2CHeating``: one relay command. ``cutoff`` opens the power cut-off (safe state).

    ``lease_s`` is how long an opened valve may stay open without renewal.
    """

    command_id: str
    action: RelayAction
    on: bool
    issued_by: str
    issued_at: float
    lease_s: float = 0.0
    reason: str = ""
    schema_version: int = SCHEMA_VERSION

    def check(self) -> None:
        _require(bool(self.command_id), "command_id must not be empty")
        _one_of(str(getattr(self.action, "value", self.action)), (a.value for a in RelayAction), "action")
        self.action = RelayAction(self.action)
        _require(isinstance(self.on, bool), "on must be a boolean")
        _finite(self.issued_at, "issued_at")
        _finite(self.lease_s, "lease_s")
        _require(0 <= self.lease_s <= 30, "lease_s must be within 0..30 s")


class RelayState(HeaterRecord):
    """``relayState``: the relay outputs as read back from the Pico after a write.

    ``trip_count`` is the Pico's own count of trips (-1: not read yet): a reset is issued
    for one trip, and refused once the Pico has tripped again.
    """

    power_on: bool
    valve_open: bool
    spark_on: bool
    trip_latched: bool
    watchdog_expired: bool
    read_at: float
    trip_count: int = -1
    schema_version: int = SCHEMA_VERSION


class PlatformLatch(HeaterRecord):
    """``platformLatch``: the FATAL latch; ``latched`` stays true until an operator reset.

    ``occurrences``: the FATAL occurrences that latch (id → alarm id, reason, time), as
    the operator is shown them; ``released``: every occurrence a reset released so far
    (id → reset id). See :mod:`streams.latch`.
    """

    latched: bool
    alarm_id: str
    reason: str
    changed_at: float
    changed_by: str
    occurrences: dict[str, dict[str, Any]] = {}
    released: dict[str, str] = {}
    trip_count: int | None = None
    reset_id: str = ""
    covered: dict[str, dict[str, int]] = {}
    schema_version: int = SCHEMA_VERSION

    def check(self) -> None:
        _finite(self.changed_at, "changed_at")
        _require(isinstance(self.occurrences, dict) and isinstance(self.released, dict), "occurrences and released are maps")
        for key, row in self.occurrences.items():
            _require(isinstance(row, dict) and isinstance(row.get("alarm_id"), str), f"occurrence {key!r}: no alarm_id")
            _finite(row.get("raised_at"), f"occurrence {key!r} raised_at")  # type: ignore[arg-type]
        _require(all(isinstance(v, str) for v in self.released.values()), "released maps occurrences to reset ids")
        _require(isinstance(self.covered, dict) and all(_positions(p) for p in self.covered.values()),
                 "covered maps reset ids to input positions")


class OperatorReset(HeaterRecord):
    """``operatorReset``: a signed, one-time reset of the FATAL latch by an operator.

    It releases exactly the FATAL ``occurrences`` it names (those the operator was shown),
    and only while the Pico is at ``trip_count`` (None: no trip count was known).
    ``covered``: the end of each readings partition ("topic:partition" → offset) when it
    was issued — the readings the operator's decision covers: a condition it released is
    raised again only by a reading after them (:mod:`streams.latch`).
    """

    reset_id: str
    operator: str
    nonce: str
    issued_at: float
    signature: str
    occurrences: list[str] = []
    trip_count: int | None = None
    covered: dict[str, int] = {}
    schema_version: int = SCHEMA_VERSION

    def check(self) -> None:
        _require(isinstance(self.occurrences, list) and all(isinstance(o, str) and o for o in self.occurrences),
                 "occurrences must be a list of occurrence ids")
        _require(self.trip_count is None or isinstance(self.trip_count, int), "trip_count must be an integer")
        _require(_positions(self.covered), "covered maps topic:partition to offsets")

    def signed_payload(self) -> bytes:
        """The exact bytes the signature covers: what is released, and what it covers, are signed too."""
        named = ",".join(sorted(self.occurrences))
        covered = ",".join(f"{k}={v}" for k, v in sorted(self.covered.items()))
        return f"{self.reset_id}|{self.operator}|{self.nonce}|{self.issued_at!r}|{named}|{self.trip_count}|{covered}".encode()


def _positions(value: Any) -> bool:
    """A map of input partition ("topic:partition") → offset."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in value.items())


class ConfigDocument(HeaterRecord):
    """``config``: one validated, versioned configuration, keyed by its scope."""

    version: int
    data: dict[str, Any]
    issued_at: float
    issued_by: str
    schema_version: int = SCHEMA_VERSION


class Heartbeat(HeaterRecord):
    """``heartbeats``: a service says it is alive, in which phase, and how fresh its input is.

    ``watched_through`` is the ``received_at`` of the newest reading the service has
    decided (0 before the first): alive is not enough for a watcher — a detector that
    is up but minutes behind on ``sensorData`` watches nothing, and the valve lease
    must see that (DESIGN rule 3).
    """

    service: str
    instance: str
    phase: str
    at: float
    pid: int = 0
    watched_through: float = 0.0
    version: str = ""
    identity: str = ""
    schema_version: int = SCHEMA_VERSION

    def check(self) -> None:
        _finite(self.at, "at")
        _finite(self.watched_through, "watched_through")
        _require(self.watched_through >= 0, "watched_through must not be negative")


class RegistryEvent(HeaterRecord):
    """``registryEvents``: what discovery expects to run now (``tick``), or an operator's watch request.

    StateRegistry's tables change only from its stream (Faust tables are written by agents),
    so its timer and its API put these on its own topic and its agent decides them in order.
    """

    kind: str
    at: float
    expected: list[str] = []
    service: str = ""
    by: str = ""
    schema_version: int = SCHEMA_VERSION

    KINDS: ClassVar[tuple[str, ...]] = ("tick", "watch", "unwatch")

    def check(self) -> None:
        _one_of(self.kind, self.KINDS, "kind")
        _finite(self.at, "at")
        _require(self.kind == "tick" or bool(self.service), "a watch request names a service")


class HeatingJobState(HeaterRecord):
    """``heatingJobState``: where the one heating job is (idle/igniting/heating/done/failed)."""

    job_id: str
    state: str
    target_c: float
    at: float
    reason: str = ""
    schema_version: int = SCHEMA_VERSION

    STATES: ClassVar[tuple[str, ...]] = ("idle", "igniting", "heating", "done", "failed")

    def check(self) -> None:
        _one_of(self.state, self.STATES, "state")


class ExceptionReport(HeaterRecord):
    """``exceptions``: an unhandled exception forwarded by a service (:mod:`streams.exception_reports`).

    ``service`` and ``identity`` are who the sender says it is; ExceptionsServer checks
    them against Vault's allowed list. ``instance`` tells processes of one service apart.
    ``traceback`` is the stack, truncated by the sender. ``trace_id`` is empty until
    traces are carried in Kafka headers. Fields after ``at`` have defaults so reports
    from older senders still decode.
    """

    service: str
    exc_type: str
    message: str
    traceback: str
    at: float
    instance: str = ""
    identity: str = ""
    trace_id: str = ""
    report_id: str = ""
    schema_version: int = SCHEMA_VERSION

    def check(self) -> None:
        _require(bool(self.service) and len(self.service) <= 200, "service must be 1..200 characters")
        _require(bool(self.exc_type) and len(self.exc_type) <= 500, "exc_type must be 1..500 characters")
        _finite(self.at, "at")


#: The record each topic carries (topic name → record type).
RECORD_FOR_TOPIC: dict[str, type[HeaterRecord]] = {
    "createAlarm": Alarm,
    "deleteAlarm": AlarmClear,
    "sensorData": SensorReading,
    "sensorFreshness": SensorFreshness,
    "DisasterDetected": DisasterEvent,
    "I2CHeating": RelayCommand,
    "relayState": RelayState,
    "platformLatch": PlatformLatch,
    "operatorReset": OperatorReset,
    "config": ConfigDocument,
    "heartbeats": Heartbeat,
    "registryEvents": RegistryEvent,
    "heatingJobState": HeatingJobState,
    "exceptions": ExceptionReport,
}


def schema_of(record_type: type[HeaterRecord]) -> dict[str, str]:
    """Field name → type name, the shape a schema test pins."""
    hints = typing.get_type_hints(record_type)
    return {name: _type_name(hints[name]) for name in record_type._options.fields}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def now() -> float:
    """Wall-clock seconds since the epoch, the time base of every record."""
    return time.time()
