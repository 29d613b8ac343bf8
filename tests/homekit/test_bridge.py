"""The bridge end to end: a real aiohomekit controller paired with the real bridge process.

One broker, AlarmsServer and the bridge for the module; the tests run in order and
share one paired controller, as one phone would. The last test raises a FATAL and
releases it with the operator reset, so the module can run again on the same platform.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from dataclasses import asdict
from typing import Any, AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from heater.runtime.broker import EmbeddedBroker
from homekit.pairing import read_bridge_info
from streams.codec import decode
from streams import topology
from streams.records import Alarm, HeatingJobState, RelayState, SensorReading
from streams.registry_rules import ServiceEntry
from streams.tables.exceptions import SenderStats
from tests.homekit.conftest import BridgeProcess
from tests.homekit.home_app import HomeApp
from tests.support import ServiceProcess, consume_until, post_json, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

HEATER = "Water Heater"
SENSORS = {"water.0": "Water Temperature 1", "water.1": "Water Temperature 2", "water.2": "Water Temperature 3"}
#: Readings the tests send: each new, so the bridge always has a change to tell (also when the tests repeat).
_values = itertools.count()


def fresh(base: float) -> float:
    return round(base + next(_values) % 50 * 0.1, 1)


EVERY_ACCESSORY = {HEATER, *SENSORS.values(), "FATAL Alarm", "Critical Alarm", "Warning", "Power Cut-off", "FATAL Latch",
                   "Exceptions"}
#: The services the tests register (as StateRegistry records them), and their accessories' names (the schema's format).
REGISTERED = ("alarms", "bank", "homekit")


def service_accessory(name: str) -> str:
    return f"Service {name}"


@pytest.fixture(scope="module")
async def producer(hk_broker: EmbeddedBroker) -> AsyncIterator[AIOKafkaProducer]:
    running = AIOKafkaProducer(bootstrap_servers=hk_broker.bootstrap, linger_ms=0)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def home(bridge: BridgeProcess) -> AsyncIterator[HomeApp]:
    info = read_bridge_info(bridge.state_dir)
    assert info is not None and info["port"] == bridge.hap_port
    app = HomeApp("127.0.0.1", bridge.hap_port)
    await app.pair(info["setup_code"])
    print(f"\npaired after {app.pair_attempts} attempt(s)")
    await app.read_all()
    await app.subscribe_all()
    yield app
    await app.close()


async def reading(producer: AIOKafkaProducer, sensor: str, value: float) -> None:
    record = SensorReading(sensor=sensor, kind="temperature", value=value, unit="C", received_at=time.time())
    await producer.send_and_wait("sensorData", record.dumps(), key=sensor.encode())


async def test_bridge_serves_health_and_pairing_info(bridge: BridgeProcess) -> None:
    for path in ("/healthz", "/readyz"):
        assert bridge.get(path)[0] == 200
    status, info = bridge.get("/homekit")
    assert status == 200 and info["address"] == "127.0.0.1" and info["port"] == bridge.hap_port
    assert len(info["setup_code"]) == 10 and info["feed_connected"] is True
    assert (bridge.state_dir / "setup.json").stat().st_mode & 0o077 == 0
    import urllib.request

    metrics = urllib.request.urlopen(bridge.probe_url + "/metrics", timeout=2).read().decode()
    assert "heater_homekit_feed_connected 1.0" in metrics


async def test_controller_reads_every_accessory(home: HomeApp, producer: AIOKafkaProducer) -> None:
    for sensor, value in zip(SENSORS, (40.0, 41.0, 42.0)):
        await reading(producer, sensor, value)
    since = time.monotonic() - 60
    await home.wait_event(SENSORS["water.2"], "CurrentTemperature", lambda v: abs(v - 42.0) < 0.01, since)
    seen = await home.read_all()
    assert set(seen) >= EVERY_ACCESSORY, sorted(seen)
    assert [seen[SENSORS[s]]["CurrentTemperature"] for s in SENSORS] == [40.0, 41.0, 42.0]
    assert all(seen[SENSORS[s]]["StatusFault"] == 0 for s in SENSORS)
    heater = seen[HEATER]
    assert heater["CurrentTemperature"] == 41.0  # the median of the three
    assert heater["Active"] == 0 and heater["CurrentHeaterCoolerState"] == 0 and heater["TargetHeaterCoolerState"] == 1
    assert heater["StatusFault"] == 0
    for name in ("FATAL Alarm", "Critical Alarm", "Warning", "FATAL Latch"):
        assert seen[name]["ContactSensorState"] == 0, (name, seen[name])
        assert seen[name]["StatusFault"] == 0, (name, seen[name])
    assert seen["Power Cut-off"]["StatusFault"] == 1  # no relay readback yet: unknown is shown as a fault


async def test_temperature_events_and_their_latency(home: HomeApp, producer: AIOKafkaProducer) -> None:
    latencies = []
    for i in range(8):
        value = fresh(50.0)
        sent = time.monotonic()
        await reading(producer, "water.0", value)
        event = await home.wait_event(SENSORS["water.0"], "CurrentTemperature", lambda v, x=value: abs(v - x) < 0.01, sent)
        latencies.append(event.at - sent)
        await asyncio.sleep(0.3)
    ms = sorted(round(x * 1000) for x in latencies)
    print(f"\nsensorData reading → controller event: min {ms[0]} ms, median {statistics.median(ms):.0f} ms, max {ms[-1]} ms ({ms})")
    assert ms[-1] < 3000


async def registry_row(producer: AIOKafkaProducer, name: str, **fields: Any) -> None:
    """A row of StateRegistry's services table, as the registry writes it to its changelog."""
    row = ServiceEntry(name, seen_at=time.time(), **fields).to_row()
    await producer.send_and_wait(topology.REGISTRY_SERVICES, json.dumps(row).encode(), key=json.dumps(name).encode())


