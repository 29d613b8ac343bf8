"""BankManager: the sensor bank — quality, over-temperature, staleness, statistics.

Consumes ``sensorData``; the decisions live in :mod:`streams.bank_rules`. Staleness needs
a clock, and Faust tables can only be written from a stream, so a timer publishes ticks
(``now``) on the bank's own ``bankTicks`` topic and a second agent applies them; one lock
keeps the two agents' steps from interleaving.

Exactly-once effects without Kafka transactions: every step writes its state first —
closed windows, then the decision state as one row (see :mod:`streams.tables.bank`) with
the step's condition transitions marked ``pending`` (the outbox) — then sends its
raises/clears. Once the broker has confirmed every one of them (checked on each tick, or
before the same condition changes again) the transitions are marked settled; a send the
broker refused is sent again, and the condition stays pending until one is confirmed. A
flush alone is not a confirmation: a batch the broker refuses is dropped by the producer
with nothing but a log line.

After kill -9 the worker resumes its input at the offset the state row records, not at
the consumer group's committed offset (measured: a restarted worker's consumer began up
to 150 readings past the restored state, and those readings were never decided):
readings the state already holds are passed over, the others are re-decided
identically, and pending effects are resent at startup. Alarm ids and times are
deterministic, so every resend is one alarm in AlarmsServer's history, never two.

The startup self-check (rule 5) is narrowed here: it resends the outbox and clears only
this service's alarms that no condition holds — an over-temperature that is still true
must not be cleared by a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import Any

import faust
from prometheus_client import Counter

from streams import metrics, topics
from streams.alarm_client import AlarmClient
from streams.app import HeaterService, ServiceKind, ServiceSpec
from streams.bank_rules import BankConfig, BankRules, BankView, Condition, Effect, Step, window_start
from streams.heater_config import HeaterLimits
from streams.lifecycle import Phase
from streams.records import HeaterRecord, SensorReading
from streams.tables import bank as tables

log = logging.getLogger(__name__)

SPEC = ServiceSpec("bank", ServiceKind.CONTROL, fast_path=True, description="sensor bank: quality, over-temperature, stats")
#: The bank's own tick topic (only this service writes and reads it).
TICKS = topics.BANK_TICKS
#: Tumbling windows kept per sensor (one hour of one-minute windows).
WINDOWS_KEPT = 60
#: Pause before the next attempt when the broker refused an alarm effect.
RESEND_BACKOFF_S = 0.2
#: Ticks older than this are skipped: after a restart the tick topic is replayed from the
#: group's offset, and every replayed tick holds the readings behind the step lock.
TICK_REPLAY_S = 10.0
#: Messages fetched before the input was sent to the state's position are passed over for
#: this long before it is sent there again.
REPOSITION_PATIENCE_S = 2.0

EFFECTS = Counter("heater_bank_effects_total", "Alarm raises/clears the bank sent", ["kind"])
UNDELIVERED = Counter("heater_bank_undelivered_total", "Settle attempts that found an alarm effect refused by the broker (resent)")
DUPLICATES = Counter("heater_bank_duplicates_total", "Readings skipped as already applied (replays) or out of order")
REPOSITIONS = Counter("heater_bank_input_seeks_total", "Times the input was not where the state ends and was sent there", ["direction"])


class BankTick(HeaterRecord):
    """``bankTicks``: the wall-clock time at which staleness is evaluated."""

    now: float
    schema_version: int = 1


class BankAlarmClient(AlarmClient):
    """The alarm client, with a startup self-check that knows the bank's conditions."""

    def __init__(self, client: AlarmClient, send: Any, table: faust.Table) -> None:
        super().__init__(client.source, send, client._watch)
        self._table = table

    async def clear_own_on_startup(self) -> list[str]:
        if self._watch is None or self._watch.latch.latched:
            return []
        saved = tables.BankState.load(self._table)
        for key in sorted(saved.pending):
            effect = resend_of(saved.conditions[key])
            if effect is not None:
                await send_effect(self, effect)
        held = {f"{self.source}/{key}" for key, c in saved.conditions.items() if c.active or key in saved.pending}
        # An alarm raised after the newest reading the saved state holds comes from readings
        # this worker will apply again (and decide identically): the replay owns it.
        horizon = max((s.received_at for s in saved.sensors.values()), default=float("inf"))
        orphans = [
            e.alarm.alarm_id
            for e in self._watch.book.active_entries()
            if e.alarm.source == self.source and not e.alarm.is_fatal and e.alarm.alarm_id not in held
            and e.alarm.raised_at <= horizon
        ]
        for alarm_id in orphans:
            await self._send_clear(alarm_id, "cleared on startup")
        log.info("startup: %d condition(s) held, %d pending effect(s) resent, %d orphan alarm(s) cleared",
                 len(held), len(saved.pending), len(orphans))
        return orphans


