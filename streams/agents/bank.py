"""BankManager: the sensor bank — quality, over-temperature, staleness, statistics.

Consumes ``sensorData``; the decisions live in :mod:`streams.bank_rules`. Staleness needs
a clock, and Faust tables can only be written from a stream, so a timer publishes ticks
(``now``) on the bank's own ``bankTicks`` topic and a second agent applies them; one lock
keeps the two agents' steps from interleaving.

Readings are decided in batches (what arrived within a few milliseconds), a batch one
step up to and including a reading that raises or clears an alarm, which ends its step.

Exactly-once effects without Kafka transactions: every batch and tick is one step of
the service's ledger (:mod:`streams.consistency`): the state rows, closed windows, the
input position and the alarms the step raises or clears are committed together, and a
step's alarms are confirmed by the broker before the next step sends any. After kill -9
the worker resumes its input where the state ends, completes a half-written step and
sends its alarms again (same ids and times: one alarm in AlarmsServer's history, never
two).

The startup self-check (rule 5) is narrowed here: it resends the outbox and clears only
this service's alarms that no condition holds — an over-temperature that is still true
must not be cleared by a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, replace
from typing import Any

import faust
from faust.types import TP
from prometheus_client import Counter

from streams import topics, tracing
from streams.auth import Role, requires
from streams.alarm_client import AlarmClient
from streams.app import HeaterService, ServiceKind, ServiceSpec
from streams.bank_rules import BankConfig, BankRules, BankView, Effect, window_start
from streams.bank_rules import Step as BankStep
from streams.consistency import Step, tp_key
from streams.fatal_limit import LIMITER_PREFIX
from streams.heater_config import HeaterLimits
from streams.lifecycle import Phase
from streams.records import HeaterRecord, SensorReading
from streams.settings import READINGS_INPUT
from streams.tables import bank as tables

log = logging.getLogger(__name__)

SPEC = ServiceSpec("bank", ServiceKind.CONTROL, description="sensor bank: quality, over-temperature, stats",
                   input_fetch=READINGS_INPUT)
#: The bank's own tick topic (only this service writes and reads it).
TICKS = topics.BANK_TICKS
#: Tumbling windows kept per sensor (one hour of one-minute windows).
WINDOWS_KEPT = 60
#: Ticks older than this are skipped: after a restart the tick topic is replayed from the
#: group's offset, and every replayed tick holds the readings behind the step lock.
TICK_REPLAY_S = 10.0
#: The reading partition whose backlog holds staleness back.
SENSOR_TP = TP(topics.SENSOR_DATA.name, 0)
SENSOR_KEY = tp_key(SENSOR_TP.topic, SENSOR_TP.partition)

EFFECTS = Counter("heater_bank_effects_total", "Alarm raises/clears the bank sent", ["kind"])
DUPLICATES = Counter("heater_bank_duplicates_total", "Readings skipped as already applied (replays) or out of order")


class BankTick(HeaterRecord):
    """``bankTicks``: the wall-clock time at which staleness is evaluated."""

    now: float
    schema_version: int = 1


class BankAlarmClient(AlarmClient):
    """The alarm client, with a startup self-check that knows the bank's conditions."""

    def __init__(self, client: AlarmClient, send: Any) -> None:
        super().__init__(client.source, send, client._watch)

    async def clear_own_on_startup(self) -> list[str]:
        """Clear this service's alarms that no condition of the (recovered) state holds."""
        if self._watch is None or self._watch.latch.latched:
            return []
        saved = tables.BankState.load(state_table)
        held = {f"{self.source}/{key}" for key, c in saved.conditions.items() if c.active}
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
        log.info("startup: %d condition(s) held, %d orphan alarm(s) cleared", len(held), len(orphans))
        return orphans


class BankService(HeaterService):
    """A HeaterService whose alarm client keeps the alarms of conditions that still hold."""

    async def start_platform_watch(self) -> None:
        await super().start_platform_watch()
        assert self.alarms is not None
        self.alarms = BankAlarmClient(self.alarms, self._send_raw)


service = BankService(SPEC)
app = service.app
limits = HeaterLimits.from_env()
rules = BankRules(BankConfig(limits=limits))
TICK_INTERVAL_S = min(1.0, max(0.1, limits.stale_after_s / 4))


def use_limits(new: HeaterLimits) -> None:
    """A configuration version came into force: the next reading is judged against it."""
    rules.config = replace(rules.config, limits=new)

#: Quiet runs: the readings come on one partition, and ticks are judged only when no reading waits.
ledger = service.use_ledger(group_inputs=True, quiet_runs=True)
state_table = ledger.tracked(tables.state_table(app))
windows = ledger.tracked(tables.windows_table(app))
#: The decision state in memory; loaded once the ledger has recovered, written through on every step.
state = tables.BankState()

readings = service.raw_topic(topics.SENSOR_DATA)
ticks = app.topic(
    TICKS.name, value_serializer="raw", key_serializer="raw", internal=True, partitions=1,
    retention=TICKS.retention_ms / 1000,
)
ledger.run_settler()


@service.add_startup_check
async def follow_config() -> None:
    await service.follow_limits(use_limits, limits)


