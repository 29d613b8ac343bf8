"""Another service's table, mirrored from its changelog: key → JSON row, read-only.

A display that must show what a service decided (StateRegistry's verdict on each
service, ExceptionsServer's counts) reads that service's own state instead of deciding
again from the same input: the changelog *is* the table, compacted, so reading it from
its beginning gives every key's latest row, and following it gives every change as the
owner writes it. Rows are Faust's JSON (a JSON string key, a JSON object value; an empty
value deletes the key).

:attr:`TableMirror.rows` is None until the mirror has read the log up to where it ended
when it was opened: a half-read table would show keys as gone that are only not read yet.
The owner may not have created its changelog yet (it starts after the reader): the mirror
waits for the topic to exist.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import kafka_clients
from streams.readers import follower, open_reader, poll
from streams.settings import QUIET_INPUT

log = logging.getLogger(__name__)

#: How often a mirror looks again for a changelog that does not exist yet.
TOPIC_WAIT_S = 1.0


class TableMirror:
    """The rows of one changelog topic, as the owning service last wrote them."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._rows: dict[str, Any] = {}
        self._ends: dict[TopicPartition, int] | None = None  # None once caught up
        self.caught_up = False

    @property
    def rows(self) -> dict[str, Any] | None:
        """Every key's latest row, or None while the log is not read up to its end at opening."""
        return self._rows if self.caught_up else None

    def apply(self, key: bytes | None, value: bytes | None) -> bool:
        """Take one changelog record; True when a row changed (an undecodable one is skipped)."""
        try:
            name = json.loads(key) if key is not None else None
            row = json.loads(value) if value else None
        except ValueError:
            log.debug("%s: a record that is not JSON; skipped", self.topic)
            return False
        if not isinstance(name, str):
            return False
        if row is None:
            return self._rows.pop(name, None) is not None
        if self._rows.get(name) == row:
            return False
        self._rows[name] = row
        return True

    async def open(self, bootstrap: str) -> AIOKafkaConsumer:
        """A reader at the log's beginning, once the topic exists; notes where the log ends now."""
        while True:
            reader = await open_reader(bootstrap, [self.topic], fetch_wait_ms=QUIET_INPUT.wait_ms, from_end=False,
                                       fetch_min_bytes=QUIET_INPUT.min_bytes)
            if reader.partitions_for_topic(self.topic):
                break
            await reader.stop()
            await asyncio.sleep(TOPIC_WAIT_S)
        partitions = list(reader.assignment())
        self._ends = await kafka_clients.log_ends(reader, partitions)
        await self.check_caught_up(reader)
        return reader

    async def check_caught_up(self, reader: AIOKafkaConsumer) -> bool:
        """True (from now on) once every partition is read up to its end at opening."""
        if not self.caught_up and self._ends is not None:
            positions = {tp: await reader.position(tp) for tp in self._ends}
            if all(positions[tp] >= end for tp, end in self._ends.items()):
                self.caught_up, self._ends = True, None
                log.info("%s: %d rows read; following", self.topic, len(self._rows))
        return self.caught_up


def follow(mirror: TableMirror, bootstrap: str, on_change: Callable[[], None]) -> "asyncio.Task[None]":
    """Follow ``mirror``'s changelog in the background; ``on_change`` when a row changed or the mirror caught up."""

    async def run() -> None:
        reader = await mirror.open(bootstrap)
        if mirror.caught_up:
            on_change()
        broker = follower(mirror.topic)
        try:
            while True:
                batches = await poll(reader, QUIET_INPUT.wait_ms * 2, broker)
                was = mirror.caught_up
                changed = [mirror.apply(m.key, m.value) for messages in batches.values() for m in messages]  # every one, no short cut
                if (any(changed) and was) or (await mirror.check_caught_up(reader) and not was):
                    on_change()
        finally:
            await reader.stop()

    return asyncio.ensure_future(run())
