"""The alarm lifecycle as plain functions over records: no Faust, no Kafka.

Raises travel on ``createAlarm`` and clears on ``deleteAlarm``: two topics, so they may
arrive out of order, and after a crash a stretch of both is delivered again. The book
therefore keeps, per alarm id, a short *timeline* of the events it has seen (deduplicated
by kind and time) and derives the alarm's occurrences from it in time order:

* a raise while inactive starts an occurrence ``alarm_id@raised_at``; a raise while
  active is the same alarm (idempotent);
* a clear closes the active occurrence, recording who and when; a clear with nothing
  active changes nothing but is kept (it may close a raise that arrives later);
* a FATAL occurrence ignores clears (refused, counted); only an operator reset closes it.

Whatever the arrival order or the number of replays, the same set of events gives the
same history: no alarm lost, none doubled. Occurrences are never removed, only marked
inactive.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass
from operator import attrgetter
from typing import MutableMapping

from streams.records import Alarm, AlarmClear, HeaterRecord

#: Events kept per alarm id (at least half survive a trim): far more than a crash replays
#: (one commit interval). Every event rewrites the alarm's timeline row, so this bounds the
#: cost of one event too.
TIMELINE_LIMIT = 64


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


class TimelineEvent(HeaterRecord):
    """A raise, clear or operator reset of one alarm id, as the book saw it."""

    kind: str
    at: float
    alarm: Alarm | None = None
    by: str = ""
    reason: str = ""
    schema_version: int = 1

    @property
    def order(self) -> tuple[float, bool]:
        """A timeline's order: by time, a raise before a clear or reset at the same time."""
        return (self.at, self.kind != "raise")


class AlarmTimeline(HeaterRecord):
    """The recent events of one alarm id, sorted by time.

    ``horizon``: the time of the last event folded away; one arriving at or before it is
    a replay of settled history and is ignored. Anything later is kept, however late it
    arrives: when one topic runs far ahead of the other (a producer catching up after an
    outage), the missing events all lie after the last settled occurrence.
    """

    alarm_id: str
    events: list[TimelineEvent]
    horizon: float | None = None
    schema_version: int = 1


class Effect(str, enum.Enum):
    RAISED = "raised"
    DUPLICATE = "duplicate"
    CLEARED = "cleared"
    UNCHANGED = "unchanged"
    UNKNOWN = "unknown"
    REFUSED_FATAL = "refused_fatal"
    SETTLED = "settled"  # at or before the timeline's horizon: a replay of folded history


@dataclass(frozen=True)
class Outcome:
    """What one event did: its effect, and the occurrences whose entries changed."""

    effect: Effect
    changed: tuple[AlarmEntry, ...] = ()

    @property
    def latches(self) -> bool:
        """A newly raised FATAL alarm latches the platform and cuts the power."""
        return self.effect is Effect.RAISED and any(e.active and e.alarm.is_fatal for e in self.changed)


def occurrence_id(alarm: Alarm) -> str:
    return f"{alarm.alarm_id}@{alarm.raised_at!r}"


def derive(events: list[TimelineEvent]) -> list[AlarmEntry]:
    """The occurrences a time-ordered list of events gives, oldest first."""
    entries: list[AlarmEntry] = []
    current: AlarmEntry | None = None
    for event in events:
        if event.kind == "raise" and event.alarm is not None:
            if current is None or not current.active:
                current = AlarmEntry(occurrence_id=occurrence_id(event.alarm), alarm=event.alarm, active=True)
                entries.append(current)
        elif current is not None and current.active:
            if event.kind == "clear" and current.alarm.is_fatal:
                current = _replace(entries, current, refused_clears=current.refused_clears + 1)
            elif event.kind == "clear" or (event.kind == "reset" and current.alarm.is_fatal):
                current = _replace(entries, current, active=False, cleared_at=event.at, cleared_by=event.by, clear_reason=event.reason)
    return entries


def _replace(entries: list[AlarmEntry], entry: AlarmEntry, **changes: object) -> AlarmEntry:
    new = AlarmEntry(**{**entry.asdict(), **changes})
    entries[-1] = new
    return new


def insert(events: list[TimelineEvent], event: TimelineEvent) -> tuple[list[TimelineEvent], int] | None:
    """Events with ``event`` in time order and its index, or None when already there (a replay).

    An event is known by its kind and time. A binary search: events of the same kind and time
    have the same order, so a replay lies among the events just before the place it would take.
    """
    order = event.order
    index = bisect.bisect_right(events, order, key=attrgetter("order"))
    before = index - 1
    while before >= 0 and events[before].order == order:
        if events[before].kind == event.kind:
            return None
        before -= 1
    return [*events[:index], event, *events[index:]], index


def quiet_points(events: list[TimelineEvent], start: int = 0) -> list[int]:
    """Indices before which no occurrence is active: history before them is settled.

    From ``start``, a quiet point already known: each point depends only on the events
    before it, so those up to a change need not be found again.
    """
    points = [start]
    active = fatal = False
    for index in range(start, len(events)):
        event = events[index]
        if event.kind == "raise" and not active:
            active, fatal = True, bool(event.alarm and event.alarm.is_fatal)
        elif active and ((event.kind == "clear" and not fatal) or (event.kind == "reset" and fatal)):
            active = False
            points.append(index + 1)
    return points


