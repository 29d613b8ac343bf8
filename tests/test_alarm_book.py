"""The alarm lifecycle, table-driven, without Kafka."""

from __future__ import annotations

import random

from streams.alarm_book import AlarmEntry, Effect, apply_clear, apply_operator_reset, apply_raise
from streams.records import Alarm, AlarmClear


def alarm(alarm_id: str = "bank/overtemp", at: float = 10.0, severity: str = "WARNING") -> Alarm:
    source, _, code = alarm_id.partition("/")
    return Alarm(alarm_id=alarm_id, source=source, code=code or "x", severity=severity, message="m", raised_at=at)


def clear(alarm_id: str = "bank/overtemp", at: float = 20.0) -> AlarmClear:
    return AlarmClear(alarm_id=alarm_id, cleared_by="bank", cleared_at=at)


class Book:
    """The two tables, as plain dicts, with the agent's write rules."""

    def __init__(self) -> None:
        self.history: dict[str, AlarmEntry] = {}
        self.active: dict[str, str] = {}
        self.pending: dict[str, AlarmClear] = {}

    def raise_(self, a: Alarm) -> Effect:
        out = apply_raise(self.history, self.active, a, self.pending.get(a.alarm_id))
        if out.entry is not None:
            self.history[out.entry.occurrence_id] = out.entry
            self.active[a.alarm_id] = out.entry.occurrence_id
            if not out.entry.active:
                self.pending.pop(a.alarm_id, None)
        return out.effect

    def clear(self, c: AlarmClear) -> Effect:
        out = apply_clear(self.history, self.active, c)
        if out.effect is Effect.UNKNOWN:
            self.pending[c.alarm_id] = c
        if out.entry is not None:
            self.history[out.entry.occurrence_id] = out.entry
        return out.effect

    def apply(self, event: Alarm | AlarmClear) -> None:
        self.raise_(event) if isinstance(event, Alarm) else self.clear(event)

    def snapshot(self) -> dict[str, tuple[bool, float | None]]:
        return {k: (e.active, e.cleared_at) for k, e in self.history.items()}


def test_raise_list_clear_keeps_history() -> None:
    book = Book()
    assert book.raise_(alarm()) is Effect.RAISED
    assert book.clear(clear()) is Effect.CLEARED
    (entry,) = book.history.values()
    assert not entry.active and entry.cleared_by == "bank" and entry.cleared_at == 20.0


def test_same_alarm_twice_is_one_alarm() -> None:
    book = Book()
    book.raise_(alarm(at=10))
    assert book.raise_(alarm(at=10)) is Effect.DUPLICATE
    assert book.raise_(alarm(at=11)) is Effect.DUPLICATE  # still active: same condition
    assert len(book.history) == 1


def test_raised_again_after_clear_is_a_new_occurrence() -> None:
    book = Book()
    book.raise_(alarm(at=10))
    book.clear(clear(at=20))
    assert book.raise_(alarm(at=30)) is Effect.RAISED
    assert [e.active for e in sorted(book.history.values(), key=lambda e: e.alarm.raised_at)] == [False, True]


def test_unknown_clear_is_recorded_and_applied_to_a_later_arriving_raise() -> None:
    book = Book()
    assert book.clear(clear(at=20)) is Effect.UNKNOWN
    assert "bank/overtemp" in book.pending
    book.raise_(alarm(at=10))  # raised before the clear was issued: arrived late
    (entry,) = book.history.values()
    assert not entry.active and not book.pending


def test_stale_and_repeated_clears_change_nothing() -> None:
    book = Book()
    book.raise_(alarm(at=30))
    assert book.clear(clear(at=20)) is Effect.STALE
    assert book.clear(clear(at=40)) is Effect.CLEARED
    assert book.clear(clear(at=50)) is Effect.ALREADY_CLEARED


def test_fatal_is_not_cleared_by_delete_only_by_operator_reset() -> None:
    book = Book()
    raised = apply_raise(book.history, book.active, alarm("bank/overtemp-fatal", severity="FATAL"))
    assert raised.latches
    book.raise_(alarm("bank/overtemp-fatal", severity="FATAL"))
    assert book.clear(clear("bank/overtemp-fatal")) is Effect.REFUSED_FATAL
    (entry,) = book.history.values()
    assert entry.active
    reset = apply_operator_reset(entry, "alice", 99.0)
    assert not reset.active and reset.cleared_by == "alice" and reset.alarm.is_fatal


def test_pending_clear_never_clears_a_fatal() -> None:
    book = Book()
    book.clear(clear("x/fatal", at=20))
    book.raise_(alarm("x/fatal", at=10, severity="FATAL"))
    assert next(iter(book.history.values())).active


def test_replaying_any_suffix_changes_nothing() -> None:
    """At-least-once delivery: a crash replays a suffix of the log; the tables must not change."""
    rng = random.Random(7)
    events: list[Alarm | AlarmClear] = []
    t = 0.0
    for _ in range(400):
        t += 1
        name = f"s/{rng.randrange(5)}"
        events.append(alarm(name, at=t) if rng.random() < 0.5 else clear(name, at=t))
    once = Book()
    for e in events:
        once.apply(e)
    for _ in range(20):
        replayed = Book()
        cut = rng.randrange(len(events))
        for e in events:
            replayed.apply(e)
        for e in events[rng.randrange(cut + 1):]:
            replayed.apply(e)
        assert replayed.snapshot() == once.snapshot()
