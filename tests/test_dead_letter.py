"""A message that fails to decode is counted, logged with its offset, dead-lettered; the agent goes on."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from heater.runtime.broker import EmbeddedBroker
from heater.runtime.vault import EmbeddedVault
from streams.codec import MAX_MESSAGE_BYTES
from streams.records import Alarm
from tests.support import ServiceProcess, consume_until, metric, produce, run, wait_for


@pytest.fixture
def alarms(broker: EmbeddedBroker, vault: EmbeddedVault, run_dir: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess("alarms", broker.url, run_dir, vault=vault).start()  # its views verify the session Vault's tokens
    service.wait_ready()
    yield service
    service.stop()


def test_bad_messages_are_dead_lettered_and_good_ones_still_flow(broker: EmbeddedBroker, alarms: ServiceProcess) -> None:
    tag = uuid.uuid4().hex
    good = Alarm(alarm_id=f"test/{tag}", source="test", code=tag, severity="WARNING", message="ok", raised_at=time.time())
    valid = json.loads(good.dumps())
    bad = {
        "malformed": f'{{"not json {tag}'.encode(),
        "schema_version": json.dumps({**valid, "alarm_id": f"v2/{tag}", "schema_version": 2}).encode(),
        "oversized": json.dumps({**valid, "alarm_id": f"big/{tag}", "message": "x" * MAX_MESSAGE_BYTES}).encode(),
    }
    before = {reason: metric(alarms, "heater_messages_rejected_total", service="alarms", topic="createAlarm", reason=reason) for reason in bad}
    run(produce(broker.bootstrap, "createAlarm", [*bad.values(), good.dumps()]))

    def mine(messages: list) -> list:
        return [m for m in messages if tag.encode() in m.value]

    letters = mine(run(consume_until(broker.bootstrap, "deadLetter", lambda ms: len(mine(ms)) >= 3)))
    by_reason = {dict(m.headers)["reason"].decode(): m for m in letters}
    assert set(by_reason) == set(bad)
    for reason, message in by_reason.items():
        headers = dict(message.headers)
        assert message.value == bad[reason], "the original bytes are kept, nothing is lost"
        assert headers["source-topic"] == b"createAlarm"
        assert int(headers["source-offset"]) >= 0
        assert headers["service"] == b"alarms"
        after = metric(alarms, "heater_messages_rejected_total", service="alarms", topic="createAlarm", reason=reason)
        assert after == before[reason] + 1

    status, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(alarms.get(f"/alarm?id=test/{tag}")), what="good alarm stored")
    assert body["active"] and body["alarm"]["message"] == "ok"
    assert alarms.get("/readyz")[0] == 200
    log = alarms.log_path.read_text()
    assert "dead-lettered createAlarm[0]@" in log
