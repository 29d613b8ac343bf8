"""FATAL: the platform latches, the power cut-off is commanded, only a verified reset releases it.

Runs on its own broker: the latch is platform-wide and would halt other tests' services.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from heater.runtime.broker import EmbeddedBroker
from heater.runtime.vault import EmbeddedVault
from streams.records import Alarm, AlarmClear, OperatorReset
from tests.support import ServiceProcess, consume_until, post_json, produce, run, try_get, wait_for

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def fatal_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path_factory.mktemp("fatal-broker")) as running:
        yield running


@pytest.fixture(scope="module")
def alarms(fatal_broker: EmbeddedBroker, vault: EmbeddedVault, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = ServiceProcess("alarms", fatal_broker.url, tmp_path_factory.mktemp("alarms"), vault=vault).start()
    service.wait_ready()
    yield service
    service.stop()


def latch(alarms: ServiceProcess) -> dict:
    return alarms.get("/latch")[1]


def active_codes(alarms: ServiceProcess) -> set[str]:
    return {a["alarm"]["code"] for a in alarms.get("/alarms")[1]["alarms"]}


def test_fatal_latches_cuts_power_and_only_a_verified_reset_releases(fatal_broker: EmbeddedBroker, alarms: ServiceProcess) -> None:
    tag = uuid.uuid4().hex[:8]
    fatal = Alarm(alarm_id=f"bank/overtemp-{tag}", source="bank", code=f"overtemp-{tag}", severity="FATAL",
                  message="water 97 C", raised_at=time.time())
    run(produce(fatal_broker.bootstrap, "createAlarm", [fatal.dumps()], key=fatal.alarm_id.encode()))

    # The power cut-off command is on I2CHeating.
    def cutoffs(messages: list) -> list:
        return [m for m in messages if json.loads(m.value)["action"] == "cutoff" and tag in json.loads(m.value)["reason"]]

    assert cutoffs(run(consume_until(fatal_broker.bootstrap, "I2CHeating", lambda ms: bool(cutoffs(ms)))))
    wait_for(lambda: latch(alarms).get("latched"), what="latched")
    assert latch(alarms)["alarm_id"] == fatal.alarm_id

    # AlarmsServer shows state: up, read-only, not ready; its views still answer.
    status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(alarms.get("/readyz")), what="halted")
    assert body["phase"] == "halted" and fatal.alarm_id in body["reason"]
    assert alarms.get("/healthz")[0] == 200
    assert f"overtemp-{tag}" in active_codes(alarms)

    # deleteAlarm cannot clear a FATAL alarm.
    clear = AlarmClear(alarm_id=fatal.alarm_id, cleared_by="bank", cleared_at=time.time())
    run(produce(fatal_broker.bootstrap, "deleteAlarm", [clear.dumps()], key=fatal.alarm_id.encode()))
    entry = wait_for(lambda: (lambda e: e if e.get("refused_clears") else None)(alarms.get(f"/alarm?id={fatal.alarm_id}")[1]), what="refused")
    assert entry["active"] is True

    # A forged reset record on the topic is refused (bad signature).
    forged = OperatorReset(reset_id=f"forged-{tag}", operator="mallory", nonce=uuid.uuid4().hex, issued_at=time.time(),
                           signature="vault:v1:" + "A" * 88)
    run(produce(fatal_broker.bootstrap, "operatorReset", [forged.dumps()]))
    wait_for(lambda: "reset-refused" in active_codes(alarms), what="forged reset refused")
    assert latch(alarms)["latched"] is True

    # The operator reset names what GET /latch shows: the occurrence, and the Pico's trip count.
    shown = latch(alarms)
    assert list(shown["occurrences"]) == [fatal.occurrence_id] and shown["occurrences"][fatal.occurrence_id]["reason"] == "water 97 C"
    status, answer = post_json(alarms.url + "/reset", {"occurrences": [], "trip_count": shown["trip_count"]},
                               token=alarms.token("operator", "alice"))
    assert status == 409 and answer["occurrences"] == [fatal.occurrence_id], "a reset for something other than what latches"
    status, issued = reset_as_shown(alarms, "alice")
    assert status == 202 and issued["occurrences"] == [fatal.occurrence_id], issued
    wait_for(lambda: latch(alarms).get("latched") is False, what="released")
    assert latch(alarms)["changed_by"] == "alice" and latch(alarms)["released"] == {fatal.occurrence_id: issued["reset_id"]}
    wait_for(lambda: alarms.get("/readyz")[0] == 200, what="ready again")

    # History keeps the FATAL alarm, inactive, released by the operator.
    entry = alarms.get(f"/alarm?id={fatal.alarm_id}")[1]
    assert entry["active"] is False and entry["cleared_by"] == "alice" and entry["alarm"]["severity"] == "FATAL"

    # Replaying the very same signed reset record is refused (one-time nonce).
    def resets(messages: list) -> list:
        return [m for m in messages if json.loads(m.value)["reset_id"] == issued["reset_id"]]

    (record,) = resets(run(consume_until(fatal_broker.bootstrap, "operatorReset", lambda ms: bool(resets(ms)))))
    run(produce(fatal_broker.bootstrap, "operatorReset", [record.value]))
    wait_for(
        lambda: any(a["alarm"]["alarm_id"] == f"alarms/reset-refused/{issued['reset_id']}" for a in alarms.get("/alarms")[1]["alarms"]),
        what="replayed reset refused",
    )

    # The released occurrence delivered again (a service restarted, deciding the same input
    # again) is kept in history and does not latch: a marker sent after it shows it was read.
    marker = Alarm(alarm_id=f"test/marker-{tag}", source="test", code=f"marker-{tag}", severity="WARNING",
                   message="after the replay", raised_at=time.time())
    run(produce(fatal_broker.bootstrap, "createAlarm", [fatal.dumps(), marker.dumps()], key=fatal.alarm_id.encode()))
    wait_for(lambda: alarms.get(f"/alarm?id={marker.alarm_id}")[0] == 200, what="marker recorded")
    assert latch(alarms)["latched"] is False and alarms.get("/readyz")[0] == 200

    # A FATAL raised a second before the reset was issued and delivered after it (a service
    # running behind) was named by no reset: it latches, whatever its timestamp.
    late = Alarm(alarm_id=f"bank/overtemp-late-{tag}", source="bank", code=f"overtemp-late-{tag}", severity="FATAL",
                 message="water 97 C (decided late)", raised_at=issued["issued_at"] - 1.0)
    run(produce(fatal_broker.bootstrap, "createAlarm", [late.dumps()], key=late.alarm_id.encode()))
    wait_for(lambda: latch(alarms).get("latched"), what="latched by the late FATAL")
    assert list(latch(alarms)["occurrences"]) == [late.occurrence_id]
    assert alarms.get(f"/alarm?id={late.alarm_id}")[1]["active"] is True
    status, again = reset_as_shown(alarms, "alice")
    assert status == 202 and again["occurrences"] == [late.occurrence_id], again
    wait_for(lambda: latch(alarms).get("latched") is False, what="released again")


def reset_as_shown(alarms: ServiceProcess, operator: str) -> tuple[int, dict]:
    """The operator's reset, with the operator's token: what ``GET /latch`` shows, named back."""
    shown = latch(alarms)
    return post_json(alarms.url + "/reset", {"occurrences": sorted(shown.get("occurrences") or {}),
                                             "trip_count": shown.get("trip_count")}, token=alarms.token("operator", operator))


def test_reset_endpoint_refuses_bad_requests(alarms: ServiceProcess) -> None:
    alice = alarms.token("operator", "alice")
    assert post_json(alarms.url + "/reset", {"occurrences": []})[0] == 401, "no token, no reset"
    assert post_json(alarms.url + "/reset", {"occurrences": []}, token=alarms.token("viewer", "alice"))[0] == 403
    assert post_json(alarms.url + "/reset", {"who": "alice"}, token=alice)[0] == 400
    assert post_json(alarms.url + "/reset", {"occurrences": "all"}, token=alice)[0] == 400
    assert post_json(alarms.url + "/reset", {"occurrences": [], "trip_count": True}, token=alice)[0] == 400
    assert post_json(alarms.url + "/reset", {"occurrences": []}, token=alice)[0] == 409, "nothing to reset"


def test_a_service_that_came_up_halted_starts_in_the_same_process_on_the_reset(
        fatal_broker: EmbeddedBroker, alarms: ServiceProcess, vault: EmbeddedVault, tmp_path: Path) -> None:
    """Under Kubernetes a pod restarted after FATAL comes up halted; the reset must not wait
    for another container start (and the restart back-off) before it is working again."""
    tag = uuid.uuid4().hex[:8]
    fatal = Alarm(alarm_id=f"test/fatal-{tag}", source="test", code=f"fatal-{tag}", severity="FATAL",
                  message="injected", raised_at=time.time())
    run(produce(fatal_broker.bootstrap, "createAlarm", [fatal.dumps()], key=fatal.alarm_id.encode()))
    wait_for(lambda: latch(alarms).get("latched"), what="latched")
    bank = ServiceProcess("bank", fatal_broker.url, tmp_path / "bank", vault=vault).start()
    try:
        status = wait_for(lambda: try_get(bank.probe_url + "/readyz"), timeout=30, what="the bank answers")
        assert status[0] == 503 and status[1]["phase"] == "halted"
        released_at = time.monotonic()
        code, issued = reset_as_shown(alarms, "alice")
        assert code == 202 and issued["occurrences"] == [fatal.occurrence_id], issued
        wait_for(lambda: (try_get(bank.probe_url + "/readyz") or (0,))[0] == 200 or bank.proc.poll() is not None,
                 timeout=30, what="the bank ready or gone")
        assert bank.proc.poll() is None, f"the halted bank exited on the reset:\n{bank.tail()}"
        assert bank.get("/bank")[0] == 200
        log.warning("halted bank: reset issued → ready in the same process in %.2f s", time.monotonic() - released_at)
    finally:
        bank.stop()
