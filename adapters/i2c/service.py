"""The I2C relay adapter: ``I2CHeating`` commands → Pico relay writes, confirmed by readback.

A thin asyncio program on :class:`~streams.edge.EdgeService`.  While running it

* follows ``I2CHeating`` from its end, each command as it arrives, through the
  :class:`~adapters.i2c.controller.RelayController`; and ``sensorFreshness`` (the CAN
  adapter's newest valid temperature and flame readings) with DisasterDetector's beats,
  which keep the valve's lease: not every reading, so a flooded bus does not fill this
  process;
* kicks the Pico's hardware watchdog every 100 ms and reads the board back each time,
  so a board that went safe behind its back (watchdog, restart, welded valve) is seen
  within one period;
* enforces the lease, freshness, ignition and spark bounds every 50 ms;
* confirms every write by reading back command, contacts and status, and publishes
  the result on ``relayState``.  A write it cannot confirm is an alarm; energised
  outputs it cannot confirm are switched off, and if even "all off" cannot be
  confirmed it stops kicking so the hardware watchdog takes the relays down.

On FATAL its hook trips the Pico (power cut latched in hardware) and confirms by
readback before the process exits with STAY_DOWN.  On start it reads the board: a
tripped board raises FATAL again and is never reset here; the halted body
(:mod:`adapters.i2c.resets`) releases it only for a verified operator reset.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, Callable, TypeVar

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry.trace import Span

from adapters.i2c import metrics
from adapters.i2c.board import BoardError, Readback, RelayBoard
from adapters.i2c.controller import Action, Command, Decision, Limits, RelayController
from adapters.i2c.registers import SAFE, Relays
from adapters.i2c.resets import ResetGate
from streams import exitcodes, kafka_clients, topics, tracing
from streams.auth import Role, requires
from streams.codec import DecodeError, decode
from streams.edge import EdgeService
from streams.latch import LatchView
from streams.lifecycle import ServiceKind, ServiceSpec
from streams.heartbeats import watching_through
from streams.records import Heartbeat, RelayCommand, RelayState, SensorFreshness, Severity
from streams.settings import FETCH_WAIT_MS, PROMPT_INPUT, READINGS_INPUT, InputFetch, Settings
from streams.readers import open_reader

log = logging.getLogger(__name__)

SPEC = ServiceSpec(
    "i2c", ServiceKind.CONTROL, description="I2C relay adapter: Pico relay board, watchdog, trip"
)

KICK_PERIOD_S = 0.1
TICK_PERIOD_S = 0.05
WRITE_ATTEMPTS = 3
TRIP_ATTEMPTS = 5
RETRY_DELAY_S = 0.01
STARTUP_RETRY_S = 0.5
ERROR_CLEAR_AFTER_S = 2.0
RELAY_STATE_EVERY_S = 1.0
#: The longest a valve command waits for the readings published before it (:meth:`RelayAdapter._readings_caught_up`).
CATCH_UP_S = 0.5
ALARM_RESEND_S = 0.5

#: Alarms about one incident of a heating cycle: cleared when the next valve opens.
INCIDENT_CODES = ("lease-expired", "stale-data", "detector-silent", "ignition-failed", "flame-failure", "spark-timeout", "command-refused")

T = TypeVar("T")


class BoardIO:
    """Runs board calls on one worker thread, so a slow bus never blocks the event loop.

    ``lock`` makes compound operations (write then read back) atomic with respect to
    each other; the FATAL trip deliberately does not take it, nor wait for the thread:
    it is written from the event loop's thread (:meth:`now`), between two bus transactions.
    """

    def __init__(self, board: RelayBoard) -> None:
        self.board = board
        self.lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="i2c")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def now(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on this thread at once, blocking it for one bus transaction (the bus
        serialises it with one in progress on the worker thread). Measured on the simulated
        bus (``bench/fatal_latency.py``, trip decided → Pico cut): median 5 ms, up to 20, when
        the trip queued behind the watchdog's readbacks and a thread hand-over; 0.5 ms, up
        to 8, from this thread."""
        return fn(*args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.board.close()


class RelayAdapter:
    """The adapter's behaviour; :func:`main` wires it into an :class:`EdgeService`."""

    def __init__(
        self,
        service: EdgeService,
        board: RelayBoard,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.io = BoardIO(board)
        self.controller = RelayController(limits)
        self.clock = clock
        self.last_readback: Readback | None = None
        self.applied: Relays = SAFE
        self.last_command: dict[str, Any] | None = None
        self.halting = False
        self.kicking = False
        self._unconfirmed_safe = False
        self._raised: set[tuple[str, str]] = set()
        self.trip_count = -1  # the Pico's, as last read (-1: not read yet)
        self._last_error_at: float | None = None
        self._published: tuple[Relays, bool, bool] | None = None
        self._published_at = 0.0
        #: Set each time the readings reader has answered (:meth:`_readings_caught_up`).
        self._readings_round = asyncio.Event()
        self._readings_reader: AIOKafkaConsumer | None = None

    def install(self) -> None:
        """Hook into the service: FATAL trip, ``/relays`` view."""
        self.service.on_fatal.append(self.on_fatal)
        self.service.web.router.add_get("/relays", self.relays_view)

    @property
    def settings(self) -> Settings:
        return self.service.settings

    # -- the running body ----------------------------------------------------------

    async def body(self, service: EdgeService) -> None:
        """Check the board, make it safe, then kick, tick and follow commands until stopped."""
        readback = await self.read_until_ok("start-up")
        if readback.status.trip_latched:
            await ResetGate.for_adapter(self).settle_published()
            readback = await self.read_until_ok("start-up, after published resets")
        if readback.status.trip_latched:
            await self.raise_own_fatal(
                "pico-tripped", "the Pico's power cut-off is tripped (latched in hardware); an operator reset is required"
            )
            await asyncio.Event().wait()  # the FATAL hook stops the service
        tasks: list[asyncio.Task[None]] = []
        try:
            if readback.status.wdt_expired or readback.status.cmd_rejected:
                log.info("start-up: clearing board faults %s", readback.status)
                await self.io.call(self.io.board.clear_faults)
            if not await self.apply(SAFE, "start-up"):
                raise BoardError("start-up", detail="the board did not confirm the safe state")
            await self.io.call(self.io.board.kick)
            self.kicking = True
            # Kick from here on: joining the topics can take longer than the watchdog window,
            # and an expired watchdog makes the Pico refuse the first commands.
            tasks = [
                asyncio.ensure_future(self._kick_loop()),
                asyncio.ensure_future(self._tick_loop()),
            ]
            commands = await self._reader((topics.I2C_HEATING.name,), PROMPT_INPUT)
            try:
                readings = self._readings_reader = await self._reader(
                    (topics.SENSOR_FRESHNESS.name, topics.HEARTBEATS.name), READINGS_INPUT)
            except BaseException:
                await commands.stop()
                raise
            service.mark_ready()
            try:
                await self._consume(commands, readings)
            finally:
                await asyncio.gather(commands.stop(), readings.stop())
        finally:
            self.kicking = False
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not self.halting:
                await asyncio.shield(self._safe_on_stop())

    async def halted(self, service: EdgeService) -> None:
        """Started while the platform is latched: hold the board tripped, verify operator resets."""
        await ResetGate.for_adapter(self).run()

    async def read_until_ok(self, why: str) -> Readback:
        """Identify the board and read it back, retrying (with an alarm) until it answers."""
        while True:
            try:
                await self.io.call(self.io.board.identify)
                readback = await self.io.call(self.io.board.read_back)
            except BoardError as exc:
                await self._bus_error(exc, f"{why}: the Pico does not answer")
                await asyncio.sleep(STARTUP_RETRY_S)
                continue
            self.note(readback)
            await self.read_trip_count()
            await self.publish(readback)
            return readback

    async def _safe_on_stop(self) -> None:
        """A clean stop leaves the gas closed; the watchdog covers the case where this fails."""
        try:
            self.controller.force_safe()
            await asyncio.wait_for(self.apply(SAFE, "stop"), 1.0)
        except (asyncio.TimeoutError, asyncio.CancelledError, BoardError):
            log.warning("stop: safe state not confirmed; the hardware watchdog will take the relays down")

    # -- kafka ---------------------------------------------------------------------

    async def _reader(self, names: tuple[str, ...], fetch: InputFetch) -> AIOKafkaConsumer:
        """A reader from *now*: a command issued while we were down is never run."""
        return await open_reader(self.settings.broker_bootstrap, names, fetch_wait_ms=fetch.wait_ms,
                                 fetch_min_bytes=fetch.min_bytes, from_end=True)

    async def _consume(self, commands: AIOKafkaConsumer, readings: AIOKafkaConsumer) -> None:
        """Commands as they arrive; the readings' freshness and the detector's beats in batches.

        Those only keep the valve lease (each carries the reception time it stands for), so
        a fetch of them takes what arrived within the fetch wait: ten fetches a second.
        """
        tasks = [asyncio.ensure_future(self._follow_commands(commands)),
                 asyncio.ensure_future(self._follow_readings(readings))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow_commands(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            for messages in batches.values():
                for message in messages:
                    with tracing.consumed(self.service.tracer, message):
                        await self.on_command(message.value)

    async def _follow_readings(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            self._take_readings(await consumer.getmany(timeout_ms=READINGS_INPUT.wait_ms * 2))
            done, self._readings_round = self._readings_round, asyncio.Event()
            done.set()

    async def _readings_caught_up(self) -> None:
        """Until the readings reader has taken every reading and beat published by now.

        Readings come in batches, commands as they arrive: a valve command can overtake the
        readings published before it (right after a start, say), and would be refused for
        want of them. At most :data:`CATCH_UP_S`; then the command is judged on what is there.
        """
        reader = self._readings_reader
        if reader is None:
            return
        try:
            async with asyncio.timeout(CATCH_UP_S):
                ends = await kafka_clients.log_ends(reader, reader.assignment(), follow=False, settings=self.settings)
                while [tp for tp, end in ends.items() if await reader.position(tp) < end]:
                    await self._readings_round.wait()
        except (asyncio.TimeoutError, KafkaError) as exc:
            log.warning("judging a valve command on the readings taken so far: %s", exc or "not caught up in time")

    def _take_readings(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        by_topic: dict[str, list[ConsumerRecord]] = {}
        for tp, messages in batches.items():
            by_topic.setdefault(tp.topic, []).extend(messages)
        if freshness := by_topic.get(topics.SENSOR_FRESHNESS.name):
            self.on_freshness(freshness)
        if beats := by_topic.get(topics.HEARTBEATS.name):
            self.on_heartbeats(beats)

    def on_heartbeats(self, messages: list[ConsumerRecord]) -> None:
        """DisasterDetector's beats: how current the readings it decides are (the valve lease needs it)."""
        wall, now = time.time(), self.clock()
        for message in messages:
            try:
                beat = decode(message.value, Heartbeat)
            except DecodeError as exc:
                metrics.SKIPPED.labels(topics.HEARTBEATS.name, exc.reason).inc()
                continue
            decided = watching_through(beat)
            if decided is not None:
                self.controller.on_detector(now - max(0.0, wall - decided))

    def on_freshness(self, messages: list[ConsumerRecord]) -> None:
        """The newest valid temperature and flame readings the CAN adapter published; the last one that decodes counts."""
        wall, now = time.time(), self.clock()
        for message in reversed(messages):
            try:
                fresh = decode(message.value, SensorFreshness)
            except DecodeError as exc:
                metrics.SKIPPED.labels(topics.SENSOR_FRESHNESS.name, exc.reason).inc()
                continue
            if fresh.temperature_at:
                self.controller.on_temperature(now - max(0.0, wall - fresh.temperature_at))
            if fresh.flame_at:
                self.controller.on_flame(fresh.flame, now - max(0.0, wall - fresh.flame_at))
            return

    async def on_command(self, payload: bytes | None) -> None:
        """Decode, decide, write, confirm."""
        try:
            record = decode(payload, RelayCommand)
        except DecodeError as exc:
            metrics.SKIPPED.labels(topics.I2C_HEATING.name, exc.reason).inc()
            metrics.COMMANDS.labels("unknown", "malformed").inc()
            log.warning("skipped a malformed relay command: %s", exc)
            return
        action = record.action.value
        tracing.annotate(tracing.attributes_of(record))
        if self.halting or not self.service.acting:
            tracing.annotate({"heater.result": "halted"})
            metrics.COMMANDS.labels(action, "halted").inc()
            log.warning("ignored %s command %s: not acting", action, record.command_id)
            return
        command = Command(
            action=Action(action),
            on=record.on,
            lease_s=record.lease_s,
            age_s=max(0.0, time.time() - record.issued_at),
            command_id=record.command_id,
            issued_by=record.issued_by,
        )
        if self.controller.waits_for_inputs(command, self.clock()):
            await self._readings_caught_up()
        decision = self.controller.command(command, self.clock())
        result = await self._carry_out(decision, f"{action} {'on' if record.on else 'off'}")
        tracing.annotate({"heater.result": result})
        metrics.COMMANDS.labels(action, result).inc()
        self.last_command = {
            "command_id": record.command_id,
            "action": action,
            "on": record.on,
            "lease_s": record.lease_s,
            "issued_by": record.issued_by,
            "result": result,
            "reason": decision.message,
            "at": time.time(),
        }
        if decision.refusal is not None:
            metrics.REFUSALS.labels(decision.refusal.value).inc()
            log.warning("refused %s from %s: %s", action, record.issued_by, decision.message)
            await self.raise_alarm(
                "command-refused", Severity.WARNING, f"{action} command refused: {decision.message}",
                subject=decision.refusal.value, details={"command_id": record.command_id, "issued_by": record.issued_by},
            )
        elif result == "applied" and decision.outputs.gas_valve_open:
            await self._clear_incidents()

    async def _carry_out(self, decision: Decision, cause: str) -> str:
        if not decision.accepted:
            return "refused"
        if not decision.changed:
            return "accepted"
        return "applied" if await self.apply(decision.outputs, cause) else "unconfirmed"

    # -- periodic tasks ------------------------------------------------------------

    async def _kick_loop(self) -> None:
        """Feed the watchdog and read the board back every period."""
        await self._every(KICK_PERIOD_S, self._kick_once)

    async def _tick_loop(self) -> None:
        await self._every(TICK_PERIOD_S, self._tick_once)

    async def _every(self, period: float, step: Callable[[], Any]) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += period
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = loop.time()
            if self.halting:
                return
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a periodic safety task must outlive one bad step
                log.exception("%s failed; continuing", getattr(step, "__name__", "periodic step"))

    async def _kick_once(self) -> None:
        if self._unconfirmed_safe:
            # No kicks until "all off" is confirmed: the hardware watchdog is the backstop.
            if await self.apply(SAFE, "recovery"):
                log.warning("safe state confirmed again; resuming watchdog kicks")
            return
        if not self.kicking:
            return
        async with self.io.lock:
            try:
                await self.io.call(self.io.board.kick)
                metrics.KICKS.inc()
                readback = await self.io.call(self.io.board.read_back)
            except BoardError as exc:
                await self._bus_error(exc, "watchdog kick failed")
                return
            expected = self.applied
        self.note(readback)
        await self._bus_ok()
        await self._check(readback, expected)

    async def _tick_once(self) -> None:
        decision = self.controller.tick(self.clock())
        for event in decision.events:
            metrics.SAFETY_ACTIONS.labels(event.code).inc()
        if decision.changed and not self.halting:
            await self.apply(decision.outputs, "tick: " + ", ".join(e.code for e in decision.events))
        for event in decision.events:
            await self.raise_alarm(event.code, Severity(event.severity), event.message)

    async def _check(self, readback: Readback, expected: Relays) -> None:
        """Compare the board with what was last written; the board is the truth."""
        status = readback.status
        if self.halting:
            return
        if status.trip_latched:
            await self.raise_own_fatal("pico-tripped", "the Pico's power cut-off tripped while running")
            return
        if status.valve_stuck:
            await self.raise_own_fatal(
                "valve-stuck", "gas valve contacts stay closed with the valve commanded shut (welded valve)"
            )
            return
        if not readback.confirms(expected):
            metrics.READBACK_MISMATCHES.inc()
            log.warning("board %s differs from the last write %s (status %s)", readback.contacts, expected, status)
            if not expected.is_safe:
                await self.raise_alarm(
                    "readback-mismatch", Severity.CRITICAL,
                    "the board dropped energised outputs on its own (watchdog, restart or refusal); all off",
                    details={"contacts": str(readback.contacts), "status": str(status)},
                )
            self.controller.force_safe()
            await self.apply(SAFE, "mismatch")
        elif status.wdt_expired or status.cmd_rejected:
            log.warning("clearing board faults %s (relays safe)", status)
            async with self.io.lock:
                try:
                    await self.io.call(self.io.board.clear_faults)
                except BoardError as exc:
                    await self._bus_error(exc, "CLEAR_FAULTS failed")
        await self.publish(readback)

    # -- writes --------------------------------------------------------------------

    async def apply(self, outputs: Relays, cause: str) -> bool:
        """Write ``outputs`` and confirm by readback; True only when the board confirms them."""
        with self.service.tracer.start_as_current_span("relay write", attributes={"heater.cause": cause}) as span:
            return await self._apply(outputs, cause, span)

    async def _apply(self, outputs: Relays, cause: str, span: Span) -> bool:
        readback: Readback | None = None
        async with self.io.lock:
            for attempt in range(1, WRITE_ATTEMPTS + 1):
                if self.halting:
                    return False
                try:
                    self.applied = outputs
                    await self.io.call(self.io.board.write_relays, outputs)
                    readback = await self.io.call(self.io.board.read_back)
                except BoardError as exc:
                    await self._bus_error(exc, f"write {outputs} ({cause}) attempt {attempt}")
                    await asyncio.sleep(RETRY_DELAY_S)
                    continue
                break
        if readback is not None:
            self.note(readback)
            await self.publish(readback, force=True)
        confirmed = readback is not None and readback.confirms(outputs)
        span.set_attributes(relay_attributes(outputs, readback) | {"heater.confirmed": confirmed})
        if confirmed:
            log.info("relays %s confirmed (%s)", outputs, cause)
            if self._unconfirmed_safe and outputs.is_safe:
                self._unconfirmed_safe = False
            await self._bus_ok()
            return True
        if readback is not None:
            metrics.READBACK_MISMATCHES.inc()
        await self.raise_alarm(
            "command-unconfirmed", Severity.CRITICAL,
            f"relay write {outputs} ({cause}) not confirmed by readback: "
            + ("no answer from the board" if readback is None else f"board shows {readback.contacts}, status {readback.status}"),
        )
        if outputs.is_safe:
            if not self._unconfirmed_safe:
                log.critical("safe state not confirmed: watchdog kicks stop until it is")
            self._unconfirmed_safe = True
            return False
        self.controller.force_safe()
        await self.apply(SAFE, f"after unconfirmed {cause}")
        return False

    # -- FATAL ---------------------------------------------------------------------

    async def raise_own_fatal(self, code: str, message: str) -> None:
        """A FATAL this adapter found itself: trip the Pico first, then tell the platform.

        The trip does not wait for the alarm's round trip through Kafka (nor depend on
        it arriving at all). The alarm names the trip as its occurrence, so raising it
        again — after a restart, for the same trip — is the same occurrence.
        """
        tripped = self.last_readback is not None and self.last_readback.status.trip_latched
        if tripped:  # found tripped: the trip it names is the one the board holds
            self.halting, self.kicking = True, False
            self.controller.force_safe()
        else:
            await self.halt_and_trip(f"{code}: {message}")
        count = await self.read_trip_count()
        await self.raise_alarm(code, Severity.FATAL, message, occurrence=f"trip-{count}")

    async def read_trip_count(self) -> int:
        """Read the Pico's trip count (the last known one when the board does not answer)."""
        try:
            self.trip_count = await self.io.call(self.io.board.trip_count)
        except BoardError as exc:
            metrics.I2C_ERRORS.labels(exc.operation).inc()
            log.error("reading TRIP_COUNT failed: %s", exc)
        return self.trip_count

    async def on_fatal(self, latch: LatchView) -> None:
        """Trip the Pico for a FATAL of the platform (see :meth:`halt_and_trip`), unless this adapter already did."""
        if self.halting and self.last_readback is not None and self.last_readback.status.trip_latched:
            log.critical("FATAL (%s): the Pico is already tripped", latch.reason)
            return
        # This hop of the FATAL's trace: the platform watch made the FATAL record's context current.
        with self.service.tracer.start_as_current_span("FATAL trip", attributes={"heater.reason": latch.reason}):
            await self.halt_and_trip(latch.reason)

    async def halt_and_trip(self, reason: str) -> None:
        """Trip the Pico (latched power cut), confirm by readback, publish; no kicks after this."""
        started = time.monotonic()
        self.halting = True
        self.kicking = False
        readback = await self.trip()
        elapsed = time.monotonic() - started
        metrics.TRIP_SECONDS.set(elapsed)
        if readback is not None and readback.status.trip_latched and readback.contacts.is_safe:
            log.critical("FATAL (%s): Pico tripped and confirmed in %.1f ms", reason, elapsed * 1000)
        else:
            log.critical("FATAL (%s): trip NOT confirmed; relying on the hardware watchdog", reason)
        self.controller.force_safe()
        if readback is not None:
            await self.read_trip_count()
            await self.publish(readback, force=True)

    async def trip(self) -> Readback | None:
        """TRIP with retries, without waiting for the bus lock; the readback, or None."""
        with self.service.tracer.start_as_current_span("relay write", attributes={"heater.cause": "trip"}) as span:
            readback = await self._trip()
            span.set_attributes(relay_attributes(None, readback))
            return readback

    async def _trip(self) -> Readback | None:
        readback: Readback | None = None
        for attempt in range(1, TRIP_ATTEMPTS + 1):
            try:
                self.io.now(self.io.board.trip)
                readback = await self.io.call(self.io.board.read_back)
            except BoardError as exc:
                metrics.I2C_ERRORS.labels(exc.operation).inc()
                log.error("TRIP attempt %d failed: %s", attempt, exc)
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            self.note(readback)
            if readback.status.trip_latched and readback.contacts.is_safe:
                return readback
        try:
            await self.io.call(self.io.board.write_relays, SAFE)
        except BoardError as exc:
            metrics.I2C_ERRORS.labels(exc.operation).inc()
        return readback

    # -- reporting -----------------------------------------------------------------

    def note(self, readback: Readback) -> None:
        """Remember the latest readback (for /relays and the output gauges)."""
        self.last_readback = readback
        for name, on in (
            ("power", readback.contacts.power_on),
            ("valve", readback.contacts.gas_valve_open),
            ("spark", readback.contacts.spark_on),
        ):
            metrics.OUTPUTS.labels(name).set(int(on))
        metrics.TRIP_LATCHED.set(int(readback.status.trip_latched))

    async def publish(self, readback: Readback, force: bool = False) -> None:
        """``relayState`` after every write, whenever the board changed, and at least every second.

        The periodic copy keeps readers (the disaster detector) from acting on a stale
        readback when one message was lost.
        """
        key = (readback.contacts, readback.status.trip_latched, readback.status.wdt_expired)
        if not force and key == self._published and readback.read_at - self._published_at < RELAY_STATE_EVERY_S:
            return
        self._published = key
        self._published_at = readback.read_at
        state = RelayState(
            power_on=readback.contacts.power_on,
            valve_open=readback.contacts.gas_valve_open,
            spark_on=readback.contacts.spark_on,
            trip_latched=readback.status.trip_latched,
            watchdog_expired=readback.status.wdt_expired,
            read_at=readback.read_at,
            trip_count=self.trip_count,
        )
        try:
            await self.service.send(topics.RELAY_STATE.name, b"pico", state.dumps())
        except Exception:  # reporting must never stop the safety path
            log.exception("could not publish relayState")

    async def raise_alarm(
        self, code: str, severity: Severity, message: str, subject: str = "", details: dict[str, str] | None = None,
        occurrence: str = "",
    ) -> None:
        """Raise once per condition (the id is deterministic; repeats would only add noise)."""
        if (code, subject) in self._raised:
            return
        self._raised.add((code, subject))
        await self._send_alarm(code, severity, message, subject, details, occurrence)

    async def _send_alarm(self, code: str, severity: Severity, message: str, subject: str,
                          details: dict[str, str] | None, occurrence: str) -> None:
        """Send one alarm; one that cannot be sent now is kept and sent again, never dropped."""
        assert self.service.alarms is not None
        try:
            await self.service.alarms.raise_alarm(code, severity, message, subject=subject, details=details,
                                                  occurrence=occurrence)
        except Exception:
            log.exception("could not send alarm %s: sending it again in %.1f s", code, ALARM_RESEND_S)
            asyncio.get_running_loop().call_later(ALARM_RESEND_S, lambda: asyncio.ensure_future(
                self._send_alarm(code, severity, message, subject, details, occurrence)))

    async def clear_alarm(self, code: str, subject: str = "") -> None:
        if (code, subject) not in self._raised or self.halting:
            return
        assert self.service.alarms is not None
        try:
            if await self.service.alarms.clear_alarm(code, subject, reason="condition gone"):
                self._raised.discard((code, subject))
        except Exception:
            log.exception("could not clear alarm %s", code)

    async def _clear_incidents(self) -> None:
        for code, subject in list(self._raised):
            if code in INCIDENT_CODES:
                await self.clear_alarm(code, subject)

    async def _bus_error(self, exc: BoardError, what: str) -> None:
        metrics.I2C_ERRORS.labels(exc.operation).inc()
        self._last_error_at = self.clock()
        log.error("I2C: %s: %s", what, exc)
        await self.raise_alarm("i2c-error", Severity.CRITICAL, f"I2C bus error talking to the Pico: {what}: {exc}")

    async def _bus_ok(self) -> None:
        if self._last_error_at is not None and self.clock() - self._last_error_at > ERROR_CLEAR_AFTER_S:
            self._last_error_at = None
            await self.clear_alarm("i2c-error")

    @requires(Role.VIEWER)
    async def relays_view(self, request: web.Request) -> web.Response:
        """``/relays``: last readback, desired outputs, lease state and last command."""
        desired = self.controller.outputs
        return web.json_response(
            {
                "readback": None if self.last_readback is None else self.last_readback.as_dict(),
                "desired": {"power_on": desired.power_on, "gas_valve_open": desired.gas_valve_open, "spark_on": desired.spark_on},
                "lease": self.controller.lease_state(self.clock()),
                "last_command": self.last_command,
                "kicking": self.kicking and not self._unconfirmed_safe,
                "halting": self.halting,
                "bus": self.settings.i2c_bus,
            }
        )


def main() -> int:
    """Run the I2C adapter; the process exit code (see :mod:`streams.exitcodes`)."""
    logging.basicConfig(
        level=os.environ.get("HEATER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = Settings.from_env()
    try:
        board = RelayBoard.open(settings.i2c_bus)
    except (OSError, ValueError) as exc:
        log.error("i2c: cannot open the I2C bus %r: %s", settings.i2c_bus, exc)
        return exitcodes.DEPENDENCY_MISSING
    service = EdgeService(SPEC, settings, watch_fetch_wait_ms=FETCH_WAIT_MS)  # its watch trips the Pico on FATAL
    adapter = RelayAdapter(service, board)
    adapter.install()
    try:
        return service.run(adapter.body, adapter.halted)
    finally:
        adapter.io.close()


def relay_attributes(wanted: Relays | None, readback: Readback | None) -> dict[str, bool | str]:
    """A relay write's span attributes: what was written and what the board reads back."""
    found: dict[str, bool | str] = {}
    if wanted is not None:
        found |= {f"heater.wanted.{name}": on for name, on in asdict(wanted).items()}
    if readback is None:
        return found | {"heater.readback": "none"}
    return found | {f"heater.contacts.{name}": on for name, on in asdict(readback.contacts).items()} | {
        "heater.trip_latched": readback.status.trip_latched}