async def exceptions_row(producer: AIOKafkaProducer, service: str, count: int) -> None:
    """A row of ExceptionsServer's per-sender counts, as it writes it to its changelog."""
    row = asdict(SenderStats(service, True, count, {"RuntimeError": count}, time.time()))
    await producer.send_and_wait(topology.EXCEPTION_COUNTS, json.dumps(row).encode(), key=json.dumps(service).encode())


def bridge_shows(bridge: BridgeProcess, services: set[str], after_version: int) -> int:
    """Wait until the bridge shows exactly ``services`` under a configuration number above ``after_version``."""
    def shown() -> int | None:
        info = bridge.get("/homekit")[1]
        return info["config_version"] if set(info["services"]) == services and info["config_version"] > after_version else None

    return wait_for(shown, 15, 0.05, what=f"the bridge showing {sorted(services)} under a new configuration number")


async def test_every_registered_service_has_an_accessory(home: HomeApp, bridge: BridgeProcess,
                                                         producer: AIOKafkaProducer) -> None:
    before = bridge.get("/homekit")[1]["config_version"]
    for name in REGISTERED:
        await registry_row(producer, name, phase="ready")
    await asyncio.to_thread(bridge_shows, bridge, set(REGISTERED), before)
    seen = await home.read_all()  # the phone reads /accessories again after the configuration number changed
    for name in REGISTERED:
        shown = seen[service_accessory(name)]
        assert shown == {"ContactSensorState": 0, "StatusActive": True, "StatusFault": 0}, (name, shown)
    assert set(seen) >= EVERY_ACCESSORY  # the schema's accessories stay, with their AIDs
    await home.subscribe_all()


async def test_a_new_service_adds_an_accessory_and_removing_it_takes_it_away(
    home: HomeApp, bridge: BridgeProcess, producer: AIOKafkaProducer
) -> None:
    version = bridge.get("/homekit")[1]["config_version"]
    await registry_row(producer, "disaster", phase="starting")
    version = await asyncio.to_thread(bridge_shows, bridge, {*REGISTERED, "disaster"}, version)
    seen = await home.read_all()
    assert seen[service_accessory("disaster")]["StatusActive"] is False  # starting: there, not acting yet
    aid = home.aids[service_accessory("disaster")]

    await registry_row(producer, "disaster", phase="ready", watched=False)  # the registry's "stop watching"
    version = await asyncio.to_thread(bridge_shows, bridge, set(REGISTERED), version)
    seen = await home.read_all()
    assert service_accessory("disaster") not in seen and set(seen) >= EVERY_ACCESSORY

    await registry_row(producer, "disaster", phase="ready")  # watched again: the same accessory, the same AID
    await asyncio.to_thread(bridge_shows, bridge, {*REGISTERED, "disaster"}, version)
    await home.read_all()
    assert home.aids[service_accessory("disaster")] == aid
    await home.subscribe_all()


async def test_a_missing_service_shows_a_fault_until_it_is_back(home: HomeApp, producer: AIOKafkaProducer) -> None:
    since = time.monotonic()
    await registry_row(producer, "bank", phase="ready", missing=True)
    await home.wait_event(service_accessory("bank"), "StatusFault", lambda v: v == 1, since)
    await home.wait_event(service_accessory("bank"), "ContactSensorState", lambda v: v == 1, since)
    assert await home.read(service_accessory("alarms"), "StatusFault") == 0  # the others stay healthy

    since = time.monotonic()
    await registry_row(producer, "bank", phase="ready")
    await home.wait_event(service_accessory("bank"), "StatusFault", lambda v: v == 0, since)
    await home.wait_event(service_accessory("bank"), "ContactSensorState", lambda v: v == 0, since)


