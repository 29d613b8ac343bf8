"""The CAN adapter as a real process between the simulated bus and a real broker.

What reaches ``sensorData`` is read back from the broker and decoded with the
platform's own record schema; alarms are read from ``createAlarm``/``deleteAlarm``.
Faults are injected at the "hardware" (the simulator) and cleared at the end of
each test, so the tests share one simulator and one adapter.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import defaultdict
from typing import Any, Iterator

import pytest

from adapters.can import frames
from simulator import client
from streams import exitcodes, topics
from streams.codec import decode
from heater import traces
from heater.runtime.broker import EmbeddedBroker
from streams.records import Alarm, AlarmClear, SensorFreshness, SensorReading, Severity
from heater.runtime.processes import free_port
from tests.adapters.conftest import CanAdapterProcess, CanStack, wait_view
from tests.simulator.conftest import start_simulator
from tests.support import consume_until, end_offset, metric, produce, run, wait_for

SENSORS = ("water.0", "water.1", "water.2", "burner.flame")


def readings_since(stack: CanStack, since: float, done: Any, timeout: float = 10.0,
                   start_at: int | None = None) -> list[SensorReading]:
    """``sensorData`` records received after ``since`` (read from offset ``start_at``, or the beginning),
    decoded and validated, once ``done(readings)``."""
    return readings_since_on(stack.broker, since, done, timeout, start_at)


def readings_since_on(broker: EmbeddedBroker, since: float, done: Any, timeout: float = 10.0,
                      start_at: int | None = None) -> list[SensorReading]:
    """:func:`readings_since` on any broker."""

    def decoded(messages: list[Any]) -> list[SensorReading]:
        out = []
        for message in messages:
            reading = decode(message.value, SensorReading)
            assert message.key == reading.sensor.encode()
            if reading.received_at >= since:
                out.append(reading)
        return out

    messages = run(consume_until(broker.bootstrap, topics.SENSOR_DATA.name, lambda m: done(decoded(m)), timeout,
                                 start_at))
    return decoded(messages)


def alarm_seen(stack: CanStack | EmbeddedBroker, topic: str, alarm_id: str, since: float, timeout: float = 10.0) -> dict[str, Any]:
    """The first ``createAlarm`` (or ``deleteAlarm``) for ``alarm_id`` stamped after ``since``."""
    record_type = Alarm if topic == topics.CREATE_ALARM.name else AlarmClear
    stamp = "raised_at" if record_type is Alarm else "cleared_at"

    def matches(messages: list[Any]) -> list[dict[str, Any]]:
        found = []
        for message in messages:
            body = json.loads(message.value)
            if body.get("alarm_id") == alarm_id and body.get(stamp, 0) >= since:
                decode(message.value, record_type)
                found.append(body)
        return found

    bootstrap = stack.bootstrap if isinstance(stack, EmbeddedBroker) else stack.broker.bootstrap
    messages = run(consume_until(bootstrap, topic, lambda m: bool(matches(m)), timeout))
    return matches(messages)[0]


def alarm_ids(stack: CanStack | EmbeddedBroker, topic: str, since: float, read_for: float = 1.0) -> list[str]:
    """Every ``can`` alarm id on ``topic`` stamped after ``since`` (reads the topic for ``read_for`` s)."""
    stamp = "raised_at" if topic == topics.CREATE_ALARM.name else "cleared_at"
    until = time.monotonic() + read_for
    bootstrap = stack.bootstrap if isinstance(stack, EmbeddedBroker) else stack.broker.bootstrap
    messages = run(consume_until(bootstrap, topic, lambda m: time.monotonic() > until, read_for + 10))
    return [
        body["alarm_id"] for body in (json.loads(m.value) for m in messages)
        if body["alarm_id"].startswith("can/") and body.get(stamp, 0) >= since
    ]


def test_frames_arrive_on_sensor_data_at_10_hz_per_sensor(can_stack: CanStack) -> None:
    adapter = can_stack.adapter
    assert adapter.get("/readyz")[0] == 200
    since = time.time()
    readings = readings_since(
        can_stack, since, lambda rs: all(sum(r.sensor == s for r in rs) >= 16 for s in SENSORS), timeout=15
    )
    by_sensor: dict[str, list[SensorReading]] = defaultdict(list)
    for reading in readings:
        by_sensor[reading.sensor].append(reading)
    assert set(by_sensor) == set(SENSORS)
    for sensor, series in by_sensor.items():
        span = series[-1].received_at - series[0].received_at
        rate = (len(series) - 1) / span
        assert 8.0 <= rate <= 12.0, f"{sensor}: {rate:.1f} Hz"
        sequences = [r.sequence for r in series]
        assert all(frames.sequence_gap(a, b) == 0 for a, b in zip(sequences, sequences[1:])), f"{sensor}: {sequences}"
        if sensor == "burner.flame":
            assert {(r.kind, r.unit) for r in series} == {("flame", "")} and {r.value for r in series} <= {0.0, 1.0}
        else:
            assert {(r.kind, r.unit) for r in series} == {("temperature", "C")}
            assert all(15.0 < r.value < 25.0 and r.status == 0 for r in series)
    view = adapter.view()
    assert view["bus"]["open"] and view["last_frame_age_s"] < 1.0
    assert view["frames"]["ok"]["water_temp"] > 0 and view["frames"]["ok"]["burner_status"] > 0
    assert all(view["sensors"][s]["last_seen_age_s"] < 1.0 for s in SENSORS)
    assert view["alarms"] == []
    assert metric(adapter, "heater_can_frames_total", kind="water_temp") > 0


def freshness_since(stack: CanStack, since: float, done: Any, timeout: float = 10.0) -> list[SensorFreshness]:
    """``sensorFreshness`` records sent after ``since``, decoded and validated, once ``done(records)``."""

    def decoded(messages: list[Any]) -> list[SensorFreshness]:
        return [r for r in (decode(m.value, SensorFreshness) for m in messages) if r.sent_at >= since]

    start_at = run(end_offset(stack.broker.bootstrap, topics.SENSOR_FRESHNESS.name)) - 50  # some 5 s back
    messages = run(consume_until(stack.broker.bootstrap, topics.SENSOR_FRESHNESS.name, lambda m: done(decoded(m)),
                                 timeout, max(0, start_at)))
    return decoded(messages)


def test_the_valve_lease_is_told_the_newest_readings_at_most_ten_times_a_second_even_on_a_flooded_bus(
        can_stack: CanStack) -> None:
    """``sensorFreshness`` names the newest temperature and flame readings on ``sensorData``; a burst of 4,000
    frames a second does not raise its rate, so the I2C adapter's intake stays small whatever the bus carries."""
    readings_from = run(end_offset(can_stack.broker.bootstrap, topics.SENSOR_DATA.name))
    time.sleep(1.0)
    since = time.time()
    burst = client.burst(can_stack.sim.control_port, 6000, 4000.0, sensor=2, wait=True)
    until = time.time()
    told = freshness_since(can_stack, since, lambda rs: bool(rs) and rs[-1].sent_at >= until + 0.3)
    readings = readings_since(can_stack, since - 1.0, lambda rs: bool(rs) and rs[-1].received_at >= until + 0.2,
                              start_at=readings_from)
    temperatures = {r.received_at for r in readings if r.kind == "temperature"}
    flames = {r.received_at: r.value for r in readings if r.kind == "flame"}
    during = [r for r in told if since <= r.sent_at <= until]
    span = burst["finished_at"] - burst["started_at"]
    print(f"\n{burst['sent']} frames in {span:.2f} s; {len(during)} freshness records meanwhile")
    assert burst["sent"] >= 5000 and len(during) <= span * 10 + 2
    for record in told:
        assert record.temperature_at in temperatures, "the time of a temperature reading on sensorData"
        assert flames.get(record.flame_at) == float(record.flame), "the newest flame reading and its value"
        assert 0 <= record.sent_at - record.temperature_at < 0.5
    assert [r.temperature_at for r in told] == sorted(r.temperature_at for r in told)


