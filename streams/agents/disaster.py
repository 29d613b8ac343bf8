"""DisasterDetector: the last software line between a runaway burner and the house.

One agent follows ``sensorData``, ``heatingJobState``, ``relayState`` and ``I2CHeating``
as a single stream, so a job's state, a valve command, its readback and the readings
around them are judged in delivery order (taken in batches, decided one by one). The rules
live in :mod:`streams.disaster_rules`; this module feeds them records, keeps their facts in
changelog tables (:mod:`streams.tables.disaster`) and acts on a detection: a ``DisasterEvent`` on
``DisasterDetected``, then a FATAL alarm — the platform then cuts the power, and this
service, a control service, halts and exits with the stay-down code. Each input is one
step of the service's ledger (:mod:`streams.consistency`): the facts, the detection and
the report and alarm it owes are committed together, so a crash never loses a report
nor makes a second one.

``GET /disaster`` shows whether the water is watched and why, each sensor's window, and
the disasters detected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import Any, Mapping

import faust
from prometheus_client import Counter

from streams import topics
from streams.auth import Role, requires
from streams.app import HeaterService, ServiceKind, ServiceSpec
from streams.consistency import Step, tp_key
from streams.disaster_rules import Detection, DisasterWatch, RuleLimits, SensorWindow
from streams.heartbeats import DETECTOR
from streams.heater_config import HeaterLimits
from streams.lifecycle import Phase
from streams.records import alarm_id_for, occurrence_key
from streams.records import DisasterEvent, HeaterRecord, HeatingJobState, RelayAction, RelayCommand, RelayState, SensorReading, Severity
from streams.tables.disaster import DisasterTables

log = logging.getLogger(__name__)

SPEC = ServiceSpec(
    DETECTOR, ServiceKind.CONTROL,
    description="disaster detector: over-limit, too-fast rise, heat with the valve closed, sensor disagreement",
)
service = HeaterService(SPEC)
app = service.app

ledger = service.use_ledger(group_inputs=True)
tables = DisasterTables(app, ledger)
inputs = service.raw_topic(topics.SENSOR_DATA, topics.HEATING_STATE, topics.RELAY_STATE, topics.I2C_HEATING)
ledger.run_settler()

DETECTED = Counter("heater_disasters_detected_total", "Disasters detected, by rule", ["rule"])


class Detector:
    """The running detector: its limits (validated at start-up) and its watch (restored from tables)."""

    def __init__(self) -> None:
        self.limits: RuleLimits | None = None
        self.watch: DisasterWatch | None = None
        self.decided_through = 0.0
        """``received_at`` of the newest reading decided: what the heartbeat tells the valve lease."""
        self._started = asyncio.Event()

    async def check_limits(self) -> None:
        """Startup self-check: the limits are valid (a ConfigInvalid stops the service); then
        the configuration in force, and each new version as it is published."""
        await service.follow_limits(self.use_limits, HeaterLimits.from_env())
        self._started.set()

    def use_limits(self, limits: HeaterLimits) -> None:
        self.limits = RuleLimits.from_heater(limits)
        if self.watch is not None:
            self.watch.limits = self.limits
        log.info("disaster limits: %s", self.limits)

    async def ready_watch(self) -> DisasterWatch:
        """The watch, once start-up passed (Faust delivers no event before its tables are recovered)."""
        if self.watch is None:
            await self._started.wait()
            self._restore()
        assert self.watch is not None
        return self.watch

    def _restore(self) -> None:
        assert self.limits is not None
        self.watch = tables.load(self.limits)
        log.info(
            "watch restored: job=%s valve=%s windows=%d detections=%d",
            self.watch.job, self.watch.valve, len(self.watch.windows), len(self.watch.detections),
        )

    def _restore_for_view(self) -> None:
        """Show the restored facts before the first event arrives, once the tables are recovered."""
        if self.watch is None and self._started.is_set() and app.tables.recovery.completed.is_set():
            self._restore()

    async def handle(self, step: Step, record: HeaterRecord) -> None:
        watch = await self.ready_watch()
        if isinstance(record, SensorReading):
            await self.on_reading(step, watch, record)
        elif isinstance(record, HeatingJobState):
            tables.save_job(watch.on_job_state(record.job_id, record.state, record.at))
            log.info("heating job %s %s", record.job_id, record.state)
        elif isinstance(record, RelayState):
            before = watch.valve.readback_open
            tables.save_valve(watch.on_readback(record.valve_open, record.read_at))
            if before is not record.valve_open:
                log.info("valve reads %s", "open" if record.valve_open else "closed")
        elif isinstance(record, RelayCommand):
            if record.action is RelayAction.LEASE and record.on:
                tables.save_valve(watch.on_lease_renewal(record.issued_at, record.lease_s))
                return
            wants_open = valve_command(record)
            if wants_open is not None:
                tables.save_valve(watch.on_valve_command(wants_open, record.issued_at, record.lease_s))

    async def on_reading(self, step: Step, watch: DisasterWatch, reading: SensorReading) -> None:
        self.decided_through = max(self.decided_through, reading.received_at)
        if reading.kind != "temperature":
            return
        outcome = watch.on_reading(reading.sensor, reading.value, reading.received_at, released, step.position)
        if outcome.window is not None and outcome.status.watching:
            tables.save_window(outcome.window)
        for detection in outcome.detections:
            await self.act(step, detection)

    async def act(self, step: Step, detection: Detection) -> None:
        """Report a disaster and raise FATAL; a halted service only logs (the power is already cut).

        Still starting counts as acting: the agent runs only after this service's own
        self-check, and a disaster must not wait for the remaining ones. The FATAL is
        raised at the time of the reading that revealed it: its occurrence id
        (:mod:`streams.latch`) is the same when a restart decides the same readings again,
        and a new one when the danger persists past a reset that released it — found
        late or not, it latches.
        """
        DETECTED.labels(detection.rule).inc()
        if service.status.phase in (Phase.HALTED, Phase.STOPPING) or service.alarms is None or service.watch is None:
            log.critical("disaster %s while %s, not acted on: %s", detection.disaster_id, service.status.phase.value, detection.message)
            return
        log.critical("DISASTER %s: %s", detection.disaster_id, detection.message)
        event = DisasterEvent(
            disaster_id=detection.disaster_id, rule=detection.rule, message=detection.message,
            detected_at=detection.at, value=detection.value, limit=detection.limit,
        )
        await step.owe(topics.DISASTER_DETECTED.name, detection.disaster_id.encode(), event.dumps())
        await step.alarms(service.alarms).raise_alarm(
            detection.rule, Severity.FATAL, detection.message, subject=detection.episode, at=detection.at,
            details={"disaster_id": detection.disaster_id, "sensor": detection.sensor, "value": str(detection.value), "limit": str(detection.limit)},
        )
        tables.save_detection(detection)

    def view(self, now: float) -> dict[str, Any]:
        self._restore_for_view()
        watch = self.watch
        if watch is None:
            return {"watching": False, "reason": "starting", "phase": service.status.phase.value}
        status = watch.status(now)
        return {
            "phase": service.status.phase.value,
            "watching": status.watching,
            "reason": status.reason,
            "episode": status.episode,
            "valve_closed": status.valve_closed,
            "closed_since": status.closed_since,
            "job": asdict(watch.job) if watch.job else None,
            "valve": asdict(watch.valve),
            "windows": {name: window_view(w) for name, w in sorted(watch.windows.items())},
            "detections": [asdict(d) for d in sorted(watch.detections.values(), key=lambda d: d.at)],
            "limits": asdict(watch.limits),
        }


def released(detection: Detection) -> Mapping[str, int] | None:
    """What the operator reset that released this detection's FATAL occurrence covers; None if none did."""
    if service.watch is None:
        return None
    key = occurrence_key(alarm_id_for(SPEC.name, detection.rule, detection.episode), detection.at)
    return service.watch.latch.covered_by_release(key)


