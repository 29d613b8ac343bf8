"""DisasterDetector as a real process: a disaster is reported, FATAL raised, and the service stays down.

Every test that raises FATAL gets its own broker (the latch is platform-wide); the quiet
tests share one. Readings carry synthetic, closely spaced timestamps: the rules judge
record time, so a few seconds of water can be sent in one go.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from heater.runtime.broker import EmbeddedBroker
from streams.records import HeatingJobState, RelayAction, RelayCommand, RelayState, SensorReading
from tests.support import ServiceProcess, consume_until, run, wait_for

SENSORS = ("water.0", "water.1", "water.2")


def readings(values: list[float], start: float) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` for each value at 10 Hz, from every water sensor."""
    out = []
    for i, value in enumerate(values):
        for sensor in SENSORS:
            reading = SensorReading(sensor=sensor, kind="temperature", value=round(value, 1), unit="C", received_at=start + i / 10, sequence=i)
            out.append((sensor.encode(), reading.dumps()))
    return out


def send(broker: EmbeddedBroker, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    """Produce ``(key, value)`` pairs in order through one producer."""

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        await producer.start()
        try:
            for key, value in items:
                await producer.send(topic, value, key=key)
            await producer.flush()
        finally:
            await producer.stop()

    run(go())


def view(detector: ServiceProcess) -> dict[str, Any]:
    status, body = detector.get("/disaster")
    assert status == 200, body
    return body


def topic_size(broker: EmbeddedBroker, topic: str) -> int:
    async def go() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            return (await consumer.end_offsets([tp]))[tp]
        finally:
            await consumer.stop()

    return run(go())


def start_detector(broker: EmbeddedBroker, run_dir: Path) -> ServiceProcess:
    """A ready detector; stopped again when it does not get ready (no process left behind)."""
    detector = ServiceProcess("disaster", broker.url, run_dir).start()
    try:
        detector.wait_ready(timeout=60)
    except BaseException:
        detector.stop()
        raise
    return detector


@pytest.fixture
def fatal_rig(tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, ServiceProcess]]:
    """A broker of its own and a detector on it, for one test that ends in FATAL."""
    with EmbeddedBroker(tmp_path / "broker") as broker:
        detector = start_detector(broker, tmp_path)
        try:
            yield broker, detector
        finally:
            detector.stop()


@pytest.fixture(scope="module")
def quiet_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedBroker, ServiceProcess]]:
    run_dir = tmp_path_factory.mktemp("disaster-quiet")
    with EmbeddedBroker(run_dir / "broker") as broker:
        detector = start_detector(broker, run_dir)
        try:
            yield broker, detector
        finally:
            detector.stop()


def first_disaster(broker: EmbeddedBroker) -> dict[str, Any]:
    messages = run(consume_until(broker.bootstrap, "DisasterDetected", lambda ms: bool(ms), timeout=30))
    assert len(messages) == 1, [m.value for m in messages]
    return json.loads(messages[0].value) | {"key": messages[0].key.decode()}


def fatal_alarm(broker: EmbeddedBroker) -> dict[str, Any]:
    def fatal(ms: list) -> list:
        return [json.loads(m.value) for m in ms if json.loads(m.value)["severity"] == "FATAL"]

    (alarm,) = fatal(run(consume_until(broker.bootstrap, "createAlarm", lambda ms: bool(fatal(ms)), timeout=30)))
    return alarm


def test_over_limit_during_heating_is_a_disaster_and_fatal(fatal_rig: tuple[EmbeddedBroker, ServiceProcess]) -> None:
    broker, detector = fatal_rig
    job = f"job{uuid.uuid4().hex[:6]}"
    now = time.time()
    state = HeatingJobState(job_id=job, state="heating", target_c=50.0, at=now)
    send(broker, "heatingJobState", [(b"job", state.dumps())])
    wait_for(lambda: view(detector)["watching"], what="watching the heating job")

    send(broker, "sensorData", readings([86.0 + 1.5 * i / 10 for i in range(50)], start=now + 0.1))

    event = first_disaster(broker)
    assert event["rule"] == "over-limit" and event["key"] == event["disaster_id"] == f"over-limit/job-{job}"
    assert event["value"] > event["limit"] == 90.0
    alarm = fatal_alarm(broker)
    assert alarm["source"] == "disaster" and alarm["alarm_id"] == f"disaster/over-limit/job-{job}"
    assert alarm["details"]["disaster_id"] == event["disaster_id"]
    assert detector.wait(timeout=45) == 3, detector.tail()
    assert topic_size(broker, "DisasterDetected") == 1, "one disaster per episode"


