"""The platform's FATAL latch: which FATAL occurrences hold it, and what a reset releases. Pure: no Kafka, no Faust.

DESIGN rule 4. Every FATAL alarm is an *occurrence*, named by an id its source derives
from its input (:meth:`streams.records.Alarm.occurrence_id`): the time of the reading
that started the condition, or the Pico trip it caused. The same input replayed after
a restart gives the same id; a danger that persists after a reset is decided again
from newer input and gives a new one.

A reset names the occurrences the operator was shown, and the Pico trip count it was
issued for. It releases exactly those. Any occurrence it does not name latches,
whatever its timestamp — a FATAL raised a moment before the reset and delivered after
it, a service catching up — and no clock comparison decides anything here: clocks of
different processes are not comparable, and a lagging service's alarm is as real as a
prompt one's.

A danger that persists after a reset is decided again from newer input, not from the
readings the operator's decision covered: a reset records where each readings partition
ended when it was issued (``covered``), and a condition it released is raised again
only by a reading past that point — an offset in the input, not a time. A service
working through a backlog after its restart does not re-latch on readings the operator
had already seen; a FATAL occurrence the reset did not name latches whatever its input.

Two views of the same rule:

* :class:`LatchState` — AlarmsServer's own: the occurrences that latch, every occurrence
  released so far and by which reset, the trip count;
* :class:`LatchView` — what every other service follows: FATAL alarms straight from
  ``createAlarm`` (so it halts even while AlarmsServer is down) and AlarmsServer's
  releases from ``platformLatch``.

On ``platformLatch`` (compacted) AlarmsServer keeps the latch as records that do not grow
with its history: under :data:`LATCH_KEY` the latch now (what latches, the trip count, what
the latest reset released), and under :func:`reset_key` one record per reset, written once,
with what that reset released and covered. Every FATAL and every reset writes records of a
few hundred bytes, however many resets came before; a service reads every reset's record
once, at its start. (A single record holding every release grew by ~150 bytes a reset, and
every service decoded it on every FATAL.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Collection, Iterable, Mapping

from streams.ids import occurrence_key

if TYPE_CHECKING:
    from streams.records import Alarm, PlatformLatch

__all__ = ["LATCH_KEY", "FatalVerdict", "LatchState", "LatchView", "Occurrence", "ResetOutcome", "is_reset_key",
           "not_named", "occurrence_key", "reset_key"]

#: The key of the latch now, in AlarmsServer's table and on ``platformLatch``.
LATCH_KEY = "platform"
RESET_KEY_PREFIX = "reset/"


def reset_key(reset_id: str) -> str:
    """The key of the record that keeps what one reset released and covered."""
    return RESET_KEY_PREFIX + reset_id


def is_reset_key(key: str | bytes | None) -> bool:
    if isinstance(key, bytes):
        return key.startswith(RESET_KEY_PREFIX.encode())
    return key is not None and key.startswith(RESET_KEY_PREFIX)


@dataclass(frozen=True)
class Occurrence:
    """One FATAL occurrence as the operator is shown it."""

    key: str
    alarm_id: str
    reason: str
    raised_at: float

    @classmethod
    def of(cls, alarm: Alarm) -> "Occurrence":
        return cls(alarm.occurrence_id, alarm.alarm_id, alarm.message, alarm.raised_at)

    def to_row(self) -> dict[str, object]:
        return {"alarm_id": self.alarm_id, "reason": self.reason, "raised_at": self.raised_at}

    @classmethod
    def from_row(cls, key: str, row: Mapping[str, object]) -> "Occurrence":
        return cls(key, str(row.get("alarm_id", "")), str(row.get("reason", "")), float(row.get("raised_at", 0.0)))  # type: ignore[arg-type]


class FatalVerdict(str, enum.Enum):
    NEW = "new"  # latches now: power cut-off commanded
    HELD = "held"  # already latching (the same occurrence delivered again)
    RELEASED = "released"  # a reset named it: a replay, kept in history, not latched


@dataclass(frozen=True)
class ResetOutcome:
    """What a verified reset did: released occurrences, those still latching, or why it was refused."""

    released: tuple[str, ...] = ()
    remaining: tuple[str, ...] = ()
    refused: str = ""


@dataclass
class LatchState:
    """AlarmsServer's FATAL latch."""

    latching: dict[str, Occurrence] = field(default_factory=dict)
    released: dict[str, str] = field(default_factory=dict)  # occurrence → reset id
    trip_count: int | None = None  # the Pico's, as its adapter last reported it
    covered: dict[str, dict[str, int]] = field(default_factory=dict)  # reset id → input positions it covers
    unrecorded: set[str] = field(default_factory=set)  # resets whose own record is still to be written

    @property
    def latched(self) -> bool:
        return bool(self.latching)

    def copy(self) -> "LatchState":
        """A state to decide on; the one it was copied from stays as it was should the decision not be written."""
        return LatchState(dict(self.latching), dict(self.released), self.trip_count, dict(self.covered),
                          set(self.unrecorded))

    def on_fatal(self, occurrence: Occurrence) -> FatalVerdict:
        if occurrence.key in self.released:
            return FatalVerdict.RELEASED
        if occurrence.key in self.latching:
            return FatalVerdict.HELD
        self.latching[occurrence.key] = occurrence
        return FatalVerdict.NEW

    def shows(self, occurrences: Collection[str], trip_count: int | None) -> bool:
        """Whether the operator's view — ``occurrences`` and ``trip_count`` — is still the latch's."""
        return set(occurrences) == set(self.latching) and trip_count == self.trip_count

    def on_reset(self, reset_id: str, named: Iterable[str], trip_count: int | None,
                 covered: Mapping[str, int] | None = None) -> ResetOutcome:
        """Release exactly the named occurrences; refuse a reset issued for another trip, or naming none that latches."""
        names = set(named)
        if self.trip_count is not None and trip_count != self.trip_count:
            return ResetOutcome(remaining=tuple(self.latching), refused=(
                f"issued for Pico trip count {trip_count}, the Pico is at {self.trip_count}: it tripped again since"))
        releasing = [key for key in self.latching if key in names]
        if not releasing:
            return ResetOutcome(remaining=tuple(self.latching), refused="it names no FATAL occurrence that latches")
        for key in releasing:
            del self.latching[key]
            self.released[key] = reset_id
        self.covered[reset_id] = dict(covered or {})
        self.unrecorded.add(reset_id)
        return ResetOutcome(released=tuple(releasing), remaining=tuple(self.latching))

    def to_record(self, changed_at: float, changed_by: str, reset_id: str = "") -> PlatformLatch:
        """The latch now (its record under :data:`LATCH_KEY`), with what the reset ``reset_id`` released."""
        first = next(iter(self.latching.values()), None)
        return self._record(
            latched=self.latched,
            alarm_id=first.alarm_id if first else "",
            reason=first.reason if first else (f"operator reset {reset_id}" if reset_id else ""),
            changed_at=changed_at,
            changed_by=changed_by,
            occurrences={key: o.to_row() for key, o in self.latching.items()},
            reset_id=reset_id,
        )

    def reset_record(self, reset_id: str, changed_at: float, changed_by: str) -> PlatformLatch:
        """What one reset released and covered, and nothing else: the record under :func:`reset_key`."""
        return self._record(latched=False, alarm_id="", reason=f"operator reset {reset_id}", changed_at=changed_at,
                            changed_by=changed_by, occurrences={}, reset_id=reset_id)

    def _record(self, reset_id: str, **fields: object) -> PlatformLatch:
        from streams.records import PlatformLatch  # the rule itself needs no Faust
        return PlatformLatch(
            released={key: by for key, by in self.released.items() if reset_id and by == reset_id},
            covered={reset_id: dict(self.covered[reset_id])} if reset_id in self.covered else {},
            trip_count=self.trip_count, reset_id=reset_id, **fields)  # type: ignore[arg-type]

    def to_records(self, changed_at: float, changed_by: str, reset_id: str = "") -> list[tuple[str, PlatformLatch]]:
        """What AlarmsServer writes now, by key: a record for each reset not yet recorded, then the latch now.

        Call :meth:`recorded` once they are written.
        """
        resets = [(reset_key(r), self.reset_record(r, changed_at, changed_by)) for r in sorted(self.unrecorded)]
        return resets + [(LATCH_KEY, self.to_record(changed_at, changed_by, reset_id))]

    def recorded(self) -> None:
        self.unrecorded.clear()

    @classmethod
    def from_record(cls, record: PlatformLatch | None) -> "LatchState":
        return cls.from_records(record, ())

    @classmethod
    def from_records(cls, current: PlatformLatch | None, resets: Iterable[PlatformLatch]) -> "LatchState":
        """The latch from its records: the latch now and every reset's own record.

        A release that no reset record holds (a latch written when one record held every
        release) is kept, and its reset is written in a record of its own at the next write.
        """
        state = cls()
        recorded: set[str] = set()
        for record in (*resets, *((current,) if current is not None else ())):
            state.released.update(record.released or {})
            state.covered.update({r: dict(p) for r, p in (record.covered or {}).items()})
            if record is not current:
                recorded.add(record.reset_id)
        if current is not None:
            state.latching = {o.key: o for o in latching(current)}
            state.trip_count = current.trip_count
        state.unrecorded = set(state.released.values()) - recorded
        return state


