"""AlarmsServer: the alarm lifecycle, its history, the FATAL latch and the operator reset.

Consumes ``createAlarm`` and ``deleteAlarm`` in one stream (so a raise and its clear
are handled in delivery order) and produces to neither. The decisions live in
:mod:`streams.alarm_book`; this module applies records to the changelog tables and, on
the first FATAL alarm, latches the platform and commands the power cut-off (the second
path: the I2C adapter cuts power on FATAL by itself).

The latch is held by FATAL *occurrences* (:mod:`streams.latch`). The operator reset is
the only way out: ``GET /latch`` shows the occurrences that latch and the Pico's trip
count; ``POST /reset`` names them back, is refused (409) if they changed since, and signs
a one-time reset naming them with Vault's transit key, published on ``operatorReset``.
The agent on that topic verifies every reset record (signature, unused nonce, age; while
Vault is unreachable it waits and tries again, as the I2C adapter does) and releases
exactly the occurrences it names, for the trip it names. A forged or replayed record is
refused here as it is by the I2C adapter, which releases the hardware latch from the
same record. The Pico's trip count comes from ``relayState``.
"""

from __future__ import annotations

import collections
import json
import logging
import uuid
from typing import Any, Iterator

import faust

from streams import auth, dashboard, homekit_feed, metrics, topics
from streams.auth import Role, requires
from streams.alarm_book import AlarmBook, AlarmEntry, Effect
from streams.app import HeaterService, ServiceKind, ServiceSpec
from streams.consistency import Step, on_partition_zero, tp_key
from streams.latch import FatalVerdict, LatchState, Occurrence, is_reset_key
from streams.operator_reset import ResetRefused, issue_reset, verify_reset
from streams.readers import open_reader
from streams.records import (
    Alarm, AlarmClear, OperatorReset, PlatformLatch, RelayAction, RelayCommand, RelayState, Severity, now,
)
from streams.settings import Settings
from streams.tables import alarms as tables
from streams.resilience import DependencyDown
from streams.vault import TransitSigner, vault_client

log = logging.getLogger(__name__)

SPEC = ServiceSpec("alarms", ServiceKind.DISPLAY, description="alarm lifecycle and FATAL latch")
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


def active_by_severity() -> Iterator[tuple[tuple[str, ...], float]]:
    """Active alarms per severity for ``/metrics``; every severity appears (0 too), so a panel has no gaps."""
    with on_partition_zero():
        counts = collections.Counter(entry.alarm.severity for entry in book.active_entries())
    return (((severity.value,), counts[severity]) for severity in Severity)


metrics.LIVE.add(metrics.ALARMS_ACTIVE, active_by_severity)

alarm_events = service.raw_topic(topics.CREATE_ALARM, topics.DELETE_ALARM)
reset_events = service.raw_topic(topics.OPERATOR_RESET)
relay_events = service.raw_topic(topics.RELAY_STATE)
reset_topic = app.topic(topics.OPERATOR_RESET.name, value_type=OperatorReset, key_type=str)


def signer() -> TransitSigner:
    return TransitSigner(vault_client(Settings.from_env()))


async def readings_end() -> dict[str, int]:
    """Where each readings partition ends now: the input a reset issued now covers (:mod:`streams.latch`)."""
    consumer = await open_reader(Settings.from_env().broker_bootstrap, [topics.SENSOR_DATA.name], fetch_wait_ms=10,
                                 from_end=True, timeout=5.0)
    try:
        return {tp_key(tp.topic, tp.partition): await consumer.position(tp) for tp in consumer.assignment()}
    finally:
        await consumer.stop()


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
    if not alarm.is_fatal:
        return
    state = latch_state()
    occurrence = Occurrence.of(alarm)
    verdict = state.on_fatal(occurrence)
    if verdict is FatalVerdict.RELEASED:
        reset_id = state.released[occurrence.key]
        book.release_fatal(alarm.alarm_id, alarm.raised_at, "operator reset", f"released by operator reset {reset_id}")
        log.warning("FATAL %s delivered again: released by reset %s, kept in history, not latched", occurrence.key, reset_id)
    elif verdict is FatalVerdict.NEW:
        await latch_platform(step, state, alarm)


#: The whole latch as last written here, with the record it wrote under LATCH_KEY.
_known: tuple[PlatformLatch | None, LatchState] | None = None


def latch_state() -> LatchState:
    """The whole latch to decide on: the latch now and every reset's record, read from the table once.

    Read again whenever the table's latch is not the one last written here (a step that
    was not written, a recovery): the table is the truth, this only spares reading every
    reset's row on each FATAL.
    """
    global _known
    current = latch.get(tables.LATCH_KEY)
    if _known is None or _known[0] != current:
        _known = (current, LatchState.from_records(current, [latch[key] for key in list(latch) if is_reset_key(key)]))
    return _known[1].copy()


