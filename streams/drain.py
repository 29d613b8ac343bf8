"""Faust's message drain, without four tasks per message.

Faust's consumer hands every fetched message to the app as
``await self.wait_first(callback(message), self.suspend_flow.wait())``: four tasks per
message (the callback, the flow, the consumer's stop and crash events), three of them
cancelled again. Measured on the bank at 9,000 readings/s, that call alone was 13 % of
the worker's CPU, and the bank decided 4,456 readings/s.

The callback (the conductor putting the event on its streams' queues) nearly always
finishes without waiting. :class:`EagerDrain` runs it up to its first wait in the drain
loop itself; only a callback that has to wait (a full stream buffer, flow suspended by a
rebalance) is raced against the flow and the consumer's stop, as Faust does. Everything
else is Faust 0.15.3's ``Consumer._drain_messages`` unchanged. Both profiles use it.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Coroutine, Generator, cast

from faust.transport.consumer import CONSUMER_FETCHING, Consumer
from mode import Service, ServiceT


class _Rest:
    """The rest of a coroutine that has already run up to its first wait (what ``yield from`` does)."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro, self._yielded = coro, yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation or an error thrown in: the coroutine handles it
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def run_eagerly(coro: Coroutine[Any, Any, Any]) -> Awaitable[Any] | None:
    """Run ``coro`` in the calling task up to its first wait: None if it finished, else what is left of it."""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return _Rest(coro, yielded)


class EagerDrain(Consumer):
    """A Faust consumer whose drain loop runs each message's callback eagerly (:func:`run_eagerly`)."""

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover - the worker's hot loop
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = cast(AsyncIterator, getmany(timeout=1.0))
                # getmany can return at once many times in a row: give the loop a turn
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset:
                                if acks_enabled_for(message.topic):
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            rest = run_eagerly(callback(message))
                            if rest is not None:
                                await self.wait_first(rest, self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)
