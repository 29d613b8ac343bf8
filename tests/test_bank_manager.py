"""BankManager as a real process with AlarmsServer: alarms raised and cleared, staleness, FATAL.

Every test runs on its own embedded broker (0.2 s to start): the bank's consumer group and
changelogs are per broker, and the FATAL test latches its broker for good.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from heater.runtime.broker import EmbeddedBroker
from heater.runtime.vault import EmbeddedVault
from streams import exitcodes
from streams.heater_config import WATER_SENSORS
from streams.records import SensorReading
from tests.support import ServiceProcess, produce, run, try_get, vault_env, wait_for

@pytest.fixture
def dedicated(tmp_path: Path, vault: EmbeddedVault) -> Iterator[tuple[EmbeddedBroker, ServiceProcess]]:
    """A broker of its own and AlarmsServer on it."""
    with EmbeddedBroker(tmp_path / "broker") as broker:
        alarms = ServiceProcess("alarms", broker.url, tmp_path / "alarms", vault_env(vault)).start()
        try:
            alarms.wait_ready(timeout=60)
            yield broker, alarms
        finally:
            alarms.stop()


def reading(sensor: str, value: float, at: float, sequence: int = 0) -> SensorReading:
    return SensorReading(sensor=sensor, kind="temperature", value=value, unit="C", received_at=at, sequence=sequence)


def send(broker: EmbeddedBroker, readings: list[SensorReading]) -> None:
    run(produce(broker.bootstrap, "sensorData", [r.dumps() for r in readings]))


def history(alarms: ServiceProcess, source: str = "bank") -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    while True:
        status, body = alarms.get(f"/alarms/history?source={source}&limit=1000&offset={len(entries)}")
        assert status == 200, body
        entries.extend(body["alarms"])
        if len(entries) >= body["total"]:
            return entries


def test_stale_sensor_raises_on_the_timer_and_clears_on_data(dedicated: tuple[EmbeddedBroker, ServiceProcess], tmp_path: Path) -> None:
    broker, alarms = dedicated
    bank = ServiceProcess("bank", broker.url, tmp_path / "bank").start()  # stale_after_s = 1.0
    try:
        bank.wait_ready(timeout=60)
        last = time.time()
        send(broker, [reading("water.0", 40.0, last)])
        entry = wait_for(
            lambda: next((a for a in history(alarms) if a["alarm"]["code"] == "sensor-stale" and a["active"]), None),
            timeout=20, what="stale alarm",
        )
        assert entry["alarm"]["alarm_id"] == "bank/sensor-stale/water.0"
        assert entry["alarm"]["raised_at"] == pytest.approx(last + 1.0)
        back = time.time()
        send(broker, [reading("water.0", 40.1, back)])
        cleared = wait_for(
            lambda: next((a for a in history(alarms) if a["occurrence_id"] == entry["occurrence_id"] and not a["active"]), None),
            timeout=20, what="stale alarm cleared",
        )
        assert cleared["cleared_at"] == pytest.approx(max(back, last + 1.0))
        assert bank.get("/bank")[1]["sensors"]["water.0"]["quality"] in ("fresh", "stale")
    finally:
        bank.stop()


def test_fatal_over_temperature_stops_the_bank_for_good(dedicated: tuple[EmbeddedBroker, ServiceProcess], tmp_path: Path) -> None:
    broker, alarms = dedicated
    bank = ServiceProcess("bank", broker.url, tmp_path / "bank").start()
    try:
        bank.wait_ready(timeout=60)
        t0 = time.time()
        send(broker, [reading(s, 70.0 + 4 * i, t0 + i * 0.1 + j * 0.001) for i in range(5) for j, s in enumerate(WATER_SENSORS)])
        assert bank.wait(30) == exitcodes.STAY_DOWN
        latch = wait_for(lambda: (lambda b: b if b.get("latched") else None)(alarms.get("/latch")[1]), what="latched")
        assert latch["alarm_id"].startswith("bank/overtemp-fatal/")
        codes = {a["alarm"]["code"] for a in history(alarms) if a["active"]}
        assert {"overtemp-warning", "overtemp-critical", "overtemp-fatal"} <= codes
        restarted = ServiceProcess("bank", broker.url, tmp_path / "bank").start()  # started while latched
        try:
            status = wait_for(lambda: try_get(restarted.url + "/status"), timeout=30, what="restarted bank answers")
            assert status[1]["phase"] == "halted" and restarted.get("/readyz")[0] == 503
        finally:
            restarted.stop()
    finally:
        bank.stop()
