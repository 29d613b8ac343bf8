"""Batches of a Faust stream's events that wait only once something has arrived.

Faust's ``Stream.take_events(max_, within)`` wakes every ``within`` seconds, input or not:
with the few milliseconds a FATAL reading may wait, that is hundreds of wake-ups a
second on an idle service (measured: the bank's idle CPU 8.9 → 14.1 % of a core at 2 ms).
:func:`take_batches` is the same buffering (Faust's own passive processor; events acked
once the batch is handled), but it sleeps until the first event of a batch arrives and
only then waits at most ``within`` for the batch to fill: no wake-ups while idle, and no
event delayed by more than ``within``.

It waits only while events keep coming: when this batch's first event came within
``within`` of the end of the batch before (under load the next event is already queued
when a batch ends). An event that arrives after a pause (a FATAL reading on a quiet bus)
is handed over at once.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncGenerator, Sequence

from faust.types import EventT, StreamT
from mode.utils.aiter import aiter
from mode.utils.futures import notify


async def take_batches(stream: StreamT, max_: int, within: float) -> AsyncGenerator[Sequence[EventT], None]:
    """Lists of at most ``max_`` events: what arrived within ``within`` seconds of a batch's first event."""
    s: Any = stream  # Faust's private buffering parts, as take_events uses them
    events: list[EventT] = []
    nonempty = asyncio.Event()
    full = asyncio.Event()
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None
    enable_acks = s.enable_acks
    last_end = float("-inf")

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming
        try:
            if consuming is not None:
                try:
                    await consuming
                finally:
                    consuming = None
            event = s.current_event
            if event is None:
                raise RuntimeError("batch buffer found current_event is None")
            events.append(event)
            nonempty.set()
            if len(events) >= max_:
                full.set()
                consumed.clear()
                await s.wait(consumed)
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:
            s.log.exception("Error adding to batch buffer: %r", exc)
            await s.crash(exc)
        return value

    s.enable_acks = False  # acked below, once the batch is handled
    s.add_processor(add_to_buffer)
    s._enable_passive(aiter(s.channel))
    try:
        while not s.should_stop:
            await s.wait_for_stopped(nonempty)
            flowing = s.loop.time() - last_end < within
            if full.is_set():
                pass
            elif within > 0 and flowing:
                await s.wait_for_stopped(full, timeout=within)
            else:  # one turn of the loop: the drainer adds what is already queued, nothing waits for more
                await asyncio.sleep(0)
            if not events:
                nonempty.clear()
                continue
            consuming = s.loop.create_future()
            try:
                yield list(events)
            finally:
                batch, events[:] = list(events), []
                for event in batch:
                    await s.ack(event)
                nonempty.clear()
                full.clear()
                notify(consuming)
                consumed.set()
                last_end = s.loop.time()
    finally:
        s.enable_acks = enable_acks
        s._processors.remove(add_to_buffer)
