"""The controller's local path: the real job module as a child process against a real broker.

No relay adapter and no simulator here (the end-to-end tests have both): a test plays
the CAN adapter by producing ``sensorData`` where a job needs readings. The FATAL
latch is platform-wide, so the latched cases run on a broker of their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from heater.runtime.broker import EmbeddedBroker
from streams import exitcodes
from streams.codec import decode
from streams.heating.controller import HeatingController, HeatingRefused, announce_ends
from streams.heating.launch import LocalLauncher
from streams.platform_watch import PlatformWatch
from streams.records import Alarm, AlarmClear, HeatingJobState, RelayCommand, SensorReading
from tests.support import consume_until, produce

pytestmark = pytest.mark.timeout(120)


def job_env(broker: EmbeddedBroker, run_dir: Path) -> dict[str, str]:
    """Jobs here run without Vault, so without a certificate; the platform's jobs serve mTLS (test_heating_e2e)."""
    return {"HEATER_PROFILE": "local", "HEATER_BROKER_URL": broker.url, "HEATER_RUN_DIR": str(run_dir),
            "HEATER_TLS": "off"}


@pytest_asyncio.fixture(loop_scope="function")
async def watch(broker: EmbeddedBroker) -> AsyncIterator[PlatformWatch]:
    running = PlatformWatch(broker.bootstrap, "heating-controller", fetch_wait_ms=10)
    await running.start()
    running.run_in_background()
    yield running
    await running.stop()


@pytest_asyncio.fixture(loop_scope="function")
async def controller(broker: EmbeddedBroker, watch: PlatformWatch, tmp_path: Path) -> AsyncIterator[HeatingController]:
    launcher = LocalLauncher(env=job_env(broker, tmp_path), log_dir=tmp_path / "logs")
    running = HeatingController(launcher, watch)
    yield running
    for job_id in await launcher.running():
        await launcher.terminate(job_id)
    await asyncio.wait_for(asyncio.gather(*(running.wait(j) for j in list(running.runs)), return_exceptions=True), 30)
    await running.close()


class Readings:
    """Plays the CAN adapter: three water sensors and the flame detector at 10 Hz."""

    def __init__(self, bootstrap: str, water_c: float, flame: bool = False) -> None:
        self.bootstrap, self.water_c, self.flame = bootstrap, water_c, flame
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "Readings":
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=2)
        await producer.start()
        try:
            while True:
                now = time.time()
                for i in range(3):
                    reading = SensorReading(sensor=f"water.{i}", kind="temperature", value=self.water_c, unit="C", received_at=now)
                    await producer.send("sensorData", reading.dumps(), key=reading.sensor.encode())
                flame = SensorReading(sensor="burner.flame", kind="flame", value=float(self.flame), unit="", received_at=now)
                await producer.send("sensorData", flame.dumps(), key=b"burner.flame")
                await asyncio.sleep(0.1)
        finally:
            await producer.stop()


async def job_states(bootstrap: str, job_id: str, last: str, timeout: float = 20.0) -> list[HeatingJobState]:
    def mine(messages: list) -> list[HeatingJobState]:
        return [s for s in (decode(m.value, HeatingJobState) for m in messages) if s.job_id == job_id]

    messages = await consume_until(bootstrap, "heatingJobState", lambda ms: any(s.state == last for s in mine(ms)), timeout)
    return mine(messages)


async def alarm_events(bootstrap: str, alarm_id: str, want_clear: bool, timeout: float = 20.0) -> tuple[list[Alarm], list[AlarmClear]]:
    raised = await consume_until(
        bootstrap, "createAlarm", lambda ms: any(m.key == alarm_id.encode() for m in ms), timeout
    )
    cleared: list = []
    if want_clear:
        cleared = await consume_until(bootstrap, "deleteAlarm", lambda ms: any(m.key == alarm_id.encode() for m in ms), timeout)
    return (
        [decode(m.value, Alarm) for m in raised if m.key == alarm_id.encode()],
        [decode(m.value, AlarmClear) for m in cleared if m.key == alarm_id.encode()],
    )


# -- outcomes of the real job process ----------------------------------------------------


async def test_water_already_at_target_is_done_without_gas(broker: EmbeddedBroker, controller: HeatingController) -> None:
    async with Readings(broker.bootstrap, water_c=50.0):
        await asyncio.sleep(0.3)
        run = await controller.request_heating(45.0)
        ended = await asyncio.wait_for(controller.wait(run.job_id), 30)
    assert (ended.outcome, ended.exit_code) == ("done", exitcodes.DONE), ended.detail
    states = await job_states(broker.bootstrap, run.job_id, "done")
    assert [s.state for s in states] == ["idle", "done"]
    assert "already at" in states[-1].reason
    raised, cleared = await alarm_events(broker.bootstrap, "heating-job/heating", want_clear=True)
    assert raised[-1].severity.value == "INFO" and cleared, "the heating alarm is raised, then cleared"


async def test_no_sensor_data_fails_with_an_alarm_and_busy_meanwhile(broker: EmbeddedBroker, controller: HeatingController) -> None:
    run = await controller.request_heating(40.0)
    with pytest.raises(HeatingRefused, match="already running") as busy:
        await controller.request_heating(41.0)
    assert busy.value.status == 409
    ended = await asyncio.wait_for(controller.wait(run.job_id), 40)
    assert (ended.outcome, ended.exit_code) == ("failed", exitcodes.HEATING_FAILED)
    raised, _ = await alarm_events(broker.bootstrap, "heating-job/no-sensor-data", want_clear=False)
    assert raised[-1].severity.value == "CRITICAL" and raised[-1].details["job_id"] == run.job_id