def test_a_sensor_that_flags_its_readings_faulty_keeps_no_valve_open(can_stack: CanStack) -> None:
    port = can_stack.sim.control_port
    for sensor in range(3):
        client.inject(port, "sensor_fault", sensor=sensor)
    try:
        time.sleep(0.5)
        since = time.time()
        told = freshness_since(can_stack, since, lambda rs: bool(rs) and rs[-1].sent_at >= since + 1.0)
        assert all(r.temperature_at < since - 0.2 for r in told), "no temperature reading keeps the lease fresh"
        assert told[-1].flame_at > since + 0.5, "the flame still counts"
    finally:
        for sensor in range(3):
            client.clear(port, "sensor_fault", sensor=sensor)
    since = time.time()
    freshness_since(can_stack, since, lambda rs: any(r.temperature_at > since for r in rs))


def test_every_reading_starts_a_trace_of_its_own(can_stack: CanStack) -> None:
    """At rest each reading carries the ``traceparent`` of its CAN adapter span, written to the adapter's span file."""
    since = time.time()

    def fresh(messages: list[Any]) -> list[tuple[SensorReading, list[str]]]:
        out = []
        for message in messages:
            reading = decode(message.value, SensorReading)
            if reading.received_at >= since:
                out.append((reading, dict(message.headers)["traceparent"].decode().split("-")))
        return out

    messages = run(consume_until(can_stack.broker.bootstrap, topics.SENSOR_DATA.name, lambda m: len(fresh(m)) >= 20))
    traced = fresh(messages)
    sampled = [len(p) == 4 and p[0] == "00" and len(p[1]) == 32 and len(p[2]) == 16 and int(p[3], 16) & 1 for _, p in traced]
    assert all(sampled), traced[:3]
    assert len({p[1] for _, p in traced}) == len(traced), "one trace per frame"

    def spans() -> dict[str, dict[str, Any]] | None:
        written = {s["span_id"]: s for s in traces.read_spans([can_stack.adapter.run_dir / "traces" / "can.jsonl"])}
        return written if all(p[2] in written for _, p in traced) else None

    written = wait_for(spans, 5, 0.1, what="every reading's span in traces/can.jsonl")
    for reading, (_, trace_id, span_id, _) in traced:
        span = written[span_id]
        assert span["trace_id"] == trace_id and span["parent_id"] is None and span["name"] == "sensorData send"
        assert span["attributes"]["heater.sensor"] == reading.sensor
        assert span["attributes"]["can.sequence"] == reading.sequence
        assert abs(span["start_ns"] / 1e9 - reading.received_at) < 1e-3


