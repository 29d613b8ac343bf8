"""DisasterDetector as a real process: a disaster is reported, FATAL raised, and the service stays down.

Every test that raises FATAL gets its own broker (the latch is platform-wide); the quiet
tests share one. Readings carry synthetic, closely spaced timestamps: the rules judge
record time, so a few seconds of water can be sent in one go.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from heater import traces
from heater.probes import http_json
from heater.runtime.broker import EmbeddedBroker
from heater.runtime.vault import EmbeddedVault
from streams.disaster_rules import Detection, DisasterWatch, RuleLimits
from streams.heater_config import HeaterLimits
from streams.records import (
    HeatingJobState, PlatformLatch, RelayAction, RelayCommand, RelayState, SensorReading, alarm_id_for, occurrence_key,
)
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


def start_detector(broker: EmbeddedBroker, run_dir: Path, vault: EmbeddedVault) -> ServiceProcess:
    """A ready detector (verifying tokens of the session Vault); stopped again when it does not get ready."""
    detector = ServiceProcess("disaster", broker.url, run_dir, vault=vault).start()
    try:
        detector.wait_ready(timeout=60)
    except BaseException:
        detector.stop()
        raise
    return detector


@pytest.fixture
def fatal_rig(tmp_path: Path, vault: EmbeddedVault) -> Iterator[tuple[EmbeddedBroker, ServiceProcess]]:
    """A broker of its own and a detector on it, for one test that ends in FATAL."""
    with EmbeddedBroker(tmp_path / "broker") as broker:
        detector = start_detector(broker, tmp_path, vault)
        try:
            yield broker, detector
        finally:
            detector.stop()


@pytest.fixture(scope="module")
def quiet_rig(tmp_path_factory: pytest.TempPathFactory, vault: EmbeddedVault) -> Iterator[tuple[EmbeddedBroker, ServiceProcess]]:
    run_dir = tmp_path_factory.mktemp("disaster-quiet")
    with EmbeddedBroker(run_dir / "broker") as broker:
        detector = start_detector(broker, run_dir, vault)
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

    def spans() -> list[dict[str, Any]]:
        return list(traces.read_spans(traces.span_files(detector.run_dir / "traces")))

    # Records are taken in batches, each traced as it is decided; no batch span doubles them.
    handled = wait_for(lambda: [s for s in spans() if s["name"] == "sensorData process"
                                and s["attributes"].get("heater.sensor") in SENSORS] or None, what="reading spans written")
    assert len({s["attributes"]["messaging.kafka.offset"] for s in handled}) == len(handled)
    assert not [s["name"] for s in spans() if s["name"].endswith(" batch")]


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


def test_after_kill_9_the_restarted_detector_knows_the_job_and_still_detects(tmp_path: Path, vault: EmbeddedVault) -> None:
    with EmbeddedBroker(tmp_path / "broker") as broker:
        first = start_detector(broker, tmp_path / "first", vault)
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

        second = start_detector(broker, tmp_path / "second", vault)  # an empty data directory: tables from their changelogs
        try:
            # The readings come back from the changelogs, or (a run the kill left uncommitted) decided again.
            restored = wait_for(lambda: (lambda b: b if b["job"] and len(b["windows"]) == len(SENSORS) else None)(view(second)),
                                what="job and readings restored")
            assert restored["watching"] is True and restored["episode"] == f"job-{job}"
            assert restored["windows"]["water.0"]["last_c"] == 50.0
            send(broker, "sensorData", readings([91.0] * 5, start=now + 2.1))
            messages = run(consume_until(broker.bootstrap, "DisasterDetected", lambda ms: bool(ms), timeout=30))
            assert json.loads(messages[0].value)["disaster_id"] == f"over-limit/job-{job}", "the job came from the tables"
            assert second.wait(timeout=45) == 3, second.tail()
        finally:
            second.stop()


# -- exactly once across kill -9 ------------------------------------------------------------

#: Record time from one heating job to the next: more than a sensor window keeps (4 s), so jobs never mix.
JOB_SPACING_S = 10.0
#: How long one paced step of the feed may wait for ``/disaster`` to show it, a restart included.
PACE_TIMEOUT_S = 45.0


def ramp(start: float, per_s: float, samples: int) -> list[float]:
    """``samples`` values at 10 Hz rising ``per_s`` °C per second from ``start``."""
    return [start + per_s * k / 10 for k in range(samples)]


#: Hand-written jobs: each sensor's values at 10 Hz, and the disasters expected of them, reasoned from
#: the rules' definitions (90 °C; 4 °C/s; 2 °C within 3 s with the valve closed; 3 °C apart; median of
#: three), not computed. The valve reads and is commanded closed before the first job, so any rise
#: is a rise with the valve closed.
HAND_WRITTEN: list[tuple[str, dict[str, list[float]], set[str]]] = [
    # 8 °C/s from 84 °C to 99.2 °C, water.1 5 °C below the others: every rule, once each.
    ("fix-runaway", {"water.0": ramp(84.0, 8.0, 20), "water.1": ramp(79.0, 8.0, 20), "water.2": ramp(84.0, 8.0, 20)},
     {"over-limit/job-fix-runaway", "too-fast-rise/job-fix-runaway", "rise-while-closed/job-fix-runaway",
      "sensor-disagreement/job-fix-runaway"}),
    # Steady at 92 °C, the sensors agreeing: over the limit, nothing else.
    ("fix-hot", {s: [92.0] * 15 for s in SENSORS}, {"over-limit/job-fix-hot"}),
    # Steady at 50 °C, water.1 4 °C below the others: disagreement, nothing else.
    ("fix-split", {"water.0": [50.0] * 15, "water.1": [46.0] * 15, "water.2": [50.0] * 15},
     {"sensor-disagreement/job-fix-split"}),
    # 1.5 °C/s for 2.4 s: slower than 4 °C/s and far below 90 °C, but over 3 °C with the valve closed.
    ("fix-creep", {s: ramp(60.0, 1.5, 25) for s in SENSORS}, {"rise-while-closed/job-fix-creep"}),
    # Steady at 50 °C with one wild 95 °C sample: the median filter never shows it.
    ("fix-spike", {"water.0": [50.0] * 7 + [95.0] + [50.0] * 7, "water.1": [50.0] * 15, "water.2": [50.0] * 15}, set()),
    # Steady, agreeing, below every limit.
    ("fix-calm", {s: [50.0] * 15 for s in SENSORS}, set()),
]


#: An operator reset that released every detection of the feed and covers all of its readings: the
#: detector reports each disaster and raises its FATAL, which latches nothing (see streams.latch).
COVERS_ALL = {"sensorData:0": 10**12}


def covered_release(detection: Detection) -> dict[str, int]:
    return COVERS_ALL


class DisasterFeed:
    """The valve closed, then heating jobs each followed by its water (the hand-written jobs first, then
    random runaway ramps, until the rules find ``wanted`` disasters), starting an hour before ``now``;
    every detection's FATAL is one an operator reset released, covering every reading."""

    def __init__(self, seed: int, wanted: int, now: float, limits: RuleLimits) -> None:
        rng = random.Random(seed)
        self.t0 = now - 3600.0
        self.relay = RelayState(power_on=True, valve_open=False, spark_on=False, trip_latched=False,
                                watchdog_expired=False, read_at=self.t0 - 30.0)
        self.command = RelayCommand(command_id=f"close-{seed}", action=RelayAction.VALVE, on=False, issued_by="test",
                                    issued_at=self.t0 - 29.0)
        self.watch = DisasterWatch(limits)
        self.watch.on_readback(False, self.relay.read_at)
        self.watch.on_valve_command(False, self.command.issued_at, self.command.lease_s)
        self.jobs: list[tuple[HeatingJobState, list[SensorReading]]] = []
        self.detections: list[Detection] = []
        self.by_job: dict[str, set[str]] = {}
        for job_id, values, _ in HAND_WRITTEN:
            self.add(job_id, values)
        while len(self.detections) < wanted:
            rate, base, gap, samples = rng.uniform(7.0, 12.0), rng.uniform(81.0, 85.0), rng.uniform(3.5, 6.0), rng.randint(16, 22)
            self.add(f"r{len(self.jobs)}", {
                s: [v - (gap if s == "water.1" else 0.0) + rng.uniform(-0.2, 0.2) for v in ramp(base, rate, samples)]
                for s in SENSORS
            })

    def add(self, job_id: str, values: dict[str, list[float]]) -> None:
        start = self.t0 + len(self.jobs) * JOB_SPACING_S
        job = HeatingJobState(job_id=job_id, state="heating", target_c=50.0, at=start)
        self.watch.on_job_state(job.job_id, job.state, job.at)
        readings: list[SensorReading] = []
        found: list[Detection] = []
        for k in range(len(values[SENSORS[0]])):
            for sensor in SENSORS:
                reading = SensorReading(sensor=sensor, kind="temperature", value=round(values[sensor][k], 1), unit="C",
                                        received_at=start + 0.5 + k / 10, sequence=k)
                readings.append(reading)
                found += self.watch.on_reading(sensor, reading.value, reading.received_at, covered_release,
                                               ("sensorData:0", 0)).detections
        self.jobs.append((job, readings))
        self.detections += found
        self.by_job[job_id] = {d.disaster_id for d in found}

    def expected(self) -> dict[str, tuple[Any, ...]]:
        return {d.disaster_id: (d.disaster_id, d.rule, d.value, d.limit, d.at, d.message) for d in self.detections}


