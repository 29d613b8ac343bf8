"""The broker's log identity on the real broker: unknown from the moment the broker goes, a new
one once it is back, without waiting for the next poll."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from heater.runtime.broker import EmbeddedBroker
from streams.log_identity import LogIdentity


async def test_a_broker_that_starts_over_is_unknown_at_once_and_then_a_new_log(run_dir: Path) -> None:
    first = await asyncio.to_thread(EmbeddedBroker(run_dir / "first").start)
    identity = LogIdentity(first.bootstrap, poll_s=60.0)  # a poll cannot be what notices
    try:
        old = await asyncio.wait_for(identity.verified(), 10)
        await asyncio.to_thread(first.stop)
        went = time.monotonic()
        while identity.current is not None:
            assert time.monotonic() - went < 2.0, "the identity stayed known after the broker went"
            await asyncio.sleep(0.01)
        second = await asyncio.to_thread(EmbeddedBroker(run_dir / "second", port=first.port).start)
        try:
            new = await asyncio.wait_for(identity.verified(), 10)
            assert new != old, "a broker that started over counts a new log"
        finally:
            second.stop()
    finally:
        first.stop()
        assert identity._task is not None
        identity._task.cancel()