def trim_point(events: list[TimelineEvent], quiet: list[int]) -> int:
    """Where settled history may be folded away: past the limit, the last quiet point
    that keeps at least half of it (0: nothing to fold)."""
    if len(events) <= TIMELINE_LIMIT:
        return 0
    return max(q for q in quiet if q <= len(events) - TIMELINE_LIMIT // 2)


class AlarmBook:
    """The alarm tables and their write rules, over any mutable mappings.

    ``history``: occurrence id → entry; ``active``: alarm id → its latest occurrence id;
    ``timelines``: alarm id → recent events. AlarmsServer backs them with changelog
    tables; every other service keeps an in-memory replica to know its own alarms.
    """

    def __init__(
        self,
        history: MutableMapping[str, AlarmEntry],
        active: MutableMapping[str, str],
        timelines: MutableMapping[str, AlarmTimeline],
    ) -> None:
        self.history = history
        self.active = active
        self.timelines = timelines
        #: The timeline this book last wrote per alarm id, with its events as written and their
        #: quiet points. Every event re-reads its alarm's timeline, and a Faust record coerces
        #: a list of records again, element by element, the first time each instance is read:
        #: over a replica's start (the whole history) that and finding the quiet points again
        #: were most of the time. Used only while the mapping still holds that very instance.
        self._written: dict[str, _Written] = {}

    def raise_alarm(self, alarm: Alarm) -> Outcome:
        return self._add(alarm.alarm_id, TimelineEvent(kind="raise", at=alarm.raised_at, alarm=alarm))

    def clear_alarm(self, clear: AlarmClear) -> Outcome:
        event = TimelineEvent(kind="clear", at=clear.cleared_at, by=clear.cleared_by, reason=clear.reason)
        return self._add(clear.alarm_id, event)

    def apply(self, record: Alarm | AlarmClear) -> Outcome:
        return self.raise_alarm(record) if isinstance(record, Alarm) else self.clear_alarm(record)

    def _add(self, alarm_id: str, event: TimelineEvent) -> Outcome:
        timeline = self.timelines.get(alarm_id)
        events, known_quiet = self._read(alarm_id, timeline)
        horizon = timeline.horizon if timeline is not None else None
        if horizon is not None and event.at <= horizon:
            return Outcome(Effect.SETTLED)
        inserted = insert(events, event)
        if inserted is None:
            return Outcome(Effect.DUPLICATE if event.kind == "raise" else Effect.UNCHANGED)
        updated, index = inserted
        unchanged = [q for q in known_quiet if q <= index]
        start = unchanged[-1]
        quiet = unchanged[:-1] + quiet_points(updated, start)
        changed = tuple(e for e in derive(updated[start:]) if self.history.get(e.occurrence_id) != e)
        cut = trim_point(updated, quiet)
        if cut:
            horizon, updated = updated[cut - 1].at, updated[cut:]
            quiet = [q - cut for q in quiet if q >= cut]
        written = AlarmTimeline(alarm_id=alarm_id, events=updated, horizon=horizon)
        self.timelines[alarm_id] = written
        self._written[alarm_id] = _Written(written, updated, quiet)
        for entry in changed:
            self.history[entry.occurrence_id] = entry
        if changed:
            latest = max(changed, key=lambda e: e.alarm.raised_at)
            current = self.current(alarm_id)
            if current is None or latest.alarm.raised_at >= current.alarm.raised_at:
                self.active[alarm_id] = latest.occurrence_id
        return Outcome(_effect(event, changed, timeline is None), changed)

    def _read(self, alarm_id: str, timeline: AlarmTimeline | None) -> tuple[list[TimelineEvent], list[int]]:
        """The events of ``timeline`` and their quiet points."""
        if timeline is None:
            return [], [0]
        written = self._written.get(alarm_id)
        if written is not None and written.timeline is timeline:
            return written.events, written.quiet
        return timeline.events, quiet_points(timeline.events)

    def current(self, alarm_id: str) -> AlarmEntry | None:
        """The latest occurrence of an alarm, active or not."""
        occ = self.active.get(alarm_id)
        return None if occ is None else self.history.get(occ)

    def active_entries(self) -> list[AlarmEntry]:
        entries = [e for e in (self.history.get(o) for o in self.active.values()) if e is not None and e.active]
        return sorted(entries, key=lambda e: e.alarm.raised_at)

    def release_fatal(self, alarm_id: str, raised_at: float, operator: str, reason: str) -> list[AlarmEntry]:
        """An operator reset released the FATAL occurrence of ``alarm_id`` raised at ``raised_at``.

        The reset event is placed at the raise's own time (after it: resets sort after
        raises), so it ends exactly that occurrence, and a raise of the same alarm that
        came later — however late it is delivered — starts a new one.
        """
        event = TimelineEvent(kind="reset", at=raised_at, by=operator, reason=reason)
        return [e for e in self._add(alarm_id, event).changed if not e.active]


@dataclass(frozen=True)
class _Written:
    timeline: AlarmTimeline
    events: list[TimelineEvent]
    quiet: list[int]


def _effect(event: TimelineEvent, changed: tuple[AlarmEntry, ...], first: bool) -> Effect:
    if event.kind == "raise":
        return Effect.RAISED if any(e.active and e.alarm == event.alarm for e in changed) else Effect.DUPLICATE
    if any(e.refused_clears and e.active for e in changed):
        return Effect.REFUSED_FATAL
    if any(not e.active for e in changed):
        return Effect.CLEARED
    return Effect.UNKNOWN if first else Effect.UNCHANGED
