"""A restarted worker takes its dead predecessor out of the consumer group (``streams.group_member``).

On the session's broker: a member in a process of its own joins a group with a 10 s session
and is killed with -9. Its record in the data directory is what the next start uses: the
broker lists the dead member until LeaveGroup is sent in its name, and not after.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient

from heater.runtime.broker import EmbeddedBroker
from streams import group_member
from tests.support import create_topic

REPO = Path(__file__).resolve().parents[1]

MEMBER = """
import asyncio, sys
from pathlib import Path
from aiokafka import AIOKafkaConsumer
from streams import group_member

async def main(bootstrap, topic, group, datadir):
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, session_timeout_ms=10000,
                                heartbeat_interval_ms=1000)
    await consumer.start()
    while not consumer.assignment():
        await asyncio.sleep(0.01)
    group_member.record(Path(datadir), group, consumer._coordinator.member_id)
    print(consumer._coordinator.member_id, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


async def members(bootstrap: str, group: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (description,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    return [member[0] for member in description.groups[0][5]]


@pytest.fixture
async def dead_member(broker: EmbeddedBroker, tmp_path: Path) -> tuple[str, str]:
    """A member of a fresh group, killed with -9 once it had its partition: (group, its member id)."""
    topic, group = f"member-{uuid.uuid4().hex[:8]}", f"member-{uuid.uuid4().hex[:8]}"
    await create_topic(broker.bootstrap, topic)
    script = tmp_path / "member.py"
    script.write_text(MEMBER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), broker.bootstrap, topic, group, str(tmp_path / "data"),
        stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert proc.stdout is not None
        member_id = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert member_id
    return group, member_id


async def client_of(broker: EmbeddedBroker) -> AIOKafkaClient:
    client = AIOKafkaClient(bootstrap_servers=broker.bootstrap)
    await client.bootstrap()
    return client


async def test_the_dead_predecessor_is_taken_out_of_the_group(
    broker: EmbeddedBroker, tmp_path: Path, dead_member: tuple[str, str]
) -> None:
    group, member_id = dead_member
    assert await members(broker.bootstrap, group) == [member_id]  # its 10 s session keeps it listed

    client = await client_of(broker)
    try:
        assert await group_member.leave_for_predecessor(client, group, tmp_path / "data") is True
    finally:
        await client.close()
    assert await members(broker.bootstrap, group) == []


async def test_a_predecessor_that_is_gone_or_unknown_changes_nothing(
    broker: EmbeddedBroker, tmp_path: Path, dead_member: tuple[str, str]
) -> None:
    group, member_id = dead_member
    client = await client_of(broker)
    try:
        assert await group_member.leave_for_predecessor(client, group, tmp_path / "data") is True
        # the next start finds the same record of a member that has left already: harmless
        await group_member.leave_for_predecessor(client, group, tmp_path / "data")
        assert await members(broker.bootstrap, group) == []
        # nothing recorded, or recorded for another group: nothing is sent
        assert await group_member.leave_for_predecessor(client, group, tmp_path / "elsewhere") is False
        assert await group_member.leave_for_predecessor(client, "another-group", tmp_path / "data") is False
    finally:
        await client.close()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / group_member.MEMBER_FILE).write_text("{not json")
    assert group_member.recorded(tmp_path / "broken", group) is None
    assert json.loads((tmp_path / "data" / group_member.MEMBER_FILE).read_text())["member_id"] == member_id
