"""AlarmsServer: the alarm lifecycle, its history, the FATAL latch and the operator reset.

Consumes ``createAlarm`` and ``deleteAlarm`` in one stream (so a raise and its clear
are handled in delivery order) and produces to neither. The decisions live in
:mod:`streams.alarm_book`; this module applies records to the changelog tables and, on
the first FATAL alarm, latches the platform and commands the power cut-off (the second
path: the I2C adapter cuts power on FATAL by itself).

The operator reset is the only way out of the latch: ``POST /reset`` signs a one-time
reset with Vault's transit key and publishes it on ``operatorReset``; the agent on that
topic verifies every reset record (signature, unused nonce, age) before it releases the
latch — so a forged or replayed record on the topic is refused here as it is by the
I2C adapter, which releases the hardware latch from the same record.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import faust

from streams import topics
from streams.alarm_book import AlarmBook, AlarmEntry, Effect
from streams.app import HeaterService, ServiceKind, ServiceSpec
from streams.consistency import Step
from streams.latch import covered_by_release
from streams.operator_reset import ResetRefused, issue_reset, verify_reset
from streams.records import Alarm, AlarmClear, OperatorReset, PlatformLatch, RelayAction, RelayCommand, Severity, now
from streams.settings import Settings
from streams.tables import alarms as tables
from streams.vault import TransitSigner, VaultUnavailable, vault_client

log = logging.getLogger(__name__)

SPEC = ServiceSpec("alarms", ServiceKind.DISPLAY, fast_path=True, description="alarm lifecycle and FATAL latch")
service = HeaterService(SPEC)
app = service.app

ledger = service.use_ledger()
history = ledger.tracked(tables.history_table(app))
active = ledger.tracked(tables.active_table(app))
timelines = ledger.tracked(tables.timelines_table(app))
latch = ledger.tracked(tables.latch_table(app))
used_nonces = ledger.tracked(tables.used_nonces_table(app))
book = AlarmBook(history, active, timelines)
ledger.run_settler()

alarm_events = service.raw_topic(topics.CREATE_ALARM, topics.DELETE_ALARM)
reset_events = service.raw_topic(topics.OPERATOR_RESET)
reset_topic = app.topic(topics.OPERATOR_RESET.name, value_type=OperatorReset, key_type=str)


def signer() -> TransitSigner:
    return TransitSigner(vault_client(Settings.from_env()))


@app.agent(alarm_events)
async def handle_alarm_events(stream: faust.StreamT) -> None:
    async for record in service.records(stream, admit=ledger.admit):
        async with ledger.step() as step:
            if isinstance(record, Alarm):
                await on_raise(step, record)
            elif isinstance(record, AlarmClear):
                on_clear(record)


async def on_raise(step: Step, alarm: Alarm) -> None:
    outcome = book.raise_alarm(alarm)
    if outcome.effect is Effect.RAISED:
        log.info("alarm %s %s: %s", alarm.severity.value, alarm.alarm_id, alarm.message)
    elif outcome.effect is Effect.SETTLED:
        log.debug("raise of %s at %.6f ignored: its history is settled up to a later time", alarm.alarm_id, alarm.raised_at)
    if not outcome.latches:
        return
    current = latch.get(tables.LATCH_KEY)
    if covered_by_release(current, alarm.raised_at):
        assert current is not None
        book.reset_fatal(current.changed_by, now(), covers_until=current.changed_at)
        log.warning(
            "FATAL %s raised at %.3f is covered by the operator reset of %.3f: kept in history, not latched",
            alarm.alarm_id, alarm.raised_at, current.changed_at,
        )
        return
    await latch_platform(step, alarm)


def on_clear(clear: AlarmClear) -> None:
    outcome = book.clear_alarm(clear)
    if outcome.effect is Effect.SETTLED:
        log.debug("clear of %s at %.6f ignored: its history is settled up to a later time", clear.alarm_id, clear.cleared_at)
    elif outcome.effect is Effect.UNKNOWN:
        log.info("clear for unknown alarm %s recorded (by %s)", clear.alarm_id, clear.cleared_by)
    elif outcome.effect is Effect.REFUSED_FATAL:
        log.warning("deleteAlarm of FATAL %s by %s refused: only an operator reset clears it", clear.alarm_id, clear.cleared_by)


async def latch_platform(step: Step, alarm: Alarm) -> None:
    """A FATAL: latch the platform (kept until an operator reset) and cut the power."""
    current = latch.get(tables.LATCH_KEY)
    if current is None or not current.latched:
        state = PlatformLatch(
            latched=True, alarm_id=alarm.alarm_id, reason=alarm.message, changed_at=alarm.raised_at, changed_by=SPEC.name
        )
        latch[tables.LATCH_KEY] = state
        await step.owe(topics.PLATFORM_LATCH.name, tables.LATCH_KEY.encode(), state.dumps())
    cutoff = RelayCommand(
        command_id=str(uuid.uuid4()),
        action=RelayAction.CUTOFF,
        on=True,
        issued_by=SPEC.name,
        issued_at=now(),
        reason=f"FATAL {alarm.alarm_id}",
    )
    await step.owe(topics.I2C_HEATING.name, b"cutoff", cutoff.dumps())
    log.critical("FATAL %s: platform latched, power cut-off commanded", alarm.alarm_id)


@app.agent(reset_events)
async def handle_resets(stream: faust.StreamT) -> None:
    async for record in service.records(stream, admit=ledger.admit):
        assert isinstance(record, OperatorReset)
        async with ledger.step() as step:
            await on_reset(step, record)


async def on_reset(step: Step, reset: OperatorReset) -> None:
    """Release the latch for a verified reset; refuse (and alarm on) anything else."""
    try:
        await verify_reset(reset, signer().verify, used_nonces)
    except (ResetRefused, VaultUnavailable) as exc:
        reason = getattr(exc, "reason", str(exc))
        log.error("operator reset %s by %r refused: %s", reset.reset_id, reset.operator, reason)
        if service.alarms is not None:
            await step.alarms(service.alarms).raise_alarm(
                "reset-refused", Severity.WARNING, f"operator reset refused: {reason}", subject=reset.reset_id,
                details={"operator": reset.operator, "reset_id": reset.reset_id},
            )
        return
    used_nonces[reset.nonce] = reset.reset_id
    released = book.reset_fatal(reset.operator, now(), covers_until=reset.issued_at)
    state = PlatformLatch(
        latched=False, alarm_id="", reason=f"operator reset {reset.reset_id}", changed_at=reset.issued_at,
        changed_by=reset.operator,
    )
    latch[tables.LATCH_KEY] = state
    await step.owe(topics.PLATFORM_LATCH.name, tables.LATCH_KEY.encode(), state.dumps())
    log.warning(
        "operator %s reset the FATAL latch (%d FATAL alarm(s) marked inactive, kept in history)", reset.operator, len(released)
    )


# -- views ---------------------------------------------------------------------------


def _entry_view(entry: AlarmEntry) -> dict[str, Any]:
    return entry.asdict() | {"alarm": entry.alarm.asdict() | {"severity": entry.alarm.severity.value}}


@app.page("/alarms")
async def list_active(web: Any, request: Any) -> Any:
    entries = book.active_entries()
    return web.json({"count": len(entries), "alarms": [_entry_view(e) for e in entries]})


@app.page("/alarms/history")
async def list_history(web: Any, request: Any) -> Any:
    query = request.query
    try:
        since = float(query.get("since", 0))
        until = float(query.get("until", "inf"))
        limit = max(1, min(int(query.get("limit", 100)), 1000))
        offset = max(0, int(query.get("offset", 0)))
    except ValueError as exc:
        return web.json({"error": f"bad query: {exc}"}, status=400)
    severity, source = query.get("severity"), query.get("source")
    entries = sorted(
        (
            e
            for e in history.values()
            if (severity is None or e.alarm.severity.value == severity)
            and (source is None or e.alarm.source == source)
            and since <= e.alarm.raised_at <= until
        ),
        key=lambda e: e.alarm.raised_at,
    )
    page = entries[offset : offset + limit]
    return web.json({"total": len(entries), "offset": offset, "limit": limit, "alarms": [_entry_view(e) for e in page]})


@app.page("/alarm")
async def one_alarm(web: Any, request: Any) -> Any:
    alarm_id = request.query.get("id", "")
    entry = book.current(alarm_id)
    if entry is None:
        return web.json({"error": f"no alarm {alarm_id!r}"}, status=404)
    return web.json(_entry_view(entry))


@app.page("/latch")
async def latch_state(web: Any, request: Any) -> Any:
    state = latch.get(tables.LATCH_KEY)
    return web.json(state.asdict() if state else {"latched": False})


@app.page("/reset")
class Reset(faust.web.View):
    """``POST {"operator": NAME}``: issue a signed one-time reset of the FATAL latch."""

    async def post(self, request: Any) -> Any:
        try:
            body = json.loads(await request.read() or b"{}")
            operator = str(body["operator"]).strip()
            operator.encode()  # a name with a lone surrogate could be neither signed nor sent
        except (ValueError, KeyError, TypeError, RecursionError):
            return self.json({"error": 'expected JSON {"operator": NAME}'}, status=400)
        if not operator:
            return self.json({"error": "operator must not be empty"}, status=400)
        current = latch.get(tables.LATCH_KEY)
        if current is None or not current.latched:
            return self.json({"error": "the platform is not latched", "latched": False}, status=409)
        try:
            reset = await issue_reset(operator, signer())
        except VaultUnavailable as exc:
            return self.json({"error": f"cannot sign the reset: {exc}"}, status=503)
        await reset_topic.send(key=reset.reset_id, value=reset)
        log.warning("operator %s issued reset %s", operator, reset.reset_id)
        return self.json({"reset_id": reset.reset_id, "operator": operator, "issued_at": reset.issued_at}, status=202)
