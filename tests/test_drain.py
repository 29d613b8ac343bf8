"""The eager drain (``streams.drain``): each message's callback runs in the drain loop itself.

The coroutine stepping is checked in plain asyncio; then a Faust worker on the session's
broker whose stream buffer holds two events, behind an agent that pauses on each, so that
nearly every callback has to wait (the slow path): every message must arrive once, in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import faust
import pytest

from heater.runtime.broker import EmbeddedBroker
from streams import transport
from streams.drain import EagerDrain, run_eagerly
from tests.support import create_topic, produce

REPO = Path(__file__).resolve().parents[1]
MESSAGES = 300

WORKER = """
import asyncio, json, os
import faust
from streams import drain
from streams.transport import register

waited = 0
eagerly = drain.run_eagerly


def counting(coro):
    global waited
    rest = eagerly(coro)
    waited += rest is not None
    return rest


drain.run_eagerly = counting
register()
app = faust.App(os.environ["APP_ID"], broker=os.environ["BROKER"], datadir=os.environ["DATADIR"], web_enabled=False,
                topic_partitions=1,
                stream_buffer_maxsize=2, broker_session_timeout=2, broker_heartbeat_interval=0.5)
topic = app.topic(os.environ["TOPIC"], value_serializer="raw")
seen = []


@app.agent(topic)
async def collect(stream):
    async for value in stream:
        seen.append(int(value))
        await asyncio.sleep(0.001)
        if len(seen) == int(os.environ["N"]):
            with open(os.environ["RESULT"], "w") as f:
                json.dump({"seen": seen, "waited": waited}, f)
            os._exit(0)

app.main()
"""


async def test_a_callback_that_does_not_wait_runs_to_its_end_in_the_caller() -> None:
    done: list[str] = []

    async def callback() -> None:
        done.append("put")

    assert run_eagerly(callback()) is None
    assert done == ["put"]


async def test_a_callback_that_waits_goes_on_from_where_it_stopped() -> None:
    gate = asyncio.Event()
    steps: list[str] = []

    async def callback() -> str:
        steps.append("before")
        await gate.wait()
        steps.append("after")
        return "delivered"

    rest = run_eagerly(callback())
    assert rest is not None and steps == ["before"]  # ran up to its wait, and only once
    task = asyncio.ensure_future(rest)
    await asyncio.sleep(0.01)
    assert not task.done()
    gate.set()
    assert await task == "delivered"
    assert steps == ["before", "after"]


async def test_a_waiting_callback_sees_the_cancellation_and_its_errors_come_out() -> None:
    cleaned: list[str] = []

    async def waits_forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("finally")

    rest = run_eagerly(waits_forever())
    assert rest is not None
    task = asyncio.ensure_future(rest)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"]

    async def fails_after_a_wait() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad message")

    rest = run_eagerly(fails_after_a_wait())
    assert rest is not None
    with pytest.raises(ValueError, match="bad message"):
        await rest


def test_both_profiles_use_the_eager_drain() -> None:
    transport.register()
    for url in ("kafka://127.0.0.1:9092", "tansu://127.0.0.1:9092"):
        app = faust.App(f"drain-{uuid.uuid4().hex[:6]}", broker=url)
        assert issubclass(app.transport.Consumer, EagerDrain), url


async def test_every_message_arrives_once_in_order_when_the_stream_buffer_is_full(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = f"drain-{uuid.uuid4().hex[:8]}"
    await create_topic(broker.bootstrap, topic)
    await produce(broker.bootstrap, topic, [str(i).encode() for i in range(MESSAGES)])

    script, result = tmp_path / "worker.py", tmp_path / "result.json"
    script.write_text(WORKER)
    env = dict(os.environ, APP_ID=f"drain-{uuid.uuid4().hex[:8]}", BROKER=f"tansu://{broker.bootstrap}",
               TOPIC=topic, N=str(MESSAGES), DATADIR=str(tmp_path / "data"), RESULT=str(result), PYTHONPATH=str(REPO))
    with open(tmp_path / "worker.log", "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), "worker", "--without-web", "-l", "warn",
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            await asyncio.wait_for(proc.wait(), 90)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert result.exists(), (tmp_path / "worker.log").read_text()[-3000:]
    outcome = json.loads(result.read_text())
    assert outcome["seen"] == list(range(MESSAGES))
    assert outcome["waited"] > 0, "no callback had to wait: the slow path was not exercised"