def valve_command(command: RelayCommand) -> bool | None:
    """The valve state a command asks for, as the I2C adapter carries it out; None if it leaves the valve alone.

    ``valve`` opens or closes; ``lease`` off closes; ``power`` off and ``cutoff`` on take
    every relay, the valve included, to its safe state.
    """
    if command.action is RelayAction.VALVE:
        return command.on
    if command.action is RelayAction.LEASE and not command.on:
        return False
    if (command.action is RelayAction.CUTOFF and command.on) or (command.action is RelayAction.POWER and not command.on):
        return False
    return None


def window_view(window: SensorWindow) -> dict[str, Any]:
    """One sensor's window for ``/disaster``: its extent, last raw and filtered values, the samples."""
    return {
        "count": len(window.samples),
        "first_at": window.samples[0][0] if window.samples else None,
        "last_at": window.newest,
        "last_c": window.samples[-1][1] if window.samples else None,
        "filtered_c": window.latest_filtered(),
        "samples": [list(s) for s in window.samples],
    }


detector = Detector()
service.add_startup_check(detector.check_limits)
service.watched_through = lambda: detector.decided_through


@app.agent(inputs)
async def detect(stream: faust.StreamT) -> None:
    """Records in batches (what arrived within a few ms), each decided in delivery order.

    Faust's work per record, paid per batch instead, is what lets the detector keep up with
    a sensor flooding the bus (measured: about 4,000 readings a second taken one by one,
    6,000–9,000 in batches). One ledger step covers a run of the batch's records from one
    input partition (a record of another partition starts the next step, as the ledger's
    runs require); a record whose decision owes a report ends its step there, so the report
    and its FATAL go out before the next record is decided. Each record keeps its own span
    (new traces within the service's budget), so a detection continues the trace of the
    reading that revealed it.
    """
    async for batch in service.record_batches(stream, admit=ledger.admit, record_spans=True):
        done = 0
        while done < len(batch):
            where = tp_key(batch[done][1].topic, batch[done][1].partition)
            async with ledger.step(covers_event=False, partition=where) as step:
                for record, message in batch[done:]:
                    if tp_key(message.topic, message.partition) != where:
                        break
                    done += 1
                    step.cover(message)
                    with service.record_span(record, message):
                        await detector.handle(step, record)
                    if step.effects:
                        break


@app.page("/disaster")
@requires(Role.VIEWER)
async def disaster_view(web: Any, request: Any) -> Any:
    """Whether the water is watched now and why, the windows, and the disasters detected."""
    return web.json(detector.view(time.time()))
