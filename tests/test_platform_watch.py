"""The platform watch on the real broker: a watch that resumes a stopped one reads on from where it
stopped and knows what a watch reading the whole history knows; into a log that started over
it does not carry the old state."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from heater.runtime.broker import EmbeddedBroker
from streams import topics
from streams.codec import encode
from streams.ids import alarm_id_for
from streams.platform_watch import PlatformWatch
from streams.records import Alarm, Severity
from tests.support import produce

SERVICE = "bank"


async def raise_alarm(bootstrap: str, code: str, severity: Severity) -> None:
    alarm_id = alarm_id_for(SERVICE, code)
    alarm = Alarm(alarm_id=alarm_id, source=SERVICE, code=code, severity=severity, message=f"{code} (test)",
                  raised_at=time.time())
    await produce(bootstrap, topics.CREATE_ALARM.name, [encode(alarm)], key=alarm_id.encode())


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
