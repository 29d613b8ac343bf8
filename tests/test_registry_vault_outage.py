"""StateRegistry while its real Vault goes away at run time, on a real broker.

The allowed list is the secret the registry reads at run time. While Vault is away the
last good list stays in force (a beat from an allowed service is still accepted, not
judged a stranger), the Vault dependency's alarm is raised once, and it is cleared when
Vault answers again (the next refresh is the breaker's probe).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from heater.runtime.broker import EmbeddedBroker
from heater.runtime.vault import EmbeddedVault
from streams.agents.registry import ALLOWLIST_REFRESH_S
from streams.records import Heartbeat
from tests.support import ServiceProcess, consume_until, produce, run, wait_for

ALARM_ID = b'"registry/vault-unavailable"'
#: A refresh, its attempts and backoff, and the alarm's trip through the broker.
ALARM_WITHIN_S = ALLOWLIST_REFRESH_S + 20



def beat(service: str) -> bytes:
    return Heartbeat(service=service, instance=f"{service}-1", phase="ready", at=time.time(), identity=service).dumps()


def carrying(broker: EmbeddedBroker, topic: str, needle: bytes, timeout: float) -> list[Any]:
    """The messages of ``topic`` carrying ``needle``, once there is one."""
    messages = run(consume_until(broker.bootstrap, topic, lambda ms: any(needle in (m.value or b"") for m in ms), timeout))
    return [m for m in messages if needle in (m.value or b"")]


def test_vault_away_keeps_the_last_allowed_list_with_an_alarm_until_it_is_back(
    own_broker: EmbeddedBroker, run_dir: Path
) -> None:
    with EmbeddedVault(run_dir / "own-vault") as own_vault:
        registry = ServiceProcess("registry", own_broker.url, run_dir, vault=own_vault).start()
        try:
            registry.wait_ready(60)
            allowed = registry.get("/registry")[1]["allowed"]
            assert "can" in allowed

            own_vault.stop()
            assert len(carrying(own_broker, "createAlarm", ALARM_ID, ALARM_WITHIN_S)) == 1

            run(produce(own_broker.bootstrap, "heartbeats", [beat("can")], key=b"can"))
            view = wait_for(lambda: (v := registry.get("/registry")[1]) and "can" in v["services"] and v, 20, 0.3,
                            "the beat of an allowed service accepted while Vault is away")
            assert view["allowed"] == allowed, "the last good list stays in force"
            assert view["strangers"] == [], "nobody judged a stranger for lack of a list"
            assert registry.get("/readyz")[0] == 200

            own_vault.start()
            carrying(own_broker, "deleteAlarm", ALARM_ID, ALARM_WITHIN_S)
            time.sleep(ALLOWLIST_REFRESH_S + 1)  # one more refresh, answered: no second raise, no second clear
            assert len(carrying(own_broker, "createAlarm", ALARM_ID, 5)) == 1, "raised once for one outage"
            assert len(carrying(own_broker, "deleteAlarm", ALARM_ID, 5)) == 1, "cleared once"
            assert registry.get("/readyz")[0] == 200
        finally:
            registry.stop()
