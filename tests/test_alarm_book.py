"""The alarm lifecycle, table-driven, without Kafka."""

from __future__ import annotations

import random

import pytest

from streams.alarm_book import TIMELINE_LIMIT, AlarmBook, Effect
from streams.records import Alarm, AlarmClear


def alarm(alarm_id: str = "bank/overtemp", at: float = 10.0, severity: str = "WARNING") -> Alarm:
    source, _, code = alarm_id.partition("/")
    return Alarm(alarm_id=alarm_id, source=source, code=code or "x", severity=severity, message="m", raised_at=at)


def clear(alarm_id: str = "bank/overtemp", at: float = 20.0, by: str = "bank") -> AlarmClear:
    return AlarmClear(alarm_id=alarm_id, cleared_by=by, cleared_at=at)


class Book(AlarmBook):
    """A dict-backed book with short names for table-driven tests."""

    def __init__(self) -> None:
        super().__init__({}, {}, {})

    def raise_(self, a: Alarm) -> Effect:
        return self.raise_alarm(a).effect

    def clear(self, c: AlarmClear) -> Effect:
        return self.clear_alarm(c).effect

    def snapshot(self) -> dict[str, tuple[bool, float | None, str]]:
        return snapshot(self)


def snapshot(book: AlarmBook) -> dict[str, tuple[bool, float | None, str]]:
    return {k: (e.active, e.cleared_at, e.cleared_by) for k, e in book.history.items()}


def test_raise_list_clear_keeps_history() -> None:
    book = Book()
    assert book.raise_(alarm()) is Effect.RAISED
    assert [e.alarm.alarm_id for e in book.active_entries()] == ["bank/overtemp"]
    assert book.clear(clear()) is Effect.CLEARED
    (entry,) = book.history.values()
    assert not entry.active and entry.cleared_by == "bank" and entry.cleared_at == 20.0
    assert book.active_entries() == []


def test_same_alarm_twice_is_one_alarm() -> None:
    book = Book()
    book.raise_(alarm(at=10))
    assert book.raise_(alarm(at=10)) is Effect.DUPLICATE
    assert book.raise_(alarm(at=11)) is Effect.DUPLICATE  # still active: the same condition
    assert len(book.history) == 1


def test_raised_again_after_clear_is_a_new_occurrence() -> None:
    book = Book()
    book.raise_(alarm(at=10))
    book.clear(clear(at=20))
    assert book.raise_(alarm(at=30)) is Effect.RAISED
    assert [e.active for e in sorted(book.history.values(), key=lambda e: e.alarm.raised_at)] == [False, True]
    assert book.current("bank/overtemp").alarm.raised_at == 30


def test_clear_of_an_unknown_alarm_is_recorded_and_closes_a_raise_that_arrives_late() -> None:
    book = Book()
    assert book.clear(clear(at=20)) is Effect.UNKNOWN
    assert "bank/overtemp" in book.timelines
    book.raise_(alarm(at=10))
    (entry,) = book.history.values()
    assert not entry.active and entry.cleared_at == 20


def test_raise_arriving_before_an_earlier_clear_is_not_lost() -> None:
    book = Book()
    book.raise_(alarm(at=10))
    book.raise_(alarm(at=30))  # arrives before the clear at 20 (the other topic lags)
    book.clear(clear(at=20))
    entries = sorted(book.history.values(), key=lambda e: e.alarm.raised_at)
    assert [(e.alarm.raised_at, e.active) for e in entries] == [(10, False), (30, True)]


def test_repeated_clears_change_nothing() -> None:
    book = Book()
    book.raise_(alarm(at=30))
    assert book.clear(clear(at=40)) is Effect.CLEARED
    assert book.clear(clear(at=40)) is Effect.UNCHANGED
    assert book.clear(clear(at=50)) is Effect.UNCHANGED


def test_fatal_is_not_cleared_by_delete_only_by_operator_reset() -> None:
    book = Book()
    assert book.raise_alarm(alarm("bank/fatal", severity="FATAL")).latches
    assert book.clear(clear("bank/fatal")) is Effect.REFUSED_FATAL
    (entry,) = book.history.values()
    assert entry.active and entry.refused_clears == 1
    released = book.release_fatal("bank/fatal", entry.alarm.raised_at, "alice", "operator reset r1")
    assert [e.cleared_by for e in released] == ["alice"]
    (entry,) = book.history.values()
    assert not entry.active and entry.alarm.is_fatal and entry.clear_reason == "operator reset r1"


def test_a_release_ends_exactly_the_occurrence_it_names() -> None:
    """Released: a/fatal raised at 10. b/fatal, and a/fatal raised again at 12 (delivered after the
    release), are not named: they stay active, whatever the clock said when the reset was issued."""
    book = Book()
    book.raise_(alarm("a/fatal", at=10, severity="FATAL"))
    book.raise_(alarm("b/fatal", at=30, severity="FATAL"))
    book.raise_(alarm("c/warn", at=5))
    released = book.release_fatal("a/fatal", 10, "alice", "operator reset r1")
    assert [e.alarm.alarm_id for e in released] == ["a/fatal"]
    assert book.current("a/fatal").cleared_by == "alice"
    book.raise_(alarm("a/fatal", at=12, severity="FATAL"))
    assert [(e.alarm.alarm_id, e.alarm.raised_at) for e in book.active_entries()] == [
        ("c/warn", 5), ("a/fatal", 12), ("b/fatal", 30)]
    assert book.history[f"a/fatal@{10.0!r}"].active is False