async def test_a_stopped_job_is_not_a_success(broker: EmbeddedBroker, controller: HeatingController) -> None:
    run = await controller.request_heating(40.0)
    await job_states(broker.bootstrap, run.job_id, "idle")
    launcher = controller.launcher
    assert isinstance(launcher, LocalLauncher)
    await launcher.terminate(run.job_id)
    ended = await asyncio.wait_for(controller.wait(run.job_id), 30)
    assert (ended.outcome, ended.exit_code) == ("failed", exitcodes.HEATING_FAILED)
    states = await job_states(broker.bootstrap, run.job_id, "failed")
    assert "stopped" in states[-1].reason


async def test_a_killed_job_is_announced_as_failed(broker: EmbeddedBroker, controller: HeatingController) -> None:
    """SIGKILL leaves the job no word: the controller says it ended, so nobody thinks it still heats."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        controller.on_end.append(announce_ends(lambda topic, key, value: producer.send_and_wait(topic, value, key)))
        run = await controller.request_heating(40.0)
        await job_states(broker.bootstrap, run.job_id, "idle")
        launcher = controller.launcher
        assert isinstance(launcher, LocalLauncher)
        os.killpg(launcher._procs[run.job_id].pid, signal.SIGKILL)
        ended = await asyncio.wait_for(controller.wait(run.job_id), 30)
        assert (ended.outcome, ended.exit_code) == ("failed", -signal.SIGKILL)
        states = await job_states(broker.bootstrap, run.job_id, "failed")
        assert states[-1].state == "failed" and str(-signal.SIGKILL) in states[-1].reason
    finally:
        await producer.stop()


async def test_target_refused_before_any_process(controller: HeatingController) -> None:
    with pytest.raises(HeatingRefused) as refused:
        await controller.request_heating(55.5)
    assert refused.value.status == 400 and controller.runs == {}


def test_the_job_itself_refuses_a_target_above_the_limit(broker: EmbeddedBroker, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.heating", "--target", "70", "--job-id", "too-hot"],
        env={**os.environ, **job_env(broker, tmp_path), "HEATER_WEB_PORT": "0"},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == exitcodes.HEATING_FAILED, done.stderr[-2000:]
    assert "above the limit of 55.0" in done.stderr


# -- latched: a broker of their own -------------------------------------------------------


@pytest.fixture(scope="module")
def latched_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path_factory.mktemp("heating-latched-broker")) as running:
        fatal = Alarm(alarm_id="test/fatal", source="test", code="fatal", severity="FATAL",
                      message="water over 85 °C", raised_at=time.time())
        asyncio.run(produce(running.bootstrap, "createAlarm", [fatal.dumps()], key=fatal.alarm_id.encode()))
        yield running


async def test_request_refused_while_latched(latched_broker: EmbeddedBroker, tmp_path: Path) -> None:
    watch = PlatformWatch(latched_broker.bootstrap, "heating-controller", fetch_wait_ms=10)
    await watch.start()
    try:
        controller = HeatingController(LocalLauncher(env=job_env(latched_broker, tmp_path)), watch)
        with pytest.raises(HeatingRefused) as refused:
            await controller.request_heating(40.0)
        assert refused.value.status == 409
        assert refused.value.reason.startswith("platform latched (FATAL test/fatal: water over 85 °C)")
        assert controller.runs == {}
    finally:
        await watch.stop()


def test_a_job_started_while_latched_exits_stay_down_at_once(latched_broker: EmbeddedBroker, tmp_path: Path) -> None:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streams.heating", "--target", "40", "--job-id", "latched"],
        env={**os.environ, **job_env(latched_broker, tmp_path), "HEATER_WEB_PORT": "0"},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == exitcodes.STAY_DOWN, done.stderr[-2000:]
    assert time.monotonic() - began < 20
    assert "platform is latched" in done.stderr
    with pytest.raises(AssertionError, match="condition not met"):  # no relay command at all
        asyncio.run(consume_until(latched_broker.bootstrap, "I2CHeating", bool, timeout=2))



async def test_fatal_while_igniting_closes_the_gas_and_stays_down(own_broker: EmbeddedBroker, tmp_path: Path) -> None:
    """A FATAL from elsewhere: valve off and cut-off on ``I2CHeating``, then exit 3 (a broker of its own)."""
    broker = own_broker
    watch = PlatformWatch(broker.bootstrap, "heating-controller", fetch_wait_ms=10)
    await watch.start()
    watch.run_in_background()
    controller = HeatingController(LocalLauncher(env=job_env(broker, tmp_path), log_dir=tmp_path / "logs"), watch)
    try:
        async with Readings(broker.bootstrap, water_c=20.0):
            run = await controller.request_heating(40.0)
            await job_states(broker.bootstrap, run.job_id, "igniting")
            fatal = Alarm(alarm_id="test/fatal", source="test", code="fatal", severity="FATAL",
                          message="disaster", raised_at=time.time())
            await produce(broker.bootstrap, "createAlarm", [fatal.dumps()], key=fatal.alarm_id.encode())
            ended = await asyncio.wait_for(controller.wait(run.job_id), 30)
    finally:
        await controller.close()
        await watch.stop()
    assert (ended.outcome, ended.exit_code) == ("fatal", exitcodes.STAY_DOWN)
    messages = await consume_until(broker.bootstrap, "I2CHeating", lambda ms: any(b'"cutoff"' in m.value for m in ms))
    commands = [(c.action.value, c.on) for c in (decode(m.value, RelayCommand) for m in messages)]
    assert commands[:3] == [("power", True), ("valve", True), ("spark", True)]
    assert commands[-2:] == [("valve", False), ("cutoff", True)]
    states = await job_states(broker.bootstrap, run.job_id, "failed")
    assert states[-1].reason.startswith("FATAL")