@service.add_startup_check
async def load_state() -> None:
    """The ledger has recovered the tables by now: the rules work on an in-memory copy (write-through)."""
    state.restore(state_table)
    log.info("bank state: %d sensor(s), %d condition(s); input resumes at %s", len(state.sensors),
             len(state.conditions), ledger.positions or "the group's offsets")


async def send_effect(client: AlarmClient, effect: Effect) -> None:
    if effect.kind == "raise":
        await client.raise_alarm(
            effect.code, effect.severity, effect.message, subject=effect.subject, details=effect.details, at=effect.at
        )
    else:
        await client.clear_alarm(effect.code, subject=effect.subject, reason=effect.message, at=effect.at)
    EFFECTS.labels(effect.kind).inc()


def current_view() -> BankView:
    """The state, with the FATAL occurrences operator resets released, as the platform watch knows them."""
    view = state.view
    if service.watch is not None:
        latch = service.watch.latch
        view.release = latch.covered_by_release
        view.limiter_cover = lambda: latch.covered_by_releases_of(LIMITER_PREFIX)
    return view


async def until_started() -> bool:
    """Hold input until the startup self-check is done; False when halted (then do nothing)."""
    while service.status.phase is Phase.STARTING:
        await asyncio.sleep(0.05)
    return service.acting


async def decide(step: Step, result: BankStep) -> None:
    """Take a rules step's state and owe its alarms in the ledger step; :meth:`BankState.save` writes the rows."""
    if result.duplicate:
        DUPLICATES.inc()
        return
    for key, stats in result.windows.items():
        windows[key] = tables.window_row(stats)
        expire_windows(stats.sensor, stats.start)
    if result.sensors or result.conditions:
        state.apply(result)
    assert service.alarms is not None
    client = step.alarms(service.alarms)
    for effect in result.effects:
        await send_effect(client, effect)


def expire_windows(sensor: str, newest_start: float) -> None:
    """Drop this sensor's windows older than the retained hour."""
    horizon = newest_start - WINDOWS_KEPT * rules.config.window_s
    prefix = f"{sensor}@"
    for key in [k for k in windows.keys() if k.startswith(prefix) and float(k[len(prefix):]) < horizon]:
        del windows[key]


@app.agent(readings)
async def handle_readings(stream: faust.StreamT) -> None:
    """Readings in batches (what arrived within a few ms): one ledger step and one state write per batch.

    A reading whose decision sends an alarm ends its step there: the step commits, and
    its alarms go out, before the next reading of the batch is decided — an alarm waits
    for no reading behind it. That reading's span continues its trace (the CAN adapter's).
    """
    async for batch in service.record_batches(stream, admit=ledger.admit):
        if not await until_started():
            continue
        done = 0
        while done < len(batch):
            async with ledger.step(covers_event=False, partition=SENSOR_KEY) as step:
                for record, message in batch[done:]:
                    assert isinstance(record, SensorReading)
                    done += 1
                    step.cover(message)
                    result = rules.on_reading(current_view(), record, step.position)
                    if result.effects:
                        with tracing.consumed(service.tracer, message, **tracing.attributes_of(record)):
                            await decide(step, result)
                        break
                    await decide(step, result)
                state.save(state_table)


@app.agent(ticks)
async def handle_ticks(stream: faust.StreamT) -> None:
    """Staleness, judged only when no reading waits to be read.

    Judged on the wall clock while the bank works through a backlog (after a restart),
    every sensor looked stale at every tick and was cleared by its next reading, a broker
    round trip each, so the backlog only grew: measured, the FATAL path's bank hop reached
    26 s after 43 restarts.
    """
    async for record in service.records(stream, BankTick, admit=ledger.admit):
        if not await until_started():
            continue
        assert isinstance(record, BankTick)
        if time.time() - record.now > TICK_REPLAY_S:
            continue  # a tick from before a restart: moot, the next one judges staleness at its own time
        if ledger.backlog(SENSOR_TP) > 0:
            continue  # readings are waiting: a sensor that looks silent is only behind them
        async with ledger.step() as step:
            await decide(step, rules.on_tick(current_view(), record.now))
            state.save(state_table)


@app.timer(interval=TICK_INTERVAL_S)
async def tick() -> None:
    if service.acting:
        await ticks.send(value=BankTick(now=time.time()).dumps())


# -- views ---------------------------------------------------------------------------


@app.page("/bank")
@requires(Role.VIEWER)
async def bank_view(web: Any, request: Any) -> Any:
    """Sensors (latest reading, quality), active conditions and the outbox."""
    limits = rules.config.limits
    return web.json({
        "phase": service.status.phase.value,
        "sensors": {name: tables.sensor_row(s) for name, s in sorted(state.sensors.items())},
        "active": [asdict(c) | {"alarm_id": f"{SPEC.name}/{c.key}"} for c in state.active()],
        "pending": ledger.owed_keys(),
        "limits": {"warning_c": limits.warning_c, "critical_c": limits.critical_c, "fatal_c": limits.fatal_c,
                   "stale_after_s": limits.stale_after_s, "implausible_jump_c": limits.implausible_jump_c,
                   "disagreement_c": limits.disagreement_c, "hysteresis_c": rules.config.hysteresis_c},
    })


@app.page("/bank/stats")
@requires(Role.VIEWER)
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
