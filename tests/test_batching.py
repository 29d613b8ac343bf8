"""``take_batches``: a lone event goes at once; while events keep coming, a batch waits for more.

Run on a Faust in-memory channel (the same stream buffering a topic's stream uses).
``within`` is half a second here so that "at once" and "waited" cannot be confused on a
busy machine.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust

from streams.batching import take_batches

WITHIN_S = 0.5


async def scenario() -> list[tuple[list[int], float]]:
    """Each batch's values and how long after its first value was sent it was handed over."""
    app = faust.App("test-batching", autodiscover=False, store="memory://")
    app.flow_control.resume()  # a running worker resumes it; a channel's sends wait for that
    channel: Any = app.channel()
    stream = channel.stream()
    batches: list[tuple[list[int], float]] = []
    sent_at: dict[int, float] = {}

    async def send(value: int) -> None:
        sent_at[value] = time.monotonic()
        await channel.send(value=value)

    async def consume() -> None:
        async for events in take_batches(stream, 3, WITHIN_S):
            values = [e.value for e in events]
            batches.append((values, time.monotonic() - sent_at[values[0]]))

    consumer = asyncio.ensure_future(consume())
    await send(1)  # alone after a pause
    await asyncio.sleep(WITHIN_S * 2)
    await send(2)  # alone again
    await asyncio.sleep(0.05)
    await send(3)  # right after the batch before: events keep coming, so it waits
    await asyncio.sleep(0.05)
    await send(4)
    await asyncio.sleep(WITHIN_S * 2)
    await send(5)  # alone after a batch of two and a pause
    await asyncio.sleep(WITHIN_S * 2)
    for value in (6, 7, 8, 9):  # more than a batch holds: a full batch goes without waiting
        await send(value)
    await asyncio.sleep(WITHIN_S * 2)
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    return batches


def test_a_lone_event_is_handed_over_at_once_and_a_flowing_stream_is_batched() -> None:
    batches = asyncio.run(asyncio.wait_for(scenario(), 30))
    values = [b for b, _ in batches]
    assert values[:4] == [[1], [2], [3, 4], [5]], batches
    assert [v for b in values for v in b] == list(range(1, 10)), batches
    lone = [batches[0][1], batches[1][1], batches[3][1]]
    assert all(waited < WITHIN_S / 2 for waited in lone), f"a lone event waited: {batches}"
    assert batches[2][1] >= WITHIN_S * 0.9, f"a batch in a flowing stream did not wait for more: {batches}"
    assert [6, 7, 8] in values, f"a full batch was not handed over as one: {batches}"
