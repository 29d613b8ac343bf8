"""The CAN adapter: bus frames → ``sensorData`` records; bus health → alarms.

A thin asyncio program on :class:`~streams.edge.EdgeService`.  It makes no decision
beyond decoding and bus health:

* a reader thread (:mod:`adapters.can.bus`) receives every frame and stamps its
  reception time; the loop decodes it (:mod:`adapters.can.translate`) and produces one
  ``SensorReading`` per valid frame, keyed by sensor; what arrived together goes out as
  one producer batch (:mod:`adapters.can.publish`) at once (no linger: what arrives while
  a request is on its way goes out together in the next), so readings that will lead to a
  FATAL are never held back;
* bad input — unknown ids, wrong lengths, out-of-range values, remote and error frames —
  is counted by reason, logged at a limited rate and skipped; valid frames keep flowing;
* every 100 ms :mod:`adapters.can.health` says which conditions hold (bus-off, silence,
  error frames, sensor dropout, sequence gaps, bad frames) and each alarm is raised
  once and cleared once (never while the platform is latched);
* a bus that fails is reopened with backoff, with a ``bus-unavailable`` alarm meanwhile;
* one decision, the FATAL temperature limit (:mod:`streams.fatal_limit`): a believed water
  temperature at or over it raises ``can/overtemp-fatal/<sensor>`` as the frame is decoded,
  ahead of the readings queued for ``sensorData`` and of BankManager's backlog, so a
  saturated bus does not delay the power cut. The limit follows the configuration live;
* with each batch of readings, what the gas valve's lease needs of them — the newest valid
  temperature and flame reading — on ``sensorFreshness`` (:mod:`adapters.can.freshness`).

Ready once the bus is open and the first valid frame arrived; ``/readyz`` says which
of the two it is waiting for.  ``/can`` shows the counters and every sensor's last frame.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

import can
from aiohttp import web
from aiokafka.errors import KafkaError

from adapters.can import metrics
from adapters.can.bus import BusFailure, BusReader, BusUnavailable, Item, Received, close_bus, open_bus
from adapters.can.frames import DecodedFrame, FrameError, FrameKind
from adapters.can.freshness import FreshnessTracker
from adapters.can.health import AlarmLedger, BusHealth, HealthLimits, Transition
from adapters.can.metrics import CanStats
from adapters.can.publish import BatchPublisher, Message
from adapters.can.throttle import LogThrottle
from adapters.can.translate import WATER_PREFIX, decode_message, encode_reading, reason_of
from streams import exitcodes, topics, tracing
from streams.auth import Role, requires
from streams.edge import EdgeService
from streams.fatal_limit import CODE as LIMIT_CODE
from streams.fatal_limit import FatalLimiter, LimitTrip
from streams.heater_config import HeaterLimits
from streams.lifecycle import Phase, ServiceKind, ServiceSpec
from streams.settings import Settings

log = logging.getLogger(__name__)

SPEC = ServiceSpec(
    "can", ServiceKind.CONTROL, description="CAN adapter: sensor frames to sensorData, bus health alarms"
)

#: The producer's batch limit for ``sensorData``. aiokafka sends one batch per partition in
#: each request, and the next only when that one has gone: at the default 16 KiB (about 60
#: readings) a request every 8 ms is needed to keep up with 9,000 frames/s, which a loaded
#: broker does not answer (measured on the whole platform: 7,800 readings/s published, the
#: rest queued in the adapter, up to a second). 512 KiB carries some 1,900, under the
#: 1 MiB a request may be.
SENSOR_BATCH_BYTES = 512 * 1024
HEALTH_PERIOD_S = 0.1
REOPEN_MIN_S = 0.5
REOPEN_MAX_S = 5.0
#: Frames translated (or appended to a producer batch) between two turns of the loop. A FATAL
#: trip from the reader thread, and the producer's sending and acknowledging of its alarm,
#: each wait for the loop's next turn: at 512 frames (some 14 ms of work on a flooded bus)
#: that wait was most of the adapter's share of the FATAL's tail; 64 frames are under 2 ms.
CHUNK = 64
#: The adapter takes the frames the reader queued at most this often, and publishes them as one
#: batch. At rest the sensors' 40 frames a second came one by one, each its own produce request
#: through the broker's gate (54 of the idle platform's 250 requests a second); their readers
#: batch their fetches as long anyway (:data:`streams.settings.READINGS_INPUT`). The FATAL
#: limit is judged on the reader thread as each frame arrives, so it does not wait for this.
TAKE_EVERY_S = 0.1
#: New traces a second per sensor (:class:`streams.tracing.TraceBudget`): five times what a
#: sensor sends at rest, so every reading is traced there; a flooding sensor gets no more.
TRACED_READINGS_PER_S = 50.0

WAITING_FOR_BUS = "opening the CAN bus"
WAITING_FOR_FRAME = "CAN bus open; waiting for the first valid frame"


class CanAdapter:
    """The adapter's behaviour; :func:`main` wires it into an :class:`EdgeService`."""

    def __init__(
        self,
        service: EdgeService,
        bus: can.BusABC | None = None,
        limits: HealthLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.clock = clock
        self.health = BusHealth(limits, clock())
        self.ledger = AlarmLedger()
        self.stats = CanStats()
        self.throttle = LogThrottle(log)
        self.latest: dict[str, tuple[float, float, int]] = {}
        self.freshness = FreshnessTracker()
        self._bus = bus
        self._reader: BusReader | None = None
        #: Frames the closed readers took off the bus (the open one counts its own).
        self.received = 0
        self._seen_valid = False
        self._publisher: BatchPublisher | None = None
        #: Judged on the reader thread (:meth:`_screen`); the loop only sets its limits.
        self.limiter = FatalLimiter(HeaterLimits.from_env())
        self.traces = tracing.TraceBudget(TRACED_READINGS_PER_S)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._trips: set[asyncio.Future[None]] = set()

    def install(self) -> None:
        """Hook into the service: metrics collector, ``/can`` view, the not-ready reason."""
        metrics.register(self.stats)
        self.stats.backlog = lambda: self._reader.backlog if self._reader is not None else 0
        self.service.web.router.add_get("/can", self.can_view)
        self.service.status.reason = WAITING_FOR_BUS if self._bus is None else WAITING_FOR_FRAME

    @property
    def settings(self) -> Settings:
        return self.service.settings

    # -- the running body ----------------------------------------------------------

    async def body(self, service: EdgeService) -> None:
        """Receive, translate and publish until stopped; keep the alarms in line with bus health."""
        assert service.watch is not None
        self._loop = asyncio.get_running_loop()
        await service.watch.follow_limits(self._use_limits, HeaterLimits.from_env())
        health_task = asyncio.ensure_future(self._health_loop())
        delay = REOPEN_MIN_S
        try:
            while True:
                reader = await self._open()
                try:
                    if await self._receive(reader):
                        delay = REOPEN_MIN_S
                finally:
                    self._close(reader)
                await asyncio.sleep(delay)
                delay = min(delay * 2, REOPEN_MAX_S)
        finally:
            health_task.cancel()
            await asyncio.gather(health_task, return_exceptions=True)
            log.info("CAN adapter stopping: %d frame(s) taken off the bus, %d bad, %d reading(s) handed to the producer",
                     self.received, sum(self.stats.bad.values()), self.stats.published)

    async def halted(self, service: EdgeService) -> None:
        """Started while the platform is latched: do nothing, and hold no bus open meanwhile."""
        self.close()
        await asyncio.Event().wait()

    async def _open(self) -> BusReader:
        """Open the bus (retrying with backoff and an alarm) and start reading it."""
        delay = REOPEN_MIN_S
        while self._bus is None:
            try:
                self._bus = await asyncio.to_thread(open_bus, self.settings.can_interface, self.settings.can_channel)
            except BusUnavailable as exc:
                self.stats.bus_failures += 1
                self.health.on_lost(self.clock(), str(exc))
                self.throttle.log(logging.ERROR, "open", "%s; retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, REOPEN_MAX_S)
        self.stats.bus_opens += 1
        self.stats.bus_open = True
        self.health.on_open(self.clock())
        if not self._seen_valid:
            self.service.status.reason = WAITING_FOR_FRAME
        log.info("CAN bus open: %s %s", self.settings.can_interface, self.settings.can_channel)
        reader = self._reader = BusReader(self._bus, screen=self._screen)
        reader.start()
        return reader

    def _close(self, reader: BusReader) -> None:
        reader.stop()
        self.received += reader.received
        self.close()

    def close(self) -> None:
        """Close the bus if it is open (idempotent)."""
        self.stats.bus_open = False
        if self._bus is not None:
            close_bus(self._bus)
            self._bus = None

    async def _receive(self, reader: BusReader) -> bool:
        """Handle batches until the bus fails; True if at least one frame came through.

        What the reader queued is taken at most every :data:`TAKE_EVERY_S` and published as
        one batch; the FATAL limit was judged on the reader thread as each frame arrived.
        A batch taken off the reader is handled and handed to the producer whole, even when
        the service stops meanwhile: its frames are off the bus and nowhere else.
        """
        any_frame = False
        loop = asyncio.get_running_loop()
        taken_at = -TAKE_EVERY_S
        while True:
            try:
                await asyncio.sleep(max(0.0, taken_at + TAKE_EVERY_S - loop.time()))
                batch = await reader.get_batch()
            except asyncio.CancelledError:
                await self._publish_queued(reader)
                raise
            taken_at = loop.time()
            work = asyncio.ensure_future(self._take(batch))
            try:
                took, failure = await asyncio.shield(work)
            except asyncio.CancelledError:
                await work
                await self._publish_queued(reader)
                raise
            any_frame = any_frame or took
            if failure is not None:
                self.stats.bus_failures += 1
                self.health.on_lost(self.clock(), failure.reason)
                return any_frame
            if not self._seen_valid and self.stats.published:
                self._seen_valid = True
                if self.service.status.phase is Phase.STARTING:
                    self.service.mark_ready()

    async def _take(self, batch: list[Item]) -> tuple[bool, BusFailure | None]:
        """Handle and publish one batch, giving the loop a turn every :data:`CHUNK` frames; whether
        it held a frame, and the bus failure that ended it, if one did."""
        now = self.clock()
        outgoing: list[Message] = []
        any_frame = False
        for index, item in enumerate(batch):
            if isinstance(item, BusFailure):
                await self._publish(outgoing)
                return any_frame, item
            any_frame = True
            message = self.handle(item, now)
            if message is not None:
                outgoing.append(message)
            if index % CHUNK == CHUNK - 1:
                await asyncio.sleep(0)  # a limit trip of this chunk goes out now; the loop breathes
        await self._publish(outgoing)
        return any_frame, None

    async def _publish_queued(self, reader: BusReader) -> None:
        """Stopping (on a FATAL too): the reader stops, what it took off the bus still goes out,
        and the producer flushes it as the service stops. The readings up to a trip are its evidence."""
        await asyncio.to_thread(reader.stop)
        now = self.clock()
        messages = (self.handle(item, now) for item in reader.take_queued() if isinstance(item, Received))
        await self._publish([message for message in messages if message is not None])

    def handle(self, item: Received, now: float) -> Message | None:
        """One received frame: count it and return its ``sensorData`` message, or None if it is bad."""
        message = item.message
        if message.is_error_frame:
            classes = self.health.on_error_frame(now, message.arbitration_id, message.data)
            self.stats.error_frames.update(classes)
            self.throttle.log(logging.WARNING, "error-frame:" + "+".join(classes), "CAN error frame 0x%X (%s)", message.arbitration_id, ", ".join(classes))
            return None
        screened = item.screened
        try:
            if isinstance(screened, FrameError):
                raise screened  # the reader thread found it bad: not decoded a second time
            frame = screened if isinstance(screened, DecodedFrame) else self._decode(message)
        except FrameError as exc:
            reason = reason_of(exc)
            self.stats.bad[reason] += 1
            self.health.on_bad_frame(now, reason)
            self.throttle.log(logging.WARNING, reason, "rejected CAN frame (%s): %s", reason, exc)
            return None
        key, value = encode_reading(frame, item.received_at)
        sensor = key.decode()
        lost = self.health.on_frame(now, sensor, frame.sequence)
        if lost:
            self.stats.lost[sensor] += lost
            self.throttle.log(logging.WARNING, "gap:" + sensor, "%s: %d frame(s) lost before sequence %d", sensor, lost, frame.sequence)
        self.stats.frames[frame.kind.value] += 1
        self.stats.last_frame_at = item.received_at
        value_read = frame.value if frame.value is not None else float(bool(frame.flame))
        self.latest[sensor] = (value_read, item.received_at, frame.status)
        self.freshness.on_frame(frame, item.received_at)
        if not self.traces.take(sensor, item.received_at):
            self.stats.untraced[sensor] += 1
            return key, value, []
        # The first hop of the reading's trace: frame received → reading handed to the producer.
        headers = tracing.emitted(self.service.tracer, topics.SENSOR_DATA.name, item.received_at, {
            "heater.sensor": sensor, "heater.value": value_read, "can.id": message.arbitration_id,
            "can.sequence": frame.sequence})
        return key, value, headers

    @staticmethod
    def _decode(message: can.Message) -> DecodedFrame:
        return decode_message(message.arbitration_id, message.data, message.is_extended_id, message.is_remote_frame)

    # -- the FATAL limit -------------------------------------------------------------

    def _screen(self, message: can.Message, received_at: float) -> object:
        """Reader thread: decode the frame and judge the FATAL limit now, ahead of the frames queued for the loop.

        The decoded frame (or its :class:`FrameError`) rides along to :meth:`handle`, so a
        frame is decoded once. A trip reaches the loop at its next turn, which a long queue
        of frames does not hold up (measured under a saturated bus: the loop took a frame
        up to 0.35 s after it arrived, the limit judged there waited as long).
        """
        if message.is_error_frame:
            return None
        try:
            frame = self._decode(message)
        except FrameError as exc:
            return exc
        if frame.kind is FrameKind.WATER_TEMP and frame.value is not None:
            trip = self.limiter.on_reading(f"{WATER_PREFIX}{frame.sensor}", frame.value, received_at)
            if trip is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self._trip, trip, frame.sequence)
        return frame

    def _use_limits(self, limits: HeaterLimits) -> None:
        self.limiter.limits = limits

    def _trip(self, trip: LimitTrip, sequence: int) -> None:
        """Raise the limiter's FATAL now, beside the frame loop: the frames behind it do not wait for the broker."""
        if self.service.status.phase is Phase.HALTED:
            return  # latched already: this process acts on nothing more
        self.stats.limit_trips[trip.sensor] += 1
        task = asyncio.ensure_future(self._raise_trip(trip, sequence))
        self._trips.add(task)
        task.add_done_callback(self._trips.discard)

    async def _raise_trip(self, trip: LimitTrip, sequence: int) -> None:
        alarms = self.service.alarms
        assert alarms is not None
        try:
            # The FATAL's trace starts at the frame that crossed the limit, as the reading's own does.
            with tracing.rooted(self.service.tracer, "FATAL limit", trip.at, {
                    "heater.sensor": trip.sensor, "heater.value": trip.value, "can.sequence": sequence}):
                await alarms.raise_alarm(LIMIT_CODE, "FATAL", trip.message, subject=trip.sensor, details=trip.details,
                                         at=trip.at)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            self.limiter.failed(trip)  # the next believed reading over the limit tries again
            log.error("could not raise FATAL %s/%s: %s", LIMIT_CODE, trip.sensor, exc)

    async def _publish(self, outgoing: list[Message]) -> None:
        if not outgoing:
            return
        if self._publisher is None:
            assert self.service.producer is not None, "publishing before the service started"
            self._publisher = BatchPublisher(self.service.producer, topics.SENSOR_DATA.name, self._publish_failed,
                                             appends_per_turn=CHUNK)
        try:
            await self._publisher.publish(outgoing)
        except KafkaError as exc:
            self._publish_failed(len(outgoing), exc)
            return
        self.stats.published += len(outgoing)
        await self._publish_freshness()

    async def _publish_freshness(self) -> None:
        """Right behind the readings, so both go to the broker in one request."""
        record = self.freshness.news(time.time())
        if record is None:
            return
        assert self.service.producer is not None
        try:
            delivery = await self.service.producer.send(topics.SENSOR_FRESHNESS.name, record.dumps(), key=b"can")
        except KafkaError as exc:
            self._freshness_failed(exc)
            return
        delivery.add_done_callback(
            lambda done: None if done.cancelled() or done.exception() is None else self._freshness_failed(done.exception()))

    def _freshness_failed(self, exc: BaseException | None) -> None:
        """Told again with the next batch; until then the valve's lease sees the readings age (safe)."""
        self.freshness.retell()
        self.throttle.log(logging.ERROR, "freshness", "could not publish sensor freshness: %s", exc)

    def _publish_failed(self, count: int, exc: BaseException) -> None:
        self.stats.publish_errors += count
        self.throttle.log(logging.ERROR, "publish", "could not publish %d reading(s): %s", count, exc)

    # -- bus health → alarms -------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_PERIOD_S)
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:  # the health check must outlive one failed round
                log.exception("bus health check failed; continuing")

    async def reconcile(self) -> None:
        """Raise what holds and is not raised yet; clear what no longer holds (never while halted)."""
        for transition in self.ledger.transitions(self.health.assess(self.clock())):
            if await self._apply(transition):
                self.ledger.confirm(transition)

    async def _apply(self, transition: Transition) -> bool:
        alarms = self.service.alarms
        assert alarms is not None
        condition = transition.condition
        try:
            if transition.action == "raise":
                await alarms.raise_alarm(
                    condition.code, condition.severity, condition.message,
                    subject=condition.subject, details=dict(condition.details),
                )
                return True
            if self.service.status.phase is Phase.HALTED:
                return False
            cleared = await alarms.clear_alarm(condition.code, condition.subject, reason="condition gone")
            if cleared:
                log.info("cleared %s%s: condition gone", condition.code, f"/{condition.subject}" if condition.subject else "")
            return cleared
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            self.throttle.log(logging.ERROR, "alarm:" + condition.code, "could not %s alarm %s: %s", transition.action, condition.code, exc)
            return False

    # -- view ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What ``/can`` shows: bus, counters, per-sensor last frame, raised alarms."""
        now, wall = self.clock(), time.time()
        sensors = self.health.snapshot(now)
        for name, (value, received_at, status) in self.latest.items():
            sensors.setdefault(name, {}).update(value=value, status=status, received_at=received_at)
        age = self.stats.last_frame_age(wall)
        return {
            "bus": {
                "interface": self.settings.can_interface,
                "channel": self.settings.can_channel,
                "open": self.stats.bus_open,
                "opens": self.stats.bus_opens,
                "failures": self.stats.bus_failures,
                "reader_backlog": self.stats.backlog(),
                "largest_batch": self._reader.max_backlog if self._reader is not None else 0,
            },
            "frames": {
                "ok": dict(self.stats.frames),
                "bad": dict(self.stats.bad),
                "error_frames": dict(self.stats.error_frames),
                "lost": dict(self.stats.lost),
                "untraced": dict(self.stats.untraced),
            },
            "published": self.stats.published,
            "publish_errors": self.stats.publish_errors,
            "last_frame_age_s": None if age is None else round(age, 3),
            "sensors": sensors,
            "alarms": sorted(f"{c.code}/{c.subject}" if c.subject else c.code for c in self.ledger.raised.values()),
            "fatal_limit": {"fatal_c": self.limiter.limits.fatal_c, "tripped": sorted(self.limiter.tripped)},
        }

    @requires(Role.VIEWER)
    async def can_view(self, request: web.Request) -> web.Response:
        """``/can``: counters, last frame age, per-sensor last seen."""
        return web.json_response(self.snapshot())


def main() -> int:
    """Run the CAN adapter; the process exit code (see :mod:`streams.exitcodes`)."""
    logging.basicConfig(
        level=os.environ.get("HEATER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("can", "can_remote"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    settings = Settings.from_env()
    try:
        bus = open_bus(settings.can_interface, settings.can_channel)
    except BusUnavailable as exc:
        log.error("can: %s", exc)
        return exitcodes.DEPENDENCY_MISSING
    service = EdgeService(SPEC, settings, max_batch_bytes=SENSOR_BATCH_BYTES)
    adapter = CanAdapter(service, bus)
    adapter.install()
    try:
        return service.run(adapter.body, adapter.halted)
    finally:
        adapter.close()
