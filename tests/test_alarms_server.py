"""AlarmsServer on the real broker: lifecycle, history, views, and crash safety."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from heater.runtime.broker import EmbeddedBroker
from heater.runtime.vault import EmbeddedVault
from streams.alarm_book import AlarmBook
from streams.records import Alarm, AlarmClear
from tests.support import Occurrences, ServiceProcess, produce, run, wait_for, wait_for_history


@pytest.fixture
def alarms(broker: EmbeddedBroker, vault: EmbeddedVault, run_dir: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess("alarms", broker.url, run_dir, vault=vault).start()
    service.wait_ready()
    yield service
    service.stop()


def raised(source: str, code: str, at: float, severity: str = "WARNING") -> Alarm:
    return Alarm(alarm_id=f"{source}/{code}", source=source, code=code, severity=severity, message=f"{code} at {at}", raised_at=at)


def cleared(source: str, code: str, at: float, by: str = "test") -> AlarmClear:
    return AlarmClear(alarm_id=f"{source}/{code}", cleared_by=by, cleared_at=at)


def send(broker: EmbeddedBroker, records: list[Alarm | AlarmClear]) -> None:
    for record in records:
        topic = "createAlarm" if isinstance(record, Alarm) else "deleteAlarm"
        run(produce(broker.bootstrap, topic, [record.dumps()]))


def history(service: ServiceProcess, source: str) -> list[dict]:
    entries: list[dict] = []
    while True:
        status, body = service.get(f"/alarms/history?source={source}&limit=1000&offset={len(entries)}")
        assert status == 200, body
        entries.extend(body["alarms"])
        if len(entries) >= body["total"]:
            return entries


def test_raise_list_clear_and_history(broker: EmbeddedBroker, alarms: ServiceProcess) -> None:
    source = f"t{uuid.uuid4().hex[:8]}"
    t0 = time.time()
    send(broker, [raised(source, "overtemp", t0), raised(source, "overtemp", t0)])  # the same alarm twice
    wait_for(lambda: any(a["alarm"]["source"] == source for a in alarms.get("/alarms")[1]["alarms"]), what="listed")
    send(broker, [cleared(source, "overtemp", t0 + 1, by="bank")])
    entry = wait_for(lambda: (lambda b: b if not b.get("active", True) else None)(alarms.get(f"/alarm?id={source}/overtemp")[1]), what="cleared")
    assert entry["cleared_by"] == "bank" and entry["cleared_at"] == pytest.approx(t0 + 1)
    assert not any(a["alarm"]["source"] == source for a in alarms.get("/alarms")[1]["alarms"])
    assert len(history(alarms, source)) == 1, "raised twice, recorded once"


def test_clear_of_unknown_alarm_is_recorded_not_a_crash(broker: EmbeddedBroker, alarms: ServiceProcess) -> None:
    source = f"t{uuid.uuid4().hex[:8]}"
    t0 = time.time()
    send(broker, [cleared(source, "ghost", t0 + 5)])
    send(broker, [raised(source, "ghost", t0)])  # the raise it belonged to arrives late
    entry = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(alarms.get(f"/alarm?id={source}/ghost")), what="late raise")
    assert entry["active"] is False and entry["cleared_at"] == pytest.approx(t0 + 5)
    assert alarms.get("/readyz")[0] == 200


def test_history_filters_and_pages(broker: EmbeddedBroker, alarms: ServiceProcess) -> None:
    source = f"t{uuid.uuid4().hex[:8]}"
    t0 = time.time()
    severities = ["INFO", "WARNING", "CRITICAL", "CRITICAL", "WARNING"]
    send(broker, [raised(source, f"c{i}", t0 + i, sev) for i, sev in enumerate(severities)])
    wait_for(lambda: len(history(alarms, source)) == 5, what="five alarms")
    status, body = alarms.get(f"/alarms/history?source={source}&severity=CRITICAL")
    assert [a["alarm"]["code"] for a in body["alarms"]] == ["c2", "c3"]
    status, body = alarms.get(f"/alarms/history?source={source}&limit=2&offset=2")
    assert body["total"] == 5 and [a["alarm"]["code"] for a in body["alarms"]] == ["c2", "c3"]
    status, body = alarms.get(f"/alarms/history?source={source}&since={t0 + 3.5}")
    assert [a["alarm"]["code"] for a in body["alarms"]] == ["c4"]
    assert alarms.get("/alarms/history?limit=many")[0] == 400


def test_kill_9_under_load_loses_and_doubles_nothing(vault: EmbeddedVault, run_dir: Path) -> None:
    """5,000 raises and clears; the worker is killed -9 midway and restarted with its data.

    A broker of its own: each run starts from empty logs, as a proof run many times in a row must."""
    with EmbeddedBroker(run_dir / "broker") as broker:
        kill_9_under_load(broker, vault, run_dir)


def kill_9_under_load(broker: EmbeddedBroker, vault: EmbeddedVault, run_dir: Path) -> None:
    source = f"crash{uuid.uuid4().hex[:6]}"
    rng = random.Random(5)
    t0 = time.time()
    events: list[Alarm | AlarmClear] = []
    for i in range(5000):
        code = f"c{rng.randrange(400)}"
        at = t0 + i * 0.001
        events.append(raised(source, code, at) if rng.random() < 0.55 else cleared(source, code, at))
    expected = AlarmBook({}, {}, {})
    for event in events:
        expected.apply(event)

    service = ServiceProcess("alarms", broker.url, run_dir, vault=vault).start()
    service.wait_ready()
    raises = [e.dumps() for e in events if isinstance(e, Alarm)]
    clears = [e.dumps() for e in events if isinstance(e, AlarmClear)]

    async def load() -> None:
        import asyncio

        for start in range(0, 5000, 500):
            chunk = events[start : start + 500]
            await asyncio.gather(
                produce(broker.bootstrap, "createAlarm", [e.dumps() for e in chunk if isinstance(e, Alarm)]),
                produce(broker.bootstrap, "deleteAlarm", [e.dumps() for e in chunk if isinstance(e, AlarmClear)]),
            )
            if start == 2000:
                service.kill()  # kill -9 while alarms are still arriving
            await asyncio.sleep(0.1)

    run(load())
    assert service.wait(10) == -9
    restarted = ServiceProcess("alarms", broker.url, run_dir, vault=vault).start()
    recovery_s = restarted.wait_ready()
    try:
        want = {occ: (e.active, e.cleared_at) for occ, e in expected.history.items()}

        def got() -> Occurrences:
            return {a["occurrence_id"]: (a["active"], a["cleared_at"]) for a in history(restarted, source)}

        wait_for_history(got, want, 60, "AlarmsServer's tables match what was sent")
        assert len(raises) + len(clears) == 5000
        print(f"alarms recovery after kill -9: ready in {recovery_s:.2f} s, {len(want)} occurrences exact")
    finally:
        restarted.stop()
