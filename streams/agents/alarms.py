"""AlarmsServer: the alarm lifecycle, its history, and the FATAL latch.

Consumes ``createAlarm`` and ``deleteAlarm`` in one stream (so a raise and its clear
are handled in delivery order) and produces to neither. The decisions live in
:mod:`streams.alarm_book`; this module only reads records, applies them to the tables
and, on the first FATAL alarm, latches the platform and commands the power cut-off
(the second path: the I2C adapter cuts power on FATAL by itself).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import faust

from streams import topics
from streams.alarm_book import Effect, apply_clear, apply_raise
from streams.app import HeaterService, ServiceKind, ServiceSpec
from streams.records import Alarm, AlarmClear, PlatformLatch, RelayAction, RelayCommand, now
from streams.tables import alarms as tables

log = logging.getLogger(__name__)

SPEC = ServiceSpec("alarms", ServiceKind.DISPLAY, fast_path=True, description="alarm lifecycle and FATAL latch")
service = HeaterService(SPEC)
app = service.app

history = tables.history_table(app)
active = tables.active_table(app)
pending_clears = tables.pending_clears_table(app)
latch = tables.latch_table(app)

alarm_events = service.raw_topic(topics.CREATE_ALARM, topics.DELETE_ALARM)
relay_commands = app.topic(topics.I2C_HEATING.name, value_type=RelayCommand, key_type=str)
latch_topic = app.topic(topics.PLATFORM_LATCH.name, value_type=PlatformLatch, key_type=str)


@app.agent(alarm_events)
async def handle_alarm_events(stream: faust.StreamT) -> None:
    async for record in service.records(stream):
        if isinstance(record, Alarm):
            await on_raise(record)
        elif isinstance(record, AlarmClear):
            on_clear(record)


async def on_raise(alarm: Alarm) -> None:
    outcome = apply_raise(history, active, alarm, pending_clears.get(alarm.alarm_id))
    if outcome.entry is None:
        return
    history[outcome.entry.occurrence_id] = outcome.entry
    active[alarm.alarm_id] = outcome.entry.occurrence_id
    if alarm.alarm_id in pending_clears and not outcome.entry.active:
        del pending_clears[alarm.alarm_id]
    log.info("alarm %s %s: %s", alarm.severity.value, alarm.alarm_id, alarm.message)
    if outcome.latches:
        await latch_platform(alarm)


def on_clear(clear: AlarmClear) -> None:
    outcome = apply_clear(history, active, clear)
    if outcome.effect is Effect.UNKNOWN:
        pending_clears[clear.alarm_id] = clear
        log.info("clear for unknown alarm %s recorded (by %s)", clear.alarm_id, clear.cleared_by)
    elif outcome.effect is Effect.REFUSED_FATAL:
        log.warning("deleteAlarm of FATAL %s by %s refused: only an operator reset clears it", clear.alarm_id, clear.cleared_by)
    if outcome.entry is not None:
        history[outcome.entry.occurrence_id] = outcome.entry


async def latch_platform(alarm: Alarm) -> None:
    """First FATAL: latch the platform (kept until an operator reset) and cut the power."""
    current = latch.get(tables.LATCH_KEY)
    if current is None or not current.latched:
        state = PlatformLatch(
            latched=True, alarm_id=alarm.alarm_id, reason=alarm.message, changed_at=now(), changed_by=SPEC.name
        )
        latch[tables.LATCH_KEY] = state
        await latch_topic.send(key=tables.LATCH_KEY, value=state)
    cutoff = RelayCommand(
        command_id=str(uuid.uuid4()),
        action=RelayAction.CUTOFF,
        on=True,
        issued_by=SPEC.name,
        issued_at=now(),
        reason=f"FATAL {alarm.alarm_id}",
    )
    await relay_commands.send(key="cutoff", value=cutoff)
    log.critical("FATAL %s: platform latched, power cut-off commanded", alarm.alarm_id)


# -- views ---------------------------------------------------------------------------


def _entry_view(entry: Any) -> dict[str, Any]:
    return entry.asdict() | {"alarm": entry.alarm.asdict() | {"severity": entry.alarm.severity.value}}


@app.page("/alarms")
async def list_active(web: Any, request: Any) -> Any:
    entries = [history[occ] for occ in active.values() if occ in history and history[occ].active]
    entries.sort(key=lambda e: e.alarm.raised_at)
    return web.json({"count": len(entries), "alarms": [_entry_view(e) for e in entries]})


@app.page("/alarms/history")
async def list_history(web: Any, request: Any) -> Any:
    query = request.query
    severity = query.get("severity")
    source = query.get("source")
    since = float(query.get("since", 0))
    until = float(query.get("until", "inf"))
    limit = min(int(query.get("limit", 100)), 1000)
    offset = int(query.get("offset", 0))
    entries = [
        e
        for e in history.values()
        if (severity is None or e.alarm.severity.value == severity)
        and (source is None or e.alarm.source == source)
        and since <= e.alarm.raised_at <= until
    ]
    entries.sort(key=lambda e: e.alarm.raised_at)
    page = entries[offset : offset + limit]
    return web.json({"total": len(entries), "offset": offset, "limit": limit, "alarms": [_entry_view(e) for e in page]})


@app.page("/alarm")
async def one_alarm(web: Any, request: Any) -> Any:
    alarm_id = request.query.get("id", "")
    occ = active.get(alarm_id)
    if occ is None or occ not in history:
        return web.json({"error": f"no alarm {alarm_id!r}"}, status=404)
    return web.json(_entry_view(history[occ]))


@app.page("/latch")
async def latch_state(web: Any, request: Any) -> Any:
    state = latch.get(tables.LATCH_KEY)
    return web.json(state.asdict() if state else {"latched": False})