class Producer:
    """One producer on a private event loop for a long paced feed; each ``put`` returns once the broker has it all."""

    def __init__(self, bootstrap: str) -> None:
        async def start() -> AIOKafkaProducer:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)  # bound to the loop it is made on
            await producer.start()
            return producer

        self.loop = asyncio.new_event_loop()
        self.producer = self.loop.run_until_complete(start())

    def put(self, topic: str, items: list[tuple[bytes, bytes]]) -> None:
        async def go() -> None:
            futures = [await self.producer.send(topic, value, key=key) for key, value in items]
            await asyncio.gather(*futures)

        self.loop.run_until_complete(go())

    def close(self) -> None:
        try:
            self.loop.run_until_complete(asyncio.wait_for(self.producer.stop(), 10))
        finally:
            self.loop.close()


def peek(detector: ServiceProcess) -> dict[str, Any] | None:
    """``/disaster``, or None while the detector does not answer (killed, starting, busy)."""
    try:
        status, body = http_json(detector.url + "/disaster", timeout=2.0, token=detector.token("viewer"))
    except (OSError, ValueError, http.client.HTTPException):
        return None
    return body if status == 200 else None


def tally(expected: dict[str, tuple[Any, ...]], observed: list[tuple[str, tuple[Any, ...]]]) -> tuple[dict[str, int], list[str]]:
    """lost / doubled / wrong of ``(id, value)`` pairs against ``expected``, and examples of each."""
    seen: dict[str, list[tuple[Any, ...]]] = {}
    for key, value in observed:
        seen.setdefault(key, []).append(value)
    lost = sorted(k for k in expected if k not in seen)
    doubled = sorted(k for k, vs in seen.items() if len(vs) > 1 or k not in expected)
    wrong = sorted(k for k, vs in seen.items() if k in expected and any(v != expected[k] for v in vs))
    counts = {"lost": len(lost), "doubled": sum(len(seen[k]) - (k in expected) for k in doubled), "wrong": len(wrong)}
    examples = (
        [f"lost {k}: expected {expected[k]}" for k in lost[:5]]
        + [f"doubled {k}: {len(seen[k])} time(s), expected {'once' if k in expected else 'never'}: {seen[k][0]}" for k in doubled[:5]]
        + [f"wrong {k}: expected {expected[k]}, got {[v for v in seen[k] if v != expected[k]][0]}" for k in wrong[:5]]
    )
    return counts, examples