@dataclass
class LatchView:
    """The latch as a service follows it: FATAL occurrences seen, and the releases AlarmsServer recorded."""

    raised: dict[str, Occurrence] = field(default_factory=dict)
    released: dict[str, str] = field(default_factory=dict)
    released_by: str = ""
    covered: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def unreleased(self) -> dict[str, Occurrence]:
        return {key: o for key, o in self.raised.items() if key not in self.released}

    @property
    def latched(self) -> bool:
        return any(key not in self.released for key in self.raised)

    @property
    def _latest(self) -> Occurrence | None:
        return next(reversed(self.unreleased.values()), None)

    @property
    def fatal_alarm_id(self) -> str:
        latest = self._latest
        return latest.alarm_id if latest else ""

    @property
    def reason(self) -> str:
        latest = self._latest
        return f"FATAL {latest.alarm_id}: {latest.reason}" if latest else ""

    def is_released(self, key: str) -> bool:
        return key in self.released

    def covered_by_release(self, key: str) -> Mapping[str, int] | None:
        """The input positions the reset that released ``key`` covers; None while no reset released it."""
        reset_id = self.released.get(key)
        return None if reset_id is None else self.covered.get(reset_id, {})

    def covered_by_releases_of(self, prefix: str) -> dict[str, int] | None:
        """The input positions covered by the resets that released an occurrence beginning with ``prefix``."""
        resets = {reset_id for key, reset_id in self.released.items() if key.startswith(prefix)}
        return merged_cover(self.covered.get(reset_id, {}) for reset_id in resets)

    def on_alarm(self, alarm: Alarm) -> None:
        if alarm.is_fatal:
            self.raised.setdefault(alarm.occurrence_id, Occurrence.of(alarm))

    def on_latch(self, record: PlatformLatch) -> None:
        for occurrence in latching(record):
            self.raised.setdefault(occurrence.key, occurrence)
        for reset_id, positions in (record.covered or {}).items():
            self.covered.setdefault(reset_id, dict(positions))
        new = {key: reset for key, reset in (record.released or {}).items() if key not in self.released}
        if new:
            self.released.update(new)
            self.released_by = record.changed_by