class Deliveries:
    """The sends of the alarm effects not yet confirmed by the broker."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._futures: list[Any] = []

    async def __call__(self, topic: str, key: bytes, value: bytes) -> Any:
        future = await self._send(topic, key, value)
        self._futures.append(future)
        return future

    async def confirmed(self) -> bool:
        """Wait for every send so far; False when the broker refused any of them."""
        futures, self._futures = self._futures, []
        results = await asyncio.gather(*futures, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures[:3]:
            log.warning("alarm effect not delivered: %r", failure)
        return not failures


class BankService(HeaterService):
    """A HeaterService whose alarm client keeps the alarms of conditions that still hold,
    and tells when the broker has confirmed what it sent."""

    deliveries: Deliveries

    async def start_platform_watch(self) -> None:
        await super().start_platform_watch()
        assert self.alarms is not None
        self.deliveries = Deliveries(self._send_raw)
        self.alarms = BankAlarmClient(self.alarms, self.deliveries, state_table)


service = BankService(SPEC)
app = service.app
limits = HeaterLimits.from_env()
rules = BankRules(BankConfig(limits=limits))
TICK_INTERVAL_S = min(1.0, max(0.1, limits.stale_after_s / 4))

state_table = tables.state_table(app)
windows = tables.windows_table(app)
#: The decision state in memory; loaded once the table is recovered, written through on every step.
state = tables.BankState()
#: Condition keys whose effects were sent but not yet confirmed delivered.
unsettled: set[str] = set()

readings = service.raw_topic(topics.SENSOR_DATA)
ticks = app.topic(
    TICKS.name, value_serializer="raw", key_serializer="raw", internal=True, partitions=1,
    retention=TICKS.retention_ms / 1000,
)
_step_lock = asyncio.Lock()


@service.add_startup_check
async def load_state() -> None:
    """The tables are recovered by now: the rules work on an in-memory copy (write-through).

    Pending effects were resent by the alarm client's startup check just before; the next
    tick settles them once delivered.
    """
    state.restore(state_table)
    unsettled.update(state.pending)
    log.info("bank state: %d sensor(s), %d condition(s), %d pending; input resumes at offset %s", len(state.sensors),
             len(state.conditions), len(state.pending), state.next_offset)


def resend_of(condition: Condition) -> Effect | None:
    """The effect a settled-or-not condition stands for (its transition, at its own time).

    None for an ended FATAL: only the operator reset ends one, and it sent nothing.
    """
    if not condition.active and condition.severity == "FATAL":
        return None
    kind = "raise" if condition.active else "clear"
    return Effect(kind, condition.code, condition.subject, condition.severity, condition.since, condition.message)


async def send_effect(client: AlarmClient, effect: Effect) -> None:
    if effect.kind == "raise":
        await client.raise_alarm(
            effect.code, effect.severity, effect.message, subject=effect.subject, details=effect.details, at=effect.at
        )
    else:
        await client.clear_alarm(effect.code, subject=effect.subject, reason=effect.message, at=effect.at)
    EFFECTS.labels(effect.kind).inc()


def current_view() -> BankView:
    """The state, with the last operator reset as the platform watch knows it."""
    view = state.view
    view.released_at = service.watch.latch.released_at if service.watch is not None else None
    return view


class InputPosition:
    """Admit each ``sensorData`` message exactly once, in offset order, from where the state ends.

    The consumer may start anywhere: at the group's committed offset (measured: stuck at
    the start of the log on every restart of one run), at the log's end, with messages
    fetched before it was told where to start. Any message not at the state's position
    sends the consumer there — back to what the state has not decided yet, or forward past
    what it holds, so a restart never replays more than the state is missing — and
    whatever had been fetched meanwhile is passed over.
    """

    def __init__(self) -> None:
        self._moved_at: float | None = None
        self._tp: Any = None
        self._next: int | None = None
        self.admitted: int | None = None
        """Offset of the message admitted last: the record the agent is handling."""

    def backlog(self) -> int:
        """Readings on the broker not yet admitted (0 when unknown)."""
        if self._tp is None or self._next is None:
            return 0
        highwater = app.consumer.highwater(self._tp)
        return max(0, highwater - self._next) if highwater is not None else 0

    async def admit(self, message: Any) -> bool:
        await until_started()
        self._tp = message.tp
        if self._next is None:
            self._next = state.next_offset
        expected = self._next
        if expected is not None and message.offset < expected and self._log_started_over(message, expected):
            expected = message.offset
        if expected is None or message.offset == expected:
            self._next = message.offset + 1
            self.admitted = message.offset
            self._moved_at = None
            return True
        if message.offset < expected:
            DUPLICATES.inc()
        if self._moved_at is None or time.monotonic() - self._moved_at > REPOSITION_PATIENCE_S:
            await self._move(message, expected)
        return False

    @staticmethod
    def _log_started_over(message: Any, expected: int) -> bool:
        """The log ends before the state's position: the broker lost it (the local broker
        keeps it in memory), and the readings now arriving are new ones, to be decided."""
        highwater = app.consumer.highwater(message.tp)
        if highwater is None or highwater >= expected:
            return False
        log.error("sensorData ends at offset %d, before the state's position %d: the broker lost its log; "
                  "following the new one from offset %d", highwater, expected, message.offset)
        return True

    async def _move(self, message: Any, expected: int) -> None:
        tp = message.tp
        if message.offset > expected:
            earliest = (await app.consumer.earliest_offsets(tp)).get(tp, 0)
            if earliest > expected:
                log.error("sensorData offsets %d..%d are gone from the log (retention): resuming at %d",
                          expected, earliest - 1, earliest)
                self._next = expected = earliest
            log.warning("input at offset %d, ahead of the state (next %d): rewinding", message.offset, expected)
        else:
            log.info("input at offset %d, behind the state (next %d): skipping what the state holds", message.offset, expected)
        REPOSITIONS.labels("back" if message.offset > expected else "forward").inc()
        self._moved_at = time.monotonic()
        await app.consumer.seek(tp, expected)


position = InputPosition()


async def until_started() -> bool:
    """Hold input until the startup self-check is done; False when halted (then do nothing)."""
    while service.status.phase is Phase.STARTING:
        await asyncio.sleep(0.05)
    return service.acting


async def commit_step(step: Step) -> None:
    """State first (the outbox), then the effects; see the module doc."""
    if step.duplicate:
        DUPLICATES.inc()
        return
    if not (step.sensors or step.conditions or step.windows):
        return  # most ticks change nothing: no row to write
    while unsettled & step.conditions.keys():
        await settle()  # the outbox holds one transition per condition: deliver the last one first
    for key, stats in step.windows.items():
        windows[key] = tables.window_row(stats)
        expire_windows(stats.sensor, stats.start)
    state.apply(step)
    state.save(state_table)
    if not step.effects:
        return
    assert service.alarms is not None
    for effect in step.effects:
        await send_effect(service.alarms, effect)
    unsettled.update(step.conditions)


async def settle() -> None:
    """Once the broker has confirmed everything sent so far, the outbox entries are done.

    Waiting for delivery once per tick rather than once per effect keeps a toggling
    sensor from costing a broker round trip per reading; a crash in between only means
    those effects are resent at startup (one alarm each in the history, still). When the
    broker refused a send, every unsettled transition is sent again (ids and times are
    deterministic, so a repeat is harmless) and stays pending for the next attempt.
    """
    if not unsettled:
        return
    await app.producer.flush()
    if not await service.deliveries.confirmed():
        UNDELIVERED.inc()
        assert service.alarms is not None
        for key in sorted(unsettled):
            effect = resend_of(state.conditions[key])
            if effect is not None:
                await send_effect(service.alarms, effect)
        await asyncio.sleep(RESEND_BACKOFF_S)
        return
    state.pending -= unsettled
    unsettled.clear()
    state.save(state_table)


def expire_windows(sensor: str, newest_start: float) -> None:
    """Drop this sensor's windows older than the retained hour."""
    horizon = newest_start - WINDOWS_KEPT * rules.config.window_s
    prefix = f"{sensor}@"
    for key in [k for k in windows.keys() if k.startswith(prefix) and float(k[len(prefix):]) < horizon]:
        del windows[key]