def test_exactly_once_across_kill_9(tmp_path: Path, vault: EmbeddedVault) -> None:
    """>= 300 disasters over ~80 heating jobs, kill -9 at 3 or 4 random points, restarts on the same data
    directory: DisasterDetected holds each disaster the pure rules expect exactly once, and /disaster too."""
    started = time.monotonic()
    seed = random.randrange(1_000_000)
    print(f"\ndisaster exactly-once: seed={seed}", flush=True)
    rng = random.Random(seed)
    feed = DisasterFeed(seed, 300, time.time(), RuleLimits.from_heater(HeaterLimits.from_env()))
    expected = feed.expected()
    hand = {job_id: ids for job_id, _, ids in HAND_WRITTEN}
    assert {job_id: feed.by_job[job_id] for job_id in hand} == hand, "the rules find what the hand-written jobs expect"
    assert len(expected) >= 300
    release = PlatformLatch(
        latched=False, alarm_id="", reason="test: an operator reset released every detection of the feed",
        changed_at=time.time(), changed_by="test", reset_id="test-reset", covered={"test-reset": COVERS_ALL},
        released={occurrence_key(alarm_id_for("disaster", d.rule, d.episode), d.at): "test-reset" for d in feed.detections},
    )
    run_dir = tmp_path / "disaster"
    kill_points = sorted(rng.sample([(j, p) for j in range(1, len(feed.jobs) - 1) for p in ("job", "readings")], rng.randint(3, 4)))
    kills: list[str] = []

    with EmbeddedBroker(tmp_path / "broker") as broker:
        wire = Producer(broker.bootstrap)
        wire.put("platformLatch", [(b"platform", release.dumps())])
        detector = start_detector(broker, run_dir, vault)
        try:
            def shown(predicate: Callable[[dict[str, Any]], bool], what: str) -> None:
                """Wait until ``/disaster`` shows ``what``: the feed crosses topics only in the order the rules saw."""
                def check() -> bool:
                    assert detector.proc is not None
                    if detector.proc.poll() is not None:
                        raise AssertionError(f"seed {seed}: the detector exited with {detector.proc.returncode} "
                                             f"before {what}:\n{detector.tail()}")
                    body = peek(detector)
                    return body is not None and predicate(body)

                wait_for(check, timeout=PACE_TIMEOUT_S, interval=0.03, what=f"seed {seed}: {what}")

            def maybe_kill(index: int, phase: str) -> None:
                nonlocal detector
                if (index, phase) not in kill_points:
                    return
                detector.wait_ready(timeout=60)  # the previous restart is up: this kill hits a working detector
                pause = rng.choice((0.0, 0.02, 0.05, 0.1, 0.2, 0.4))  # mostly while it works through the input
                time.sleep(pause)
                detector.kill()
                assert detector.wait(20) == -9
                kills.append(f"job {index} {phase} +{pause}s")
                detector = ServiceProcess("disaster", broker.url, run_dir, vault=vault).start()  # same data directory, not waited for

            wire.put("relayState", [(b"pico", feed.relay.dumps())])
            wire.put("I2CHeating", [(b"valve", feed.command.dumps())])
            shown(lambda b: b.get("valve", {}).get("readback_open") is False and b["valve"].get("command_on") is False,
                  "the valve reads and is commanded closed")
            for index, (job, readings) in enumerate(feed.jobs):
                wire.put("heatingJobState", [(job.job_id.encode(), job.dumps())])
                maybe_kill(index, "job")
                shown(lambda b: (b.get("job") or {}).get("job_id") == job.job_id, f"job {index} ({job.job_id}) applied")
                wire.put("sensorData", [(r.sensor.encode(), r.dumps()) for r in readings])
                maybe_kill(index, "readings")
                last = readings[-1].received_at
                shown(lambda b: len(b.get("windows", {})) == len(SENSORS)
                      and all((w.get("last_at") or 0.0) >= last - 1e-6 for w in b["windows"].values()),
                      f"job {index} ({job.job_id}) readings applied")
            fed_s = time.monotonic() - started

            def settled(predicate: Callable[[], bool], timeout: float) -> None:
                try:
                    wait_for(predicate, timeout=timeout, interval=0.5)
                except AssertionError:
                    pass  # the comparison below tells what is missing

            settled(lambda: len((peek(detector) or {}).get("detections", ())) >= len(expected), 20)
            settled(lambda: topic_size(broker, "DisasterDetected") >= len(expected), 20)
            time.sleep(1.0)  # room for a late second copy
            size = topic_size(broker, "DisasterDetected")
            messages = run(consume_until(broker.bootstrap, "DisasterDetected", lambda ms: len(ms) >= size, timeout=30))
            events = [(m.key.decode(), json.loads(m.value)) for m in messages]
            on_topic = [(key, (e["disaster_id"], e["rule"], e["value"], e["limit"], e["detected_at"], e["message"]))
                        for key, e in events]
            held = [(d["disaster_id"], (d["disaster_id"], d["rule"], d["value"], d["limit"], d["at"], d["message"]))
                    for d in (peek(detector) or {}).get("detections", [])]
        finally:
            detector.stop()
            wire.close()

    # An owed report sent again after a kill is the same bytes (same id): receivers keep one of
    # each. A second report with other content under the same id is a real double.
    resent = len(on_topic) - len(set(on_topic))
    topic_counts, topic_examples = tally(expected, list(dict.fromkeys(on_topic)))
    view_counts, view_examples = tally(expected, held)
    print(f"disaster exactly-once: seed={seed} jobs={len(feed.jobs)} readings={sum(len(r) for _, r in feed.jobs)} "
          f"effects={len(expected)} kills={kills}; DisasterDetected {len(events)} messages ({resent} identical resends) {topic_counts}; "
          f"/disaster {len(held)} detections {view_counts}; fed in {fed_s:.1f} s, took {time.monotonic() - started:.1f} s")
    for line in topic_examples:
        print(f"   DisasterDetected {line}")
    for line in view_examples:
        print(f"   /disaster {line}")
    assert len(kills) >= 3
    assert topic_counts == {"lost": 0, "doubled": 0, "wrong": 0}, f"seed {seed}: DisasterDetected: {topic_examples}"
    assert view_counts == {"lost": 0, "doubled": 0, "wrong": 0}, f"seed {seed}: /disaster: {view_examples}"
    on_topic_ids = {key for key, _ in on_topic}
    assert {job_id: {i for i in on_topic_ids if i.endswith(f"/job-{job_id}")} for job_id in hand} == hand, \
        "DisasterDetected holds the hand-written jobs' disasters"
