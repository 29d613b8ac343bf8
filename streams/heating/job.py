"""The heating job process: the burner state machine between Kafka and the relay adapter.

``python -m streams.heating --target C`` runs one heating cycle and exits with the
platform's code: ``0`` target reached, ``1`` failed (no temperature change, flame
loss, no sensor data, target refused, ignition lock-out — the lock-out also raises a
FATAL alarm, so only an operator reset clears it), ``3`` FATAL from elsewhere (the
job stops at once). It is a thin loop on
:class:`~streams.edge.EdgeService`: ``sensorData`` (from its end, so a backlog never
drives the burner) and a 50 ms tick go into :class:`~streams.heating.machine.HeatingMachine`,
whose effects become ``I2CHeating`` commands, ``heatingJobState`` records and alarms.

Started while the platform is latched it does nothing and exits ``3`` at once, so a
Kubernetes Job (``backoffLimit: 0``, exit code 3 is ``FailJob``) is never retried.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
import uuid
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from streams import exitcodes, metrics, topics
from streams.auth import Role, requires
from streams.codec import DecodeError, decode
from streams.edge import EdgeService
from streams.heater_config import FLAME_SENSOR, WATER_SENSORS, ConfigInvalid, HeaterLimits
from streams.heating.effects import ClearAlarm, Effect, Finish, Outcome, Publish, RaiseAlarm, Relay
from streams.heating.machine import HeatingMachine
from streams.latch import LatchView
from streams.lifecycle import ServiceKind, ServiceSpec
from streams.records import HeatingJobState, RelayCommand, RelayState, SensorReading
from streams.settings import FETCH_WAIT_MS, Settings
from streams.readers import open_reader

log = logging.getLogger(__name__)

SPEC = ServiceSpec(
    "heating-job", ServiceKind.CONTROL, description="one heating cycle: ignition, then follow the water to a target"
)

TICK_MS = 50
#: ``heatingJobState`` is compacted and there is one heater: one key keeps the latest state.
STATE_KEY = b"heating-job"
SENSOR_FAULT_BIT = 0x01
#: How long the job waits for the relay adapter to confirm the valve closed before it exits.
CONFIRM_CLOSED_S = 2.0
#: After raising its own FATAL, how long the job waits for the platform watch to stop it.
FATAL_STOP_WAIT_S = 5.0
#: How long an alarm may take to send before the job gives up on it (the broker may be away).
ALARM_SEND_TIMEOUT_S = 3.0

EXIT_CODES: dict[Outcome, int] = {
    Outcome.DONE: exitcodes.DONE,
    Outcome.FAILED: exitcodes.HEATING_FAILED,
    Outcome.LOCKOUT: exitcodes.HEATING_FAILED,
}


class HeatingJob:
    """Carries out one :class:`HeatingMachine` on an :class:`EdgeService`."""

    def __init__(
        self,
        service: EdgeService,
        machine: HeatingMachine,
        job_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.machine = machine
        self.job_id = job_id
        self.clock = clock
        self.valve_closed_at: float | None = None
        self.relay: RelayState | None = None
        self.state: dict[str, Any] = {"job_id": job_id, "target_c": machine.target_c, "state": "idle", "reason": ""}

    def install(self) -> None:
        """FATAL hook (gas off, cut-off) and a ``/job`` view of where the job is."""
        self.service.on_fatal.append(self.on_fatal)
        self.service.web.router.add_get("/job", self.job_view)

    # -- bodies ----------------------------------------------------------------------

    async def body(self, service: EdgeService) -> None:
        """Run the machine until it finishes; close the gas whatever stops it."""
        consumer = await self._consumer()
        try:
            await self.carry_out(self.machine.start(self.clock()))
            if self.machine.finish is None:
                service.mark_ready()
            while self.machine.finish is None:
                batches = await consumer.getmany(timeout_ms=TICK_MS)
                for tp, messages in batches.items():
                    await self.on_messages(tp.topic, messages)
                await self.carry_out(self.machine.tick(self.clock()))
            await self.end(consumer, self.machine.finish)
        except BaseException:  # cancelled (signal, FATAL) or crashed: the gas goes off first
            try:
                await asyncio.shield(self._stopped())
            except Exception:
                log.exception("could not switch the gas off; the valve lease (%.0f s) closes it", self.machine.limits.lease_s)
            raise
        finally:
            await consumer.stop()

    async def halted(self, service: EdgeService) -> None:
        """Started while the platform is latched: no heating, and no retry either."""
        log.error("heating job %s refused: the platform is latched (%s)", self.job_id, service.watch.latch.reason if service.watch else "")
        service.stop(exitcodes.STAY_DOWN)

    async def on_fatal(self, latch: LatchView) -> None:
        """Gas off and the power cut-off asked for before the process leaves with STAY_DOWN."""
        await self.carry_out(self.machine.abort(f"FATAL: {latch.reason}", fatal=True))
        await self._flush()

    async def _stopped(self) -> None:
        """Stopped before its end (signal, FATAL, crash): gas off; a job stopped half-way did not succeed."""
        effects = self.machine.abort("heating job stopped before its end")
        if effects:
            log.warning("heating job %s stopped in phase %s: gas off", self.job_id, self.machine.phase.value)
            await self.carry_out(effects)
            await self._flush()
        if self.machine.finish is None and self.service.exit_code == exitcodes.DONE:
            self.service.exit_code = exitcodes.HEATING_FAILED

    # -- inputs ----------------------------------------------------------------------

    async def on_messages(self, topic: str, messages: list[ConsumerRecord]) -> None:
        if topic == topics.RELAY_STATE.name:
            self._on_relay_states(messages)
            return
        wall, now = time.time(), self.clock()
        for message in messages:
            try:
                reading = decode(message.value, SensorReading)
            except DecodeError as exc:
                metrics.SKIPPED.labels(SPEC.name, topic, exc.reason).inc()
                log.debug("skipped a sensor reading: %s", exc)
                continue
            if reading.status & SENSOR_FAULT_BIT:
                continue
            read_at = now - max(0.0, wall - reading.received_at)
            if reading.kind == "temperature" and reading.sensor in WATER_SENSORS:
                await self.carry_out(self.machine.on_temperature(reading.sensor, reading.value, read_at, now))
            elif reading.kind == "flame" and reading.sensor == FLAME_SENSOR:
                await self.carry_out(self.machine.on_flame(reading.value >= 0.5, read_at, now))

    def _on_relay_states(self, messages: list[ConsumerRecord]) -> None:
        for message in messages:
            try:
                self.relay = decode(message.value, RelayState)
            except DecodeError as exc:
                metrics.SKIPPED.labels(SPEC.name, topics.RELAY_STATE.name, exc.reason).inc()
                log.debug("skipped a relay state: %s", exc)

    # -- effects ---------------------------------------------------------------------

    async def carry_out(self, effects: list[Effect]) -> None:
        """Carry out effects in order: gas commands before the alarms and states that explain them."""
        if any(isinstance(e, Finish) and e.outcome is Outcome.LOCKOUT for e in effects):
            self.service.reserve_exit(EXIT_CODES[Outcome.LOCKOUT])
        for effect in effects:
            if isinstance(effect, Relay):
                await self._command(effect)
            elif isinstance(effect, Publish):
                await self._publish(effect)
            elif isinstance(effect, RaiseAlarm):
                assert self.service.alarms is not None
                await self._alarm(f"raise {effect.code}", self.service.alarms.raise_alarm(
                    effect.code, effect.severity, effect.message,
                    details={"job_id": self.job_id, "target_c": f"{self.machine.target_c:.1f}"},
                ))
            elif isinstance(effect, ClearAlarm):
                assert self.service.alarms is not None
                await self._alarm(f"clear {effect.code}", self.service.alarms.clear_alarm(effect.code, reason=effect.reason))
            elif isinstance(effect, Finish):
                log.info("heating job %s ends: %s, exit code %d", self.job_id, effect.outcome.value, EXIT_CODES[effect.outcome])

    async def _alarm(self, what: str, sending: Awaitable[Any]) -> None:
        """Send an alarm, but never let a broker that does not answer hold the job: the gas is
        already commanded off (and its lease runs out on its own), and the job's exit code
        tells the controller how it ended."""
        try:
            await asyncio.wait_for(sending, ALARM_SEND_TIMEOUT_S)
        except (asyncio.TimeoutError, KafkaError) as exc:
            log.error("could not %s within %.0f s (broker unreachable?): %r", what, ALARM_SEND_TIMEOUT_S, exc)

    async def _command(self, relay: Relay) -> None:
        command = RelayCommand(
            command_id=uuid.uuid4().hex,
            action=relay.action,
            on=relay.on,
            issued_by=f"{SPEC.name}/{self.job_id}",
            issued_at=time.time(),
            lease_s=relay.lease_s,
            reason=relay.reason,
        )
        if relay.action == "valve" and not relay.on:
            self.valve_closed_at = command.issued_at
        level = logging.DEBUG if relay.action == "lease" else logging.INFO
        log.log(level, "command %s %s (%s)", relay.action, "on" if relay.on else "off", relay.reason)
        await self.service.send(topics.I2C_HEATING.name, self.job_id.encode(), command.dumps())

    async def _publish(self, publish: Publish) -> None:
        record = HeatingJobState(
            job_id=self.job_id, state=publish.state, target_c=float(self.machine.target_c), at=time.time(), reason=publish.reason
        )
        self.state.update(state=publish.state, reason=publish.reason, at=record.at)
        log.info("heating job %s: %s (%s)", self.job_id, publish.state, publish.reason)
        await self.service.send(topics.HEATING_STATE.name, STATE_KEY, record.dumps())

    async def _flush(self) -> None:
        """Deliver what was queued (the gas-off commands above all), bounded: with the broker
        away they cannot be delivered, and the valve lease closes the gas without them."""
        if self.service.producer is None:
            return
        try:
            await asyncio.wait_for(self.service.producer.flush(), ALARM_SEND_TIMEOUT_S)
        except (asyncio.TimeoutError, KafkaError) as exc:
            log.error("could not deliver the job's last messages within %.0f s (broker unreachable?): %r",
                      ALARM_SEND_TIMEOUT_S, exc)

    # -- the end ---------------------------------------------------------------------

    async def end(self, consumer: AIOKafkaConsumer, finish: Finish) -> None:
        """Flush, confirm the valve closed where it was open, then stop with the outcome's code."""
        await self._flush()
        code = EXIT_CODES[finish.outcome]
        if finish.outcome is Outcome.LOCKOUT:
            # Our own FATAL: the platform watch sees it, runs the FATAL hooks and stops us.
            await asyncio.sleep(FATAL_STOP_WAIT_S)
            log.error("the platform watch did not stop the job after its FATAL alarm; stopping")
        elif self.valve_closed_at is not None:
            await self._confirm_closed(consumer)
        heated = self.machine.heating_at
        if heated is not None:
            log.info(
                "heating job %s: %.1f s from start to %s, %.1f s heating, %d ignition attempt(s)",
                self.job_id, self.clock() - self.machine.started_at, finish.outcome.value,
                self.clock() - heated, self.machine.attempt,
            )
        self.service.stop(code)

    async def _confirm_closed(self, consumer: AIOKafkaConsumer) -> None:
        assert self.valve_closed_at is not None
        deadline = self.clock() + CONFIRM_CLOSED_S
        while self.clock() < deadline:
            relay = self.relay
            if relay is not None and not relay.valve_open and relay.read_at >= self.valve_closed_at:
                log.info("gas valve closed, confirmed by the relay board")
                return
            batches = await consumer.getmany(timeout_ms=TICK_MS)
            for tp, messages in batches.items():
                if tp.topic == topics.RELAY_STATE.name:
                    self._on_relay_states(messages)
        log.error("valve closure not confirmed within %.1f s; its lease expires on its own", CONFIRM_CLOSED_S)

    async def _consumer(self) -> AIOKafkaConsumer:
        """Readings and relay states from *now*: old data never drive the burner."""
        return await open_reader(
            self.service.settings.broker_bootstrap, (topics.SENSOR_DATA.name, topics.RELAY_STATE.name),
            fetch_wait_ms=FETCH_WAIT_MS, from_end=True,
        )

    @requires(Role.VIEWER)
    async def job_view(self, request: web.Request) -> web.Response:
        return web.json_response({**self.state, "phase": self.machine.phase.value, "attempt": self.machine.attempt})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m streams.heating", description="Run one heating cycle to a target.")
    parser.add_argument("--target", type=float, required=True, help="water temperature to reach, °C")
    parser.add_argument("--job-id", default=None, help="id reported on heatingJobState (default: a new one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one heating job; the process exit code (see :mod:`streams.exitcodes`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("HEATER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        limits = HeaterLimits.from_env()
    except ConfigInvalid as exc:
        log.error("heating job: invalid limits: %s", exc)
        return exitcodes.DEPENDENCY_MISSING
    job_id = args.job_id or uuid.uuid4().hex[:12]
    service = EdgeService(SPEC, Settings.from_env())
    job = HeatingJob(service, HeatingMachine(args.target, limits), job_id)
    job.install()
    log.info("heating job %s: target %.1f °C", job_id, args.target)
    return service.run(job.body, job.halted)