async def write_latch(step: Step, state: LatchState, changed_by: str, reset_id: str = "", publish: bool = True) -> None:
    """Write the latch now, and every reset not yet recorded in a row of its own, to the table and ``platformLatch``.

    ``publish=False`` keeps the latch now (not a reset's record) off the topic: what only
    AlarmsServer needs, the Pico's trip count.
    """
    global _known
    record: PlatformLatch | None = None
    for key, record in state.to_records(now(), changed_by, reset_id):
        latch[key] = record
        if publish or is_reset_key(key):
            await step.owe(topics.PLATFORM_LATCH.name, key.encode(), record.dumps())
    state.recorded()
    _known = (record, state.copy())


def on_clear(clear: AlarmClear) -> None:
    outcome = book.clear_alarm(clear)
    if outcome.effect is Effect.SETTLED:
        log.debug("clear of %s at %.6f ignored: its history is settled up to a later time", clear.alarm_id, clear.cleared_at)
    elif outcome.effect is Effect.UNKNOWN:
        log.info("clear for unknown alarm %s recorded (by %s)", clear.alarm_id, clear.cleared_by)
    elif outcome.effect is Effect.REFUSED_FATAL:
        log.warning("deleteAlarm of FATAL %s by %s refused: only an operator reset clears it", clear.alarm_id, clear.cleared_by)


async def latch_platform(step: Step, state: LatchState, alarm: Alarm) -> None:
    """A new FATAL occurrence: latch the platform on it (kept until a reset names it) and cut the power."""
    await write_latch(step, state, SPEC.name)
    cutoff = RelayCommand(
        command_id=str(uuid.uuid4()),
        action=RelayAction.CUTOFF,
        on=True,
        issued_by=SPEC.name,
        issued_at=now(),
        reason=f"FATAL {alarm.alarm_id}",
    )
    await step.owe(topics.I2C_HEATING.name, b"cutoff", cutoff.dumps())
    log.critical("FATAL %s: platform latched, power cut-off commanded", alarm.occurrence_id)


@app.agent(reset_events)
async def handle_resets(stream: faust.StreamT) -> None:
    async for record in service.records(stream, admit=ledger.admit):
        assert isinstance(record, OperatorReset)
        refusal = await verification(record)
        async with ledger.step() as step:
            await on_reset(step, record, refusal)


async def verification(reset: OperatorReset) -> str:
    """Why the reset must be refused ("" when genuine); waits while Vault does not answer.

    A Vault outage is no verdict on the reset: refusing it here while the I2C adapter
    waits and releases the Pico would leave the two disagreeing about the latch. Its age
    is judged at the first attempt, so waiting for Vault does not make it stale.
    """
    first_attempt_at = now()

    async def waits(exc: DependencyDown) -> None:
        log.error("operator reset %s waits: %s", reset.reset_id, exc)

    try:
        await service.vault.until_answered(
            lambda: verify_reset(reset, signer().verify, used_nonces, at=first_attempt_at), on_wait=waits)
    except ResetRefused as exc:
        return exc.reason
    return ""


async def on_reset(step: Step, reset: OperatorReset, refusal: str) -> None:
    """Release exactly what a verified reset names; refuse (and alarm on) anything else."""
    if not refusal:
        used_nonces[reset.nonce] = reset.reset_id
        state = latch_state()
        before = dict(state.latching)
        outcome = state.on_reset(reset.reset_id, reset.occurrences, reset.trip_count, reset.covered)
        refusal = outcome.refused
    if refusal:
        log.error("operator reset %s by %r refused: %s", reset.reset_id, reset.operator, refusal)
        if service.alarms is not None:
            await step.alarms(service.alarms).raise_alarm(
                "reset-refused", Severity.WARNING, f"operator reset refused: {refusal}", subject=reset.reset_id,
                details={"operator": reset.operator, "reset_id": reset.reset_id},
            )
        return
    for key in outcome.released:
        released = before[key]
        book.release_fatal(released.alarm_id, released.raised_at, reset.operator, f"operator reset {reset.reset_id}")
    await write_latch(step, state, reset.operator, reset.reset_id)
    log.warning("operator %s reset %s released %s; %s", reset.operator, reset.reset_id, ", ".join(outcome.released),
                f"still latched by {', '.join(outcome.remaining)}" if outcome.remaining else "the platform is released")