@app.agent(readings)
async def handle_readings(stream: faust.StreamT) -> None:
    async for record in service.records(stream, admit=position.admit):
        if not service.acting:
            continue
        assert isinstance(record, SensorReading)
        started = time.perf_counter()
        async with _step_lock:
            step = rules.on_reading(current_view(), record)
            if not step.duplicate and position.admitted is not None:
                state.next_offset = position.admitted + 1  # written with the reading it follows
            await commit_step(step)
        metrics.HANDLE_SECONDS.labels(SPEC.name, topics.SENSOR_DATA.name).observe(time.perf_counter() - started)


@app.agent(ticks)
async def handle_ticks(stream: faust.StreamT) -> None:
    """Staleness, judged only when no reading waits to be read.

    Judged on the wall clock while the bank works through a backlog (after a restart),
    every sensor looked stale at every tick and was cleared by its next reading, a broker
    round trip each (the outbox settles a condition before it changes again), so the
    backlog only grew: measured, the FATAL path's bank hop reached 26 s after 43 restarts.
    """
    async for record in service.records(stream, BankTick):
        if not await until_started():
            continue
        assert isinstance(record, BankTick)
        if time.time() - record.now > TICK_REPLAY_S:
            continue  # a tick from before a restart: moot, the next one judges staleness at its own time
        if position.backlog() > 0:
            continue  # readings are waiting: a sensor that looks silent is only behind them
        async with _step_lock:
            await commit_step(rules.on_tick(current_view(), record.now))
            await settle()


