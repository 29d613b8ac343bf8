"""The alarm lifecycle as plain functions over records: no Faust, no Kafka.

History is kept per *occurrence* (``alarm_id@raised_at``): the same occurrence raised
twice is one alarm, and a clear applies only to the occurrence it was issued after.
That makes every transition idempotent, so replaying a stretch of ``createAlarm`` /
``deleteAlarm`` after a crash (at-least-once delivery) changes nothing: no alarm is
lost or doubled. FATAL alarms cannot be cleared by ``deleteAlarm``; only an operator
reset clears them, and they stay in history.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping, MutableMapping

from streams.records import Alarm, AlarmClear, HeaterRecord, Severity


class AlarmEntry(HeaterRecord):
    """One occurrence of an alarm in the history table (never removed, only marked inactive)."""

    occurrence_id: str
    alarm: Alarm
    active: bool
    cleared_at: float | None = None
    cleared_by: str = ""
    clear_reason: str = ""
    refused_clears: int = 0
    schema_version: int = 1


class Effect(str, enum.Enum):
    RAISED = "raised"
    DUPLICATE = "duplicate"
    CLEARED = "cleared"
    ALREADY_CLEARED = "already_cleared"
    UNKNOWN = "unknown"
    STALE = "stale"
    REFUSED_FATAL = "refused_fatal"


@dataclass(frozen=True)
class Outcome:
    """What one event did: the effect, and the history entry to write (if any)."""

    effect: Effect
    entry: AlarmEntry | None = None

    @property
    def latches(self) -> bool:
        """A newly raised FATAL alarm latches the platform and cuts the power."""
        return self.effect is Effect.RAISED and self.entry is not None and self.entry.alarm.is_fatal


def occurrence_id(alarm: Alarm) -> str:
    return f"{alarm.alarm_id}@{alarm.raised_at!r}"


def apply_raise(
    history: Mapping[str, AlarmEntry],
    active: Mapping[str, str],
    alarm: Alarm,
    pending_clear: AlarmClear | None = None,
) -> Outcome:
    """Raise ``alarm``: a new occurrence becomes active; a known one is a duplicate.

    ``pending_clear`` is a clear for this id that arrived before any raise (the two
    topics are not ordered against each other); if it was issued after this raise,
    the occurrence is recorded already cleared. It never clears a FATAL alarm.
    """
    occ = occurrence_id(alarm)
    if occ in history:
        return Outcome(Effect.DUPLICATE)
    current = history.get(active.get(alarm.alarm_id, ""))
    if current is not None:
        if current.active:
            # Same condition still active under an earlier occurrence: one alarm, not two.
            return Outcome(Effect.DUPLICATE)
        if current.cleared_at is not None and alarm.raised_at <= current.cleared_at:
            # Raised before the latest clear: that clear already covers it (late or replayed).
            return Outcome(Effect.STALE)
    entry = AlarmEntry(occurrence_id=occ, alarm=alarm, active=True)
    if pending_clear is not None and not alarm.is_fatal and pending_clear.cleared_at >= alarm.raised_at:
        entry = _cleared(entry, pending_clear)
    return Outcome(Effect.RAISED, entry)


def apply_clear(history: Mapping[str, AlarmEntry], active: Mapping[str, str], clear: AlarmClear) -> Outcome:
    """Clear an alarm by id: marks its active occurrence inactive, with who and when."""
    occ = active.get(clear.alarm_id)
    if occ is None or occ not in history:
        return Outcome(Effect.UNKNOWN)
    entry = history[occ]
    if not entry.active:
        return Outcome(Effect.ALREADY_CLEARED)
    if clear.cleared_at < entry.alarm.raised_at:
        return Outcome(Effect.STALE)
    if entry.alarm.severity is Severity.FATAL:
        refused = _copy(entry, refused_clears=entry.refused_clears + 1)
        return Outcome(Effect.REFUSED_FATAL, refused)
    return Outcome(Effect.CLEARED, _cleared(entry, clear))


def _cleared(entry: AlarmEntry, clear: AlarmClear) -> AlarmEntry:
    return _copy(entry, active=False, cleared_at=clear.cleared_at, cleared_by=clear.cleared_by, clear_reason=clear.reason)


def apply_operator_reset(entry: AlarmEntry, operator: str, at: float) -> AlarmEntry:
    """The only way a FATAL occurrence becomes inactive; it stays in history."""
    return _copy(entry, active=False, cleared_at=at, cleared_by=operator, clear_reason="operator reset")


def _copy(entry: AlarmEntry, **changes: object) -> AlarmEntry:
    data = entry.asdict()
    data.update(changes)
    return AlarmEntry(**data)


class AlarmBook:
    """The alarm tables and their write rules, over any mutable mappings.

    AlarmsServer backs it with its changelog tables; every other service keeps an
    in-memory replica (fed from the alarm topics) to know its own active alarms.
    """

    def __init__(
        self,
        history: MutableMapping[str, AlarmEntry],
        active: MutableMapping[str, str],
        pending_clears: MutableMapping[str, AlarmClear],
    ) -> None:
        self.history = history
        self.active = active
        self.pending_clears = pending_clears

    def raise_alarm(self, alarm: Alarm) -> Outcome:
        outcome = apply_raise(self.history, self.active, alarm, self.pending_clears.get(alarm.alarm_id))
        if outcome.entry is not None:
            self.history[outcome.entry.occurrence_id] = outcome.entry
            self.active[alarm.alarm_id] = outcome.entry.occurrence_id
            if not outcome.entry.active and alarm.alarm_id in self.pending_clears:
                del self.pending_clears[alarm.alarm_id]
        return outcome

    def clear_alarm(self, clear: AlarmClear) -> Outcome:
        outcome = apply_clear(self.history, self.active, clear)
        if outcome.effect is Effect.UNKNOWN:
            self.pending_clears[clear.alarm_id] = clear
        if outcome.entry is not None:
            self.history[outcome.entry.occurrence_id] = outcome.entry
        return outcome

    def apply(self, record: Alarm | AlarmClear) -> Outcome:
        return self.raise_alarm(record) if isinstance(record, Alarm) else self.clear_alarm(record)

    def current(self, alarm_id: str) -> AlarmEntry | None:
        """The latest occurrence of an alarm, active or not."""
        occ = self.active.get(alarm_id)
        return None if occ is None else self.history.get(occ)

    def active_entries(self) -> list[AlarmEntry]:
        entries = [e for e in (self.history.get(o) for o in self.active.values()) if e is not None and e.active]
        return sorted(entries, key=lambda e: e.alarm.raised_at)

    def reset_fatal(self, operator: str, at: float, covers_until: float) -> list[AlarmEntry]:
        """Operator reset: every active FATAL raised up to ``covers_until`` becomes inactive."""
        reset = [
            apply_operator_reset(e, operator, at)
            for e in self.active_entries()
            if e.alarm.is_fatal and e.alarm.raised_at <= covers_until
        ]
        for entry in reset:
            self.history[entry.occurrence_id] = entry
        return reset