async def test_an_exception_report_raises_the_count(home: HomeApp, producer: AIOKafkaProducer) -> None:
    assert await home.read("Exceptions", "CurrentAmbientLightLevel") < 1  # none counted yet (HAP's minimum, 0 lux)
    assert await home.read("Exceptions", "StatusFault") == 0
    since = time.monotonic()
    await exceptions_row(producer, "bank", 1)
    await home.wait_event("Exceptions", "CurrentAmbientLightLevel", lambda v: v == 1, since)
    await exceptions_row(producer, "disaster", 2)  # every sender counts
    await home.wait_event("Exceptions", "CurrentAmbientLightLevel", lambda v: v == 3, since)


async def relay_state(producer: AIOKafkaProducer, power_on: bool, tripped: bool = False) -> None:
    record = RelayState(power_on=power_on, valve_open=False, spark_on=False, trip_latched=tripped,
                        watchdog_expired=False, read_at=time.time(), trip_count=1 if tripped else 0)
    await producer.send_and_wait("relayState", record.dumps(), key=b"pico")




async def test_writing_a_target_starts_a_heating_job_and_active_off_stops_it(
    home: HomeApp, hk_broker: EmbeddedBroker, bridge: BridgeProcess
) -> None:
    since, wrote_at = time.monotonic(), time.time()
    errors = await home.write(HEATER, {"HeatingThresholdTemperature": 48.5})
    assert not errors, errors

    def new_jobs(messages: list) -> list[HeatingJobState]:  # a job's first word is stamped after its start
        states = [decode(m.value, HeatingJobState) for m in messages]
        return [s for s in states if s.at >= wrote_at and s.target_c == 48.5 and s.state not in ("failed", "done")]

    messages = await consume_until(hk_broker.bootstrap, "heatingJobState", lambda m: bool(new_jobs(m)), timeout=30)
    job = new_jobs(messages)[0]
    print(f"\nheating command on Kafka: job {job.job_id} {job.state} target {job.target_c} °C ({job.reason})")
    await home.wait_event(HEATER, "Active", lambda v: v == 1, since, timeout=15)
    assert abs(await home.read(HEATER, "HeatingThresholdTemperature") - 48.5) < 0.01

    since = time.monotonic()
    errors = await home.write(HEATER, {"Active": 0})
    assert not errors, errors
    await home.wait_event(HEATER, "Active", lambda v: v == 0, since, timeout=15)

    def ended(messages: list) -> bool:  # the controller's word: it saw the job's process end
        states = [decode(m.value, HeatingJobState) for m in messages]
        return any(s.job_id == job.job_id and s.state == "failed" and s.reason.startswith("ended:") for s in states)

    await consume_until(hk_broker.bootstrap, "heatingJobState", ended, timeout=15)


async def test_backend_down_shows_a_fault_on_every_accessory_and_back_clears_it(
    home: HomeApp, alarms: ServiceProcess, bridge: BridgeProcess, hk_broker: EmbeddedBroker, producer: AIOKafkaProducer
) -> None:
    await relay_state(producer, power_on=True)  # a known cut-off state, so "no fault" is reachable everywhere
    for sensor in SENSORS:
        await reading(producer, sensor, 44.0)
    await asyncio.sleep(1.0)
    faults = {name: await home.read(name, "StatusFault") for name in EVERY_ACCESSORY}
    assert set(faults.values()) == {0}, faults

    since = time.monotonic()
    await asyncio.to_thread(alarms.stop)
    for name in EVERY_ACCESSORY:
        await home.wait_event(name, "StatusFault", lambda v: v == 1, since, timeout=15)
    assert bridge.get("/homekit")[1]["feed_connected"] is False

    def unreachable(messages: list) -> bool:
        return any(m.key == b"homekit/backend-unreachable" for m in messages)

    await consume_until(hk_broker.bootstrap, "createAlarm", unreachable, timeout=20)

    since = time.monotonic()
    await asyncio.to_thread(alarms.start)
    await asyncio.to_thread(alarms.wait_ready, 60)
    await home.wait_event(HEATER, "StatusFault", lambda v: v == 0, since, timeout=30)
    # A new AlarmsServer reads live data only: its sensors and relays are known from their next messages.
    await relay_state(producer, power_on=True)
    for sensor in SENSORS:
        await reading(producer, sensor, 44.5)
    for name in EVERY_ACCESSORY:
        await home.wait_event(name, "StatusFault", lambda v: v == 0, since, timeout=15)
    assert await home.read(SENSORS["water.0"], "CurrentTemperature") == 44.5
    await consume_until(hk_broker.bootstrap, "deleteAlarm", unreachable, timeout=20)