def test_a_flooding_sensor_is_traced_within_its_budget_and_the_others_in_full(can_stack: CanStack) -> None:
    """Past its trace budget a sensor's readings go out without a trace of their own (counted); every other
    sensor's reading keeps its trace, and none is lost."""
    adapter, port = can_stack.adapter, can_stack.sim.control_port
    untraced_before = adapter.view()["frames"]["untraced"].get("water.2", 0)
    since = time.time()
    burst = client.burst(port, 2000, rate=9000.0, sensor=2, wait=True)

    def fresh(messages: list[Any]) -> list[tuple[SensorReading, bool]]:
        return [(reading, "traceparent" in dict(message.headers)) for message in messages
                if (reading := decode(message.value, SensorReading)).received_at >= since]

    def after_the_burst(messages: list[Any]) -> bool:
        late = [r for r, _ in fresh(messages) if r.received_at > burst["finished_at"] + 0.3]
        return all(sum(r.sensor == s for r in late) >= 3 for s in SENSORS)

    readings = fresh(run(consume_until(can_stack.broker.bootstrap, topics.SENSOR_DATA.name, after_the_burst, timeout=30)))
    flooding = [traced for r, traced in readings if r.sensor == "water.2"]
    others = [traced for r, traced in readings if r.sensor != "water.2"]
    print(f"\nwater.2: {len(flooding)} readings, {sum(flooding)} traced; others: {len(others)}, {sum(others)} traced")
    assert len(flooding) >= 2000 and others
    assert all(others), "the other sensors' readings are all traced"
    assert sum(flooding) <= 50 + 50 * (time.time() - since), "the flooding sensor stays within 50 new traces a second"
    assert flooding[-1], "under its budget again, the sensor's readings are traced"
    view = adapter.view()
    assert view["frames"]["untraced"]["water.2"] - untraced_before == len(flooding) - sum(flooding)
    assert set(view["frames"]["untraced"]) == {"water.2"} and view["frames"]["lost"] == {}