def _events(rng: random.Random, count: int, ids: int) -> tuple[list[Alarm], list[AlarmClear]]:
    raises: list[Alarm] = []
    clears: list[AlarmClear] = []
    for t in range(1, count + 1):
        name = f"s/{rng.randrange(ids)}"
        if rng.random() < 0.5:
            raises.append(alarm(name, at=float(t)))
        else:
            clears.append(clear(name, at=float(t)))
    return raises, clears


def _in_time_order(raises: list[Alarm], clears: list[AlarmClear]) -> list[Alarm | AlarmClear]:
    return sorted([*raises, *clears], key=lambda e: e.raised_at if isinstance(e, Alarm) else e.cleared_at)


def _interleave(rng: random.Random, a: list, b: list) -> list:
    """Any merge that keeps each topic's own order: what one consumer of two topics may see."""
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and rng.random() < 0.5):
            out.append(a[i]); i += 1
        else:
            out.append(b[j]); j += 1
    return out


def test_any_interleaving_of_the_two_topics_gives_the_same_history() -> None:
    rng = random.Random(11)
    raises, clears = _events(rng, 600, 4)
    reference = Book()
    for e in _in_time_order(raises, clears):
        reference.apply(e)
    for _ in range(6):
        book = Book()
        for e in _interleave(rng, raises, clears):
            book.apply(e)
        assert book.snapshot() == reference.snapshot()


def test_replaying_any_suffix_changes_nothing() -> None:
    """At-least-once delivery: a crash replays a suffix of each topic; the tables must not change."""
    rng = random.Random(7)
    raises, clears = _events(rng, 800, 5)
    once = Book()
    for e in _in_time_order(raises, clears):
        once.apply(e)
    for _ in range(6):
        book = Book()
        for e in _in_time_order(raises, clears):
            book.apply(e)
        replay = _interleave(rng, raises[rng.randrange(len(raises)):], clears[rng.randrange(len(clears)):])
        for e in replay:
            book.apply(e)
        assert book.snapshot() == once.snapshot()


def test_a_long_toggling_alarm_keeps_a_bounded_timeline_and_exact_history() -> None:
    book = Book()
    for t in range(2000):
        book.apply(alarm(at=2 * t) if t % 2 == 0 else clear(at=2 * t))
    assert len(book.history) == 1000
    assert len(book.timelines["bank/overtemp"].events) <= TIMELINE_LIMIT
    assert sum(e.active for e in book.history.values()) == 0


@pytest.mark.parametrize("ahead", ["raises", "clears"])
def test_one_topic_far_ahead_of_the_other_loses_nothing(ahead: str) -> None:
    """A catch-up burst: every event of a fast-toggling alarm on one topic arrives before
    any of the other's, far more of them than the timeline keeps."""
    raises = [alarm(at=10 + 0.1 * i) for i in range(4 * TIMELINE_LIMIT)]
    clears = [clear(at=10.05 + 0.1 * i) for i in range(4 * TIMELINE_LIMIT)]
    reference = Book()
    for e in _in_time_order(raises, clears):
        reference.apply(e)
    book = Book()
    for e in [*raises, *clears] if ahead == "raises" else [*clears, *raises]:
        book.apply(e)
    assert len(reference.history) == 4 * TIMELINE_LIMIT
    assert book.snapshot() == reference.snapshot()


@pytest.mark.parametrize("lagging", ["raises", "clears"])
def test_one_topic_lagging_the_other_by_many_events_loses_nothing(lagging: str) -> None:
    """Interleaved, with one topic 50 events of the same alarm behind the other: the
    timeline must not fold away the stretch the lagging topic has yet to deliver."""
    raises = [alarm(at=10 + 0.1 * i) for i in range(300)]
    clears = [clear(at=10.05 + 0.1 * i) for i in range(300)]
    reference = Book()
    for e in _in_time_order(raises, clears):
        reference.apply(e)
    ahead, behind = (clears, raises) if lagging == "raises" else (raises, clears)
    book = Book()
    for i in range(len(ahead) + 50):
        if i < len(ahead):
            book.apply(ahead[i])
        if i >= 50:
            book.apply(behind[i - 50])
    assert book.snapshot() == reference.snapshot()
    assert len(book.timelines["bank/overtemp"].events) <= 4 * TIMELINE_LIMIT


class CopyingMapping(dict):
    """A table that hands out a fresh copy of a row on every read, as a RocksDB-backed one does."""

    def get(self, key, default=None):  # type: ignore[override]
        value = super().get(key, default)
        return type(value).loads(value.dumps()) if hasattr(value, "dumps") else value


def test_books_sharing_tables_that_another_writer_changes_give_the_same_history() -> None:
    """A book remembers the timelines it wrote; a row another writer (a rebuilt AlarmsServer, a
    recovery) replaced since, or one the table copies on read, is read from the table."""
    rng = random.Random(5)
    raises, clears = _events(rng, 600, 3)
    events = _interleave(rng, raises, clears)
    reference = Book()
    for e in events:
        reference.apply(e)
    history: dict = {}
    active: dict = {}
    timelines: dict = {}
    writers = [AlarmBook(history, active, timelines) for _ in range(2)]
    for e in events:
        rng.choice(writers).apply(e)
    assert snapshot(writers[0]) == reference.snapshot()
    copying = AlarmBook({}, {}, CopyingMapping())
    for e in events:
        copying.apply(e)
    assert snapshot(copying) == reference.snapshot()