@app.agent(relay_events)
async def follow_trips(stream: faust.StreamT) -> None:
    async for record in service.records(stream, admit=ledger.admit):
        assert isinstance(record, RelayState)
        async with ledger.step() as step:
            await on_relay_state(step, record)


async def on_relay_state(step: Step, record: RelayState) -> None:
    """Keep the Pico's trip count: a reset is issued for it, and refused once it moved on."""
    current = latch.get(tables.LATCH_KEY)
    state = latch_state()
    if record.trip_count < 0 or record.trip_count == state.trip_count:
        return
    state.trip_count = record.trip_count
    await write_latch(step, state, SPEC.name, current.reset_id if current else "", publish=False)


# -- views ---------------------------------------------------------------------------

#: The HomeKit bridge's backend (the seeds' HAP backend): active alarms and latch, with readings and relays.
feed = homekit_feed.register(service, book.active_entries, lambda: latch.get(tables.LATCH_KEY))
#: The operator's status page in a browser (platform state, relays, water temperature, alarms, health).
status_page = dashboard.register(service, feed, book.active_entries, lambda: latch.get(tables.LATCH_KEY))


def _entry_view(entry: AlarmEntry) -> dict[str, Any]:
    return entry.asdict() | {"alarm": entry.alarm.asdict() | {"severity": entry.alarm.severity.value}}


@app.page("/alarms")
@requires(Role.VIEWER)
async def list_active(web: Any, request: Any) -> Any:
    entries = book.active_entries()
    return web.json({"count": len(entries), "alarms": [_entry_view(e) for e in entries]})


@app.page("/alarms/history")
@requires(Role.VIEWER)
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
@requires(Role.VIEWER)
async def one_alarm(web: Any, request: Any) -> Any:
    alarm_id = request.query.get("id", "")
    entry = book.current(alarm_id)
    if entry is None:
        return web.json({"error": f"no alarm {alarm_id!r}"}, status=404)
    return web.json(_entry_view(entry))


@app.page("/latch")
@requires(Role.VIEWER)
async def latch_view(web: Any, request: Any) -> Any:
    """The latch as the operator is shown it: the occurrences that hold it and the Pico's trip count."""
    state = latch.get(tables.LATCH_KEY)
    return web.json(state.asdict() if state else {"latched": False, "occurrences": {}, "trip_count": None})


RESET_BODY = '{"occurrences": [ID, ...], "trip_count": N or null} (as GET /latch shows them)'


@app.page("/reset")
@requires(Role.OPERATOR)
class Reset(faust.web.View):
    """``POST`` the occurrences and trip count ``GET /latch`` showed: issue a signed one-time reset naming them.

    The operator named in the reset (and so in the history) is the authenticated caller; an
    ``operator`` field in the body is ignored.
    """

    async def post(self, request: Any) -> Any:
        operator = auth.principal(request).name.strip()
        try:
            body = json.loads(await request.read() or b"{}")
            operator.encode()  # a name with a lone surrogate could be neither signed nor sent
            occurrences = body["occurrences"]
            trip_count = body.get("trip_count")
            if not isinstance(occurrences, list) or not all(isinstance(o, str) for o in occurrences):
                raise TypeError("occurrences")
            if trip_count is not None and (not isinstance(trip_count, int) or isinstance(trip_count, bool)):
                raise TypeError("trip_count")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return self.json({"error": f"expected JSON {RESET_BODY}"}, status=400)
        if not operator:
            return self.json({"error": "the token names no operator"}, status=400)
        state = latch_state()
        if not state.latched:
            return self.json({"error": "the platform is not latched", "latched": False}, status=409)
        if not state.shows(occurrences, trip_count):
            return self.json({
                "error": "the latch changed since it was shown: look again (GET /latch) before resetting",
                "occurrences": sorted(state.latching), "trip_count": state.trip_count,
            }, status=409)
        try:
            covered = await readings_end()
        except Exception as exc:  # the broker does not answer: a reset now could not be published either
            return self.json({"error": f"cannot read where the readings end: {exc!r}"}, status=503)
        try:
            reset = await service.vault.call(lambda: issue_reset(operator, signer(), occurrences, trip_count, covered))
        except DependencyDown as exc:
            return self.json({"error": f"cannot sign the reset: {exc}"}, status=503)
        await reset_topic.send(key=reset.reset_id, value=reset)
        log.warning("operator %s issued reset %s releasing %s (trip count %s)", operator, reset.reset_id,
                    ", ".join(reset.occurrences), trip_count)
        return self.json({"reset_id": reset.reset_id, "operator": operator, "issued_at": reset.issued_at,
                          "occurrences": reset.occurrences, "trip_count": trip_count}, status=202)