@app.timer(interval=TICK_INTERVAL_S)
async def tick() -> None:
    if service.acting:
        await ticks.send(value=BankTick(now=time.time()).dumps())


# -- views ---------------------------------------------------------------------------


@app.page("/bank")
async def bank_view(web: Any, request: Any) -> Any:
    """Sensors (latest reading, quality), active conditions and the outbox."""
    return web.json({
        "phase": service.status.phase.value,
        "sensors": {name: tables.sensor_row(s) for name, s in sorted(state.sensors.items())},
        "active": [asdict(c) | {"alarm_id": f"{SPEC.name}/{c.key}", "pending": c.key in state.pending}
                   for c in state.active()],
        "pending": sorted(state.pending),
        "limits": {"warning_c": limits.warning_c, "critical_c": limits.critical_c, "fatal_c": limits.fatal_c,
                   "stale_after_s": limits.stale_after_s, "implausible_jump_c": limits.implausible_jump_c,
                   "disagreement_c": limits.disagreement_c, "hysteresis_c": rules.config.hysteresis_c},
    })


@app.page("/bank/stats")
async def stats_view(web: Any, request: Any) -> Any:
    """One-minute windows, newest first; ``?sensor=`` filters, ``?limit=`` (default 10 per sensor)."""
    try:
        limit = max(1, min(int(request.query.get("limit", 10)), WINDOWS_KEPT))
    except ValueError as exc:
        return web.json({"error": f"bad query: {exc}"}, status=400)
    wanted = request.query.get("sensor")
    rows = [*windows.values(), *(tables.window_row(s.window) for s in state.sensors.values() if s.window)]
    by_sensor: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if wanted is None or row["sensor"] == wanted:
            by_sensor.setdefault(row["sensor"], []).append(row | {"mean": row["total"] / row["count"]})
    return web.json({
        "window_s": rules.config.window_s,
        "current_window_start": window_start(time.time(), rules.config.window_s),
        "sensors": {s: sorted(w, key=lambda r: -r["start"])[:limit] for s, w in sorted(by_sensor.items())},
    })