def test_rise_with_the_valve_commanded_closed_is_a_disaster(fatal_rig: tuple[EmbeddedBroker, ServiceProcess]) -> None:
    broker, detector = fatal_rig
    closed = time.time()
    readback = RelayState(power_on=True, valve_open=False, spark_on=False, trip_latched=False, watchdog_expired=False, read_at=closed)
    command = RelayCommand(command_id=uuid.uuid4().hex, action=RelayAction.VALVE, on=False, issued_by="heating", issued_at=closed)
    send(broker, "relayState", [(b"pico", readback.dumps())])
    send(broker, "I2CHeating", [(b"valve", command.dumps())])
    wait_for(lambda: view(detector)["valve"]["command_on"] is False and view(detector)["valve"]["readback_open"] is False, what="valve closed")

    water = [40.0] * 10 + [40.0 + 1.0 * i / 10 for i in range(40)]
    send(broker, "sensorData", readings(water, start=closed + 0.1))

    event = first_disaster(broker)
    assert event["rule"] == "rise-while-closed" and event["disaster_id"] == f"rise-while-closed/valve-{round(closed * 1000)}"
    assert event["value"] > 2.0
    assert fatal_alarm(broker)["code"] == "rise-while-closed"
    assert detector.wait(timeout=45) == 3, detector.tail()


def test_no_job_valve_closed_and_flat_water_is_quiet(quiet_rig: tuple[EmbeddedBroker, ServiceProcess]) -> None:
    broker, detector = quiet_rig
    now = time.time()
    state = HeatingJobState(job_id="old", state="done", target_c=50.0, at=now - 60)
    readback = RelayState(power_on=True, valve_open=False, spark_on=False, trip_latched=False, watchdog_expired=False, read_at=now - 60)
    send(broker, "heatingJobState", [(b"job", state.dumps())])
    send(broker, "relayState", [(b"pico", readback.dumps())])
    wait_for(lambda: (view(detector)["job"] or {}).get("job_id") == "old" and view(detector)["valve"]["readback_open"] is False, what="facts seen")

    last = now + 0.1 + 29 / 10
    send(broker, "sensorData", readings([45.0] * 30, start=now + 0.1))
    wait_for(lambda: all(w["last_at"] == pytest.approx(last) for w in view(detector)["windows"].values()) and len(view(detector)["windows"]) == 3, what="readings seen")

    body = view(detector)
    assert body["watching"] is False and body["detections"] == []
    assert topic_size(broker, "DisasterDetected") == 0
    assert detector.get("/readyz")[0] == 200


def test_malformed_messages_are_dead_lettered_and_the_agent_goes_on(quiet_rig: tuple[EmbeddedBroker, ServiceProcess]) -> None:
    broker, detector = quiet_rig
    tag = uuid.uuid4().hex
    good = SensorReading(sensor="water.1", kind="temperature", value=44.0, unit="C", received_at=time.time() + 10)
    wrong_kind = json.loads(good.dumps()) | {"kind": f"pressure-{tag}"}
    send(broker, "sensorData", [(b"water.1", f'{{"not json {tag}'.encode()), (b"water.1", json.dumps(wrong_kind).encode()), (b"water.1", good.dumps())])
    send(broker, "relayState", [(b"pico", f"[{tag!r}]".encode())])

    def mine(messages: list) -> list:
        return [m for m in messages if tag.encode() in m.value and dict(m.headers)["service"] == b"disaster"]

    letters = mine(run(consume_until(broker.bootstrap, "deadLetter", lambda ms: len(mine(ms)) >= 3, timeout=30)))
    assert sorted((dict(m.headers)["source-topic"], dict(m.headers)["reason"]) for m in letters) == [
        (b"relayState", b"malformed"), (b"sensorData", b"invalid"), (b"sensorData", b"malformed"),
    ]
    wait_for(lambda: view(detector)["windows"].get("water.1", {}).get("last_at") == pytest.approx(good.received_at), what="good reading used")
    assert detector.get("/readyz")[0] == 200
    assert "dead-lettered sensorData[0]@" in detector.log_path.read_text()


def test_after_kill_9_the_restarted_detector_knows_the_job_and_still_detects(tmp_path: Path) -> None:
    with EmbeddedBroker(tmp_path / "broker") as broker:
        first = start_detector(broker, tmp_path / "first")
        try:
            job = f"job{uuid.uuid4().hex[:6]}"
            now = time.time()
            send(broker, "heatingJobState", [(b"job", HeatingJobState(job_id=job, state="heating", target_c=50.0, at=now).dumps())])
            send(broker, "sensorData", readings([50.0] * 20, start=now + 0.1))
            wait_for(lambda: sum(w["count"] for w in view(first)["windows"].values()) == 60, what="readings seen")
            first.kill()
            first.wait()
        finally:
            first.stop()

        second = start_detector(broker, tmp_path / "second")  # an empty data directory: tables from their changelogs
        try:
            restored = wait_for(lambda: (lambda b: b if b["job"] else None)(view(second)), what="job restored")
            assert restored["watching"] is True and restored["episode"] == f"job-{job}"
            assert restored["windows"]["water.0"]["last_c"] == 50.0
            send(broker, "sensorData", readings([91.0] * 5, start=now + 2.1))
            messages = run(consume_until(broker.bootstrap, "DisasterDetected", lambda ms: bool(ms), timeout=30))
            assert json.loads(messages[0].value)["disaster_id"] == f"over-limit/job-{job}", "the job came from the tables"
            assert second.wait(timeout=45) == 3, second.tail()
        finally:
            second.stop()