async def test_pairing_survives_a_bridge_restart(home: HomeApp, bridge: BridgeProcess, producer: AIOKafkaProducer) -> None:
    code_before = read_bridge_info(bridge.state_dir)["setup_code"]  # type: ignore[index]
    pairing_data = dict(home.pairing.pairing_data)  # type: ignore[union-attr]
    await home.close()
    await asyncio.to_thread(bridge.stop)
    await asyncio.to_thread(bridge.start)
    await asyncio.to_thread(bridge.wait_ready, 60)
    assert read_bridge_info(bridge.state_dir)["setup_code"] == code_before  # type: ignore[index]
    assert bridge.get("/homekit")[1]["paired"] is True
    aids_before = dict(home.aids)
    await home.reconnect(pairing_data)
    seen = await home.read_all()
    assert set(seen) >= EVERY_ACCESSORY | {service_accessory(name) for name in REGISTERED}
    assert {name: home.aids[name] for name in aids_before} == aids_before  # automations keep pointing at the same ones
    await home.subscribe_all()
    since = time.monotonic()
    value = fresh(30.0)
    await reading(producer, "water.1", value)
    await home.wait_event(SENSORS["water.1"], "CurrentTemperature", lambda v: abs(v - value) < 0.01, since)


async def test_fatal_is_shown_and_the_bridge_stays_up_read_only_until_the_reset(
    home: HomeApp, bridge: BridgeProcess, alarms: ServiceProcess, producer: AIOKafkaProducer
) -> None:
    raised_at = time.time()
    fatal = Alarm(alarm_id="disaster/over-limit", source="disaster", code="over-limit", severity="FATAL",
                  message="water 91.0 °C over the 90.0 °C limit", raised_at=raised_at)
    since = time.monotonic()
    await producer.send_and_wait("createAlarm", fatal.dumps(), key=fatal.alarm_id.encode())
    event = await home.wait_event("FATAL Alarm", "ContactSensorState", lambda v: v == 1, since, timeout=15)
    print(f"\ncreateAlarm FATAL → controller event: {round((event.at - since) * 1000)} ms")
    await home.wait_event("FATAL Alarm", "StatusFault", lambda v: v == 1, since, timeout=5)
    await home.wait_event("FATAL Latch", "ContactSensorState", lambda v: v == 1, since, timeout=15)
    await relay_state(producer, power_on=False, tripped=True)
    await home.wait_event("Power Cut-off", "ContactSensorState", lambda v: v == 1, since, timeout=15)

    wait_for(lambda: bridge.get("/readyz")[0] == 503, 10, what="the bridge halted (not ready)")
    assert bridge.get("/healthz")[0] == 200 and bridge.get("/status")[1]["phase"] == "halted"
    errors = await home.write(HEATER, {"HeatingThresholdTemperature": 40.0})
    assert errors, "a write after FATAL must be refused"
    print(f"write after FATAL refused: {errors}")

    since = time.monotonic()  # still showing: a reading after the FATAL reaches the phone
    value = fresh(30.0)
    await reading(producer, "water.2", value)
    await home.wait_event(SENSORS["water.2"], "CurrentTemperature", lambda v: abs(v - value) < 0.01, since)
    assert bridge.proc is not None and bridge.proc.poll() is None

    since = time.monotonic()  # the operator reset releases it: the phone sees the latch open, the bridge takes writes again
    shown = alarms.get("/latch")[1]
    status, body = post_json(alarms.url + "/reset", {"occurrences": sorted(shown["occurrences"]),
                                                     "trip_count": shown.get("trip_count")}, token=alarms.token("operator", "test"))
    assert status == 202, body
    await home.wait_event("FATAL Latch", "ContactSensorState", lambda v: v == 0, since, timeout=20)
    await home.wait_event("FATAL Alarm", "ContactSensorState", lambda v: v == 0, since, timeout=20)
    wait_for(lambda: bridge.get("/readyz")[0] == 200, 10, what="the bridge ready again after the reset")
    await relay_state(producer, power_on=False, tripped=False)  # the board's own reset sequence, as the I2C adapter reports it
    await home.wait_event("Power Cut-off", "ContactSensorState", lambda v: v == 0, since, timeout=15)