def test_a_garbage_flood_is_counted_and_valid_frames_keep_flowing(can_stack: CanStack) -> None:
    adapter, port = can_stack.adapter, can_stack.sim.control_port
    before = {r: metric(adapter, "heater_can_bad_frames_total", reason=r) for r in ("unknown_id", "bad_length", "out_of_range")}
    since = time.time()
    client.inject(port, "garbage_frames", rate=1000)
    try:
        wait_for(
            lambda: all(metric(adapter, "heater_can_bad_frames_total", reason=r) >= before[r] + 50 for r in before),
            timeout=10, interval=0.1, what="bad frames of every kind counted",
        )
        readings = readings_since(can_stack, since, lambda rs: all(sum(r.sensor == s for r in rs) >= 8 for s in SENSORS))
        assert {r.sensor for r in readings} == set(SENSORS)
        raised = alarm_seen(can_stack, topics.CREATE_ALARM.name, "can/bad-frames", since)
        assert raised["severity"] == "WARNING"
    finally:
        client.clear(port, "garbage_frames")
    cleared = alarm_seen(can_stack, topics.DELETE_ALARM.name, "can/bad-frames", since)
    assert cleared["cleared_by"] == "can"
    assert adapter.alive()
    view = adapter.view()
    assert view["frames"]["lost"] == {}, "valid frames were not lost among the garbage"
    assert view["publish_errors"] == 0


def test_bus_off_raises_an_alarm_cleared_once_the_bus_recovers(can_stack: CanStack) -> None:
    adapter, port = can_stack.adapter, can_stack.sim.control_port
    since = time.time()
    client.inject(port, "bus_off")
    try:
        raised = alarm_seen(can_stack, topics.CREATE_ALARM.name, "can/bus-off", since)
        assert raised["severity"] == "CRITICAL" and raised["source"] == "can"
        view = wait_view(adapter, lambda v: v["frames"]["error_frames"].get("bus_off", 0) >= 1)
        assert view["frames"]["error_frames"].get("controller", 0) >= 2
    finally:
        client.clear(port, "bus_off")
    cleared = alarm_seen(can_stack, topics.DELETE_ALARM.name, "can/bus-off", since)
    assert cleared["cleared_at"] >= raised["raised_at"]
    wait_view(adapter, lambda v: v["alarms"] == [] and v["last_frame_age_s"] < 0.5, what="healthy again")
    assert set(alarm_ids(can_stack, topics.CREATE_ALARM.name, since)) == {"can/bus-off"}, "one incident, one alarm"


def test_sensor_dropout_raises_an_alarm_cleared_when_it_is_back(can_stack: CanStack) -> None:
    adapter, port = can_stack.adapter, can_stack.sim.control_port
    since = time.time()
    client.inject(port, "sensor_dropout", sensor=1)
    try:
        raised = alarm_seen(can_stack, topics.CREATE_ALARM.name, "can/sensor-dropout/water.1", since)
        assert raised["severity"] == "WARNING"
        assert raised["raised_at"] - since >= 0.9, "not before the dropout limit"
    finally:
        client.clear(port, "sensor_dropout")
    alarm_seen(can_stack, topics.DELETE_ALARM.name, "can/sensor-dropout/water.1", since)
    wait_view(adapter, lambda v: v["alarms"] == [], what="healthy again")
    assert set(alarm_ids(can_stack, topics.CREATE_ALARM.name, since)) == {"can/sensor-dropout/water.1"}


