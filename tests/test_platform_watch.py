"""The platform watch on the real broker: a watch that resumes a stopped one reads on from where it
stopped and knows what a watch reading the whole history knows; into a log that started over
it does not carry the old state; of the latch it reads every reset's record and the newest of the latch now."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiokafka import ConsumerRecord, TopicPartition

from heater.runtime.broker import EmbeddedBroker
from streams import metrics, topics
from streams.alarm_book import TIMELINE_LIMIT, AlarmBook, AlarmTimeline
from streams.codec import encode
from streams.ids import alarm_id_for
from streams.latch import LATCH_KEY, LatchState, Occurrence
from streams.platform_watch import LATCH_RECORDS_READ, PlatformWatch, in_time_order
from streams.records import Alarm, AlarmClear, Severity
from tests.support import produce, produce_in_order

SERVICE = "bank"


async def raise_alarm(bootstrap: str, code: str, severity: Severity) -> Alarm:
    alarm_id = alarm_id_for(SERVICE, code)
    alarm = Alarm(alarm_id=alarm_id, source=SERVICE, code=code, severity=severity, message=f"{code} (test)",
                  raised_at=time.time())
    await produce(bootstrap, topics.CREATE_ALARM.name, [encode(alarm)], key=alarm_id.encode())
    return alarm


async def stopped_watch(bootstrap: str, resume: PlatformWatch | None = None) -> PlatformWatch:
    watch = PlatformWatch(bootstrap, SERVICE, fetch_wait_ms=10, resume=resume)
    await watch.start()
    await watch.stop()
    return watch


def active_ids(watch: PlatformWatch) -> list[str]:
    return [entry.alarm.alarm_id for entry in watch.book.active_entries()]


async def test_a_resumed_watch_reads_on_from_the_stopped_one_and_knows_the_whole_history(own_broker: EmbeddedBroker) -> None:
    bootstrap = own_broker.bootstrap
    await raise_alarm(bootstrap, "early", Severity.WARNING)
    first = await stopped_watch(bootstrap)
    assert active_ids(first) == [alarm_id_for(SERVICE, "early")] and not first.latch.latched
    assert first.positions[next(tp for tp in first.positions if tp.topic == topics.CREATE_ALARM.name)] == 1

    await raise_alarm(bootstrap, "late", Severity.FATAL)
    resumed = await stopped_watch(bootstrap, resume=first)
    whole = await stopped_watch(bootstrap)

    assert resumed.book is first.book, "the resumed watch took over the stopped one's state"
    assert active_ids(resumed) == active_ids(whole) == [alarm_id_for(SERVICE, "early"), alarm_id_for(SERVICE, "late")]
    assert resumed.latch.latched and whole.latch.latched
    assert resumed.positions == whole.positions


async def test_a_watch_does_not_resume_into_a_log_that_started_over(run_dir: Path) -> None:
    first_broker = await asyncio.to_thread(EmbeddedBroker(run_dir / "first").start)
    try:
        await raise_alarm(first_broker.bootstrap, "before", Severity.FATAL)
        first = await stopped_watch(first_broker.bootstrap)
        assert first.latch.latched
    finally:
        await asyncio.to_thread(first_broker.stop)
    second_broker = await asyncio.to_thread(EmbeddedBroker(run_dir / "second", port=first_broker.port).start)
    try:
        resumed = await stopped_watch(second_broker.bootstrap, resume=first)
        assert resumed.book is not first.book
        assert not resumed.latch.latched and active_ids(resumed) == [], "nothing of the old log carried into the new one"
    finally:
        await asyncio.to_thread(second_broker.stop)


async def test_a_watch_reads_every_resets_record_and_only_the_newest_of_the_latch_now(
        own_broker: EmbeddedBroker) -> None:
    """AlarmsServer writes the latch now and one record per reset (:meth:`LatchState.to_records`): a start
    reads every reset's record, however old, and of the latch now only the newest — a newest one that does
    not decode leaves the one before it in force. Every FATAL of the history released by a reset long
    passed stays released; the one no reset named latches."""
    bootstrap = own_broker.bootstrap
    latch = topics.PLATFORM_LATCH.name
    skipped = metrics.WATCH_SKIPPED.labels(SERVICE, latch, "malformed")
    await produce(bootstrap, latch, [b"an old record that does not decode"], key=LATCH_KEY.encode())
    state = LatchState()

    async def write(changed_by: str, reset_id: str = "") -> None:
        for key, record in state.to_records(time.time(), changed_by, reset_id):
            await produce(bootstrap, latch, [encode(record)], key=key.encode())
        state.recorded()

    for n in range(12):
        alarm = await raise_alarm(bootstrap, f"fatal-{n}", Severity.FATAL)
        state.on_fatal(Occurrence.of(alarm))
        await write("alarms")
        assert not state.on_reset(f"reset-{n}", [alarm.occurrence_id], None).refused
        await write("alice", f"reset-{n}")
    last = await raise_alarm(bootstrap, "fatal-last", Severity.FATAL)
    state.on_fatal(Occurrence.of(last))
    await write("alarms")
    await produce(bootstrap, latch, [b"{not json"], key=LATCH_KEY.encode())
    assert 3 * 12 + 2 > LATCH_RECORDS_READ

    before = skipped._value.get()
    watch = await stopped_watch(bootstrap)
    assert skipped._value.get() - before == 1, "the newest record was read, the oldest not"
    assert watch.latch.latched and list(watch.latch.unreleased) == [last.occurrence_id]
    assert watch.latch.released == state.released and len(state.released) == 12


async def test_a_start_applies_both_alarm_topics_in_time_order(own_broker: EmbeddedBroker) -> None:
    """A start fetches all of ``createAlarm`` and ``deleteAlarm`` at once. An alarm raised and cleared
    three timelines' worth of times is followed in the order it happened: its timeline stays bounded
    (applied one topic after the other, it would hold every raise before the first clear, and each
    clear would re-derive all of them), and every occurrence is closed."""
    alarm_id = alarm_id_for(SERVICE, "toggling")
    records: list[tuple[str, bytes | None, bytes]] = []
    for n in range(3 * TIMELINE_LIMIT):
        at = 1_700_000_000.0 + n
        raised = Alarm(alarm_id=alarm_id, source=SERVICE, code="toggling", severity=Severity.WARNING,
                       message="toggling (test)", raised_at=at)
        records.append((topics.CREATE_ALARM.name, alarm_id.encode(), encode(raised)))
        cleared = AlarmClear(alarm_id=alarm_id, cleared_by=SERVICE, cleared_at=at + 0.5, reason="test")
        records.append((topics.DELETE_ALARM.name, alarm_id.encode(), encode(cleared)))
    await produce_in_order(own_broker.bootstrap, records)

    longest = 0

    class Timelines(dict):
        def __setitem__(self, key: str, timeline: AlarmTimeline) -> None:
            nonlocal longest
            longest = max(longest, len(timeline.events))
            super().__setitem__(key, timeline)

    watch = PlatformWatch(own_broker.bootstrap, SERVICE, fetch_wait_ms=10)
    watch.book = AlarmBook({}, {}, Timelines())
    await watch.start()
    await watch.stop()

    assert len(watch.book.history) == 3 * TIMELINE_LIMIT and active_ids(watch) == []
    # Records sent in the same millisecond share a timestamp, and one fetch may end a topic a few
    # records before the other: a few raises may run ahead of their clears, never the history.
    assert longest <= TIMELINE_LIMIT + TIMELINE_LIMIT // 2, f"a timeline held {longest} events"


def test_messages_merge_by_timestamp_and_keep_each_partitions_order() -> None:
    def message(topic: str, offset: int, timestamp: int) -> ConsumerRecord:
        return ConsumerRecord(topic, 0, offset, timestamp, 0, None, b"", None, 0, 0, ())

    raises, clears = TopicPartition("createAlarm", 0), TopicPartition("deleteAlarm", 0)
    batches = {raises: [message("createAlarm", 0, 10), message("createAlarm", 1, 30), message("createAlarm", 2, 25)],
               clears: [message("deleteAlarm", 0, 20), message("deleteAlarm", 1, 40)]}
    merged = [(tp.topic, m.offset) for tp, m in in_time_order(batches)]
    assert merged == [("createAlarm", 0), ("deleteAlarm", 0), ("createAlarm", 1), ("createAlarm", 2),
                      ("deleteAlarm", 1)], "a partition's own order holds even where its clock went back"