def latching(record: PlatformLatch) -> list[Occurrence]:
    """The occurrences a latch record holds; a latched record that names none still latches (by its alarm)."""
    found = [Occurrence.from_row(key, row) for key, row in (record.occurrences or {}).items()]
    if record.latched and not found:
        found = [Occurrence(occurrence_key(record.alarm_id, record.changed_at), record.alarm_id, record.reason,
                            record.changed_at)]
    return found


def merged_cover(covers: Iterable[Mapping[str, int]]) -> dict[str, int] | None:
    """The input positions several resets cover together (the furthest per partition); None for none."""
    merged: dict[str, int] | None = None
    for positions in covers:
        merged = merged if merged is not None else {}
        for key, offset in positions.items():
            merged[key] = max(offset, merged.get(key, offset))
    return merged


def still_covered(positions: Mapping[str, int] | None, position: tuple[str, int] | None) -> bool:
    """Whether the input at ``position`` ("topic:partition", offset) is one a release covered.

    ``positions``: what the reset that released a condition covers (None: not released).
    A condition released and still present raises a new occurrence only from input past
    them; without a position (a reset that recorded none, input of unknown position)
    nothing is covered.
    """
    if positions is None or position is None:
        return False
    key, offset = position
    return offset < positions.get(key, -1)


def not_named(view: LatchView, named: Collection[str]) -> list[str]:
    """The occurrences that latch in ``view`` and a reset naming ``named`` would leave latched."""
    return [key for key in view.unreleased if key not in named]