def test_a_restart_clears_stale_alarms_and_raises_current_ones(can_stack: CanStack, tmp_path: Any) -> None:
    port = can_stack.sim.control_port
    since = time.time()
    client.inject(port, "sensor_dropout", sensor=2)
    try:
        alarm_seen(can_stack, topics.CREATE_ALARM.name, "can/sensor-dropout/water.2", since)
        can_stack.adapter.kill()  # SIGKILL: no chance to clear anything
        can_stack.adapter.wait(10)
        client.clear(port, "sensor_dropout")
        client.inject(port, "sensor_dropout", sensor=0)
        restarted_at = time.time()
        can_stack.adapter = CanAdapterProcess(can_stack.broker, tmp_path, can_stack.sim.can_channel, can_stack.vault).start()
        cleared = alarm_seen(can_stack, topics.DELETE_ALARM.name, "can/sensor-dropout/water.2", restarted_at, timeout=20)
        assert cleared["reason"] == "cleared on startup"
        alarm_seen(can_stack, topics.CREATE_ALARM.name, "can/sensor-dropout/water.0", restarted_at, timeout=20)
        can_stack.adapter.wait_ready(timeout=20)
    finally:
        client.clear(port, "sensor_dropout")
    alarm_seen(can_stack, topics.DELETE_ALARM.name, "can/sensor-dropout/water.0", restarted_at)


def test_a_lost_bus_raises_an_alarm_and_is_reopened(can_stack: CanStack) -> None:
    """The simulator (the bus) goes away and comes back on the same port: one alarm, reconnected."""
    adapter = can_stack.adapter
    opens = adapter.view()["bus"]["opens"]
    since = time.time()
    can_stack.sim.terminate()
    alarm_seen(can_stack, topics.CREATE_ALARM.name, "can/bus-unavailable", since)
    assert adapter.alive() and adapter.get("/readyz")[0] == 200, "a lost bus is an alarm, not a crash"
    can_stack.restart_simulator()
    alarm_seen(can_stack, topics.DELETE_ALARM.name, "can/bus-unavailable", since, timeout=15)
    view = wait_view(adapter, lambda v: v["bus"]["open"] and v["last_frame_age_s"] < 0.5, what="frames again")
    assert view["bus"]["opens"] == opens + 1 and view["bus"]["failures"] >= 1
    assert set(alarm_ids(can_stack, topics.CREATE_ALARM.name, since)) == {"can/bus-unavailable"}


@pytest.fixture(scope="module")
def fatal_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker of its own: the FATAL latch is platform-wide."""
    with EmbeddedBroker(tmp_path_factory.mktemp("can-fatal-broker")) as running:
        yield running


def test_fatal_stops_the_adapter_and_a_latched_start_does_nothing(
    can_stack: CanStack, fatal_broker: EmbeddedBroker, tmp_path: Any
) -> None:
    channel = can_stack.sim.can_channel
    adapter = CanAdapterProcess(fatal_broker, tmp_path, channel, can_stack.vault).start()
    adapter.wait_ready(timeout=20)
    clients = can_stack.sim.state()["can"]["clients"]
    alarm = Alarm(
        alarm_id="disaster/overtemp", source="disaster", code="overtemp", severity=Severity.FATAL,
        message="water over the limit (test)", raised_at=time.time(),
    )
    run(produce(fatal_broker.bootstrap, topics.CREATE_ALARM.name, [alarm.dumps()], key=alarm.alarm_id.encode()))
    assert adapter.wait(10) == exitcodes.STAY_DOWN, adapter.tail()
    halted = CanAdapterProcess(fatal_broker, tmp_path, channel, can_stack.vault).start()
    try:
        body = wait_for(lambda: _status(halted), timeout=20, interval=0.1, what="halted phase")
        assert body["phase"] == "halted"
        assert halted.get("/readyz")[0] == 503
        can_stack.sim.wait_for(lambda s: s["can"]["clients"] <= clients - 1, timeout=5)
        time.sleep(0.3)
        view = halted.view()
        assert not view["bus"]["open"] and view["published"] == 0, "halted: no bus held, nothing published"
    finally:
        halted.stop()


def test_a_reading_over_the_fatal_limit_raises_fatal_from_the_adapter_itself(
    own_broker: EmbeddedBroker, vault: Any, tmp_path: Any
) -> None:
    """The adapter's own limit check: FATAL named by the first believed reading over the limit, then stay down.

    Hardware of its own: the FATAL latches the broker it runs on, and the injected heat must
    not reach the module's shared adapter."""
    sim = start_simulator(tmp_path / "sim")
    adapter = CanAdapterProcess(own_broker, tmp_path, sim.can_channel, vault).start()
    try:
        adapter.wait_ready(timeout=30)
        since = time.time()
        client.inject(sim.control_port, "overtemp", sensor=0, value=90.0)  # from the water's ~20 °C: a jump first
        raised = alarm_seen(own_broker, topics.CREATE_ALARM.name, "can/overtemp-fatal/water.0", since)
        assert raised["severity"] == "FATAL" and raised["source"] == "can"
        assert raised["details"] == {"sensor": "water.0", "value": "90", "limit": "85"}
        assert adapter.wait(10) == exitcodes.STAY_DOWN, adapter.tail()
        hot = [r for r in readings_since_on(own_broker, since, lambda rs: any(r.received_at >= raised["raised_at"] for r in rs))
               if r.sensor == "water.0" and r.value >= 85.0]
        assert len(hot) >= 2, hot
        assert raised["raised_at"] == hot[1].received_at, "the first over-limit reading jumped: a glitch until the next one holds"
    finally:
        adapter.stop()
        sim.terminate()


def _status(adapter: CanAdapterProcess) -> dict[str, Any] | None:
    assert adapter.alive(), adapter.tail()
    try:
        body = adapter.get("/status")[1]
    except OSError:
        return None
    return body if body.get("phase") == "halted" else None


STOP_LINE = re.compile(r"CAN adapter stopping: (\d+) frame\(s\) taken off the bus, (\d+) bad, (\d+) reading")


def test_stopped_in_a_flood_every_frame_taken_off_the_bus_reaches_the_broker(
    can_stack: CanStack, own_broker: EmbeddedBroker, tmp_path: Any
) -> None:
    """SIGTERM while one sensor floods the bus at 9,000 frames/s: each frame the adapter took off
    the bus — in the batch it was handling, or queued behind it — is a reading on ``sensorData``.

    An adapter of its own on the shared bus, publishing to a broker of its own, so the count is exact."""
    adapter = CanAdapterProcess(own_broker, tmp_path, can_stack.sim.can_channel, can_stack.vault).start()
    try:
        adapter.wait_ready(timeout=30)
        client.burst(can_stack.sim.control_port, 27_000, 9000.0, sensor=2)
        time.sleep(1.5)
        adapter.kill(signal.SIGTERM)
        assert adapter.wait(15) == exitcodes.DONE, adapter.tail()
        stopped = STOP_LINE.search(adapter.tail(200))
        assert stopped, adapter.tail()
        received, bad, published = map(int, stopped.groups())
        assert received > 9000 and bad == 0 and published == received, stopped.group(0)
        readings = readings_since_on(own_broker, 0.0, lambda found: len(found) >= published, timeout=30)
        assert len(readings) == published
    finally:
        adapter.stop()
        can_stack.sim.wait_for(lambda state: not (state["burst"] or {}).get("running"), timeout=10)


def test_stops_cleanly_on_sigterm(can_stack: CanStack) -> None:
    adapter = can_stack.adapter
    assert adapter.alive()
    adapter.kill(signal.SIGTERM)
    assert adapter.wait(15) == exitcodes.DONE, adapter.tail()


def test_a_missing_bus_is_a_missing_dependency(can_stack: CanStack, tmp_path: Any) -> None:
    adapter = CanAdapterProcess(can_stack.broker, tmp_path, f"ws://127.0.0.1:{free_port()}/", can_stack.vault).start()
    assert adapter.wait(15) == exitcodes.DEPENDENCY_MISSING
    assert "cannot open CAN bus" in adapter.tail()
