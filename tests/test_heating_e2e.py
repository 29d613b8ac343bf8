"""Heating jobs end to end: controller → job process → I2C adapter → simulated Pico → physics.

Real processes only: the local platform (broker, Vault, simulator, AlarmsServer, I2C
adapter, and the CAN adapter that turns the simulator's frames into ``sensorData``),
and each job launched by the controller as a child process. What the burner did is
read at the "hardware" (the simulator's state), the outcome from the controller and
the alarms from AlarmsServer. The lock-out raises FATAL, which latches this module's
platform, so it runs last.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from heater.platform import Platform
from heater.probes import http_json
from heater.rundir import Layout
from simulator import client as sim
from streams import exitcodes
from streams.codec import decode
from streams.heating.controller import HeatingController, HeatingRun
from streams.heating.launch import LocalLauncher
from streams.platform_watch import PlatformWatch
from streams.records import HeatingJobState
from tests.platform_view import fresh_tank, relays, running_platform
from tests.support import consume_until, wait_for

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(tmp_path_factory.mktemp("heating-platform"), timeout=90) as running:
        yield running


async def heat(layout: Layout, target_c: float) -> tuple[HeatingRun, float]:
    """One request through the controller, as a service would make it; the run and its duration."""
    watch = PlatformWatch(layout.broker_bootstrap, "heating-controller", fetch_wait_ms=10)
    await watch.start()
    watch.run_in_background()
    try:
        controller = HeatingController(LocalLauncher(env=layout.service_env("heating-job"), log_dir=layout.logs), watch)
        began = time.monotonic()
        run = await controller.request_heating(target_c)
        ended = await asyncio.wait_for(controller.wait(run.job_id), 60)
        return ended, time.monotonic() - began
    finally:
        await watch.stop()


def job_states(layout: Layout, job_id: str) -> list[HeatingJobState]:
    messages = asyncio.run(consume_until(
        layout.broker_bootstrap, "heatingJobState",
        lambda ms: any(decode(m.value, HeatingJobState).job_id == job_id and decode(m.value, HeatingJobState).state in ("done", "failed") for m in ms),
    ))
    return [s for s in (decode(m.value, HeatingJobState) for m in messages) if s.job_id == job_id]


def alarm(layout: Layout, alarm_id: str, **want: Any) -> dict[str, Any]:
    """AlarmsServer's entry for ``alarm_id`` once it matches ``want`` (e.g. ``active=False``)."""
    url = layout.web_url("alarms") + f"/alarm?id={alarm_id}"

    def check() -> dict[str, Any] | None:
        status, body = http_json(url)
        return body if status == 200 and all(body.get(k) == v for k, v in want.items()) else None

    return wait_for(check, 15, 0.2, f"alarm {alarm_id} {want}")


def job_log(layout: Layout, run: HeatingRun) -> str:
    return (layout.logs / f"heating-job-{run.job_id}.log").read_text(errors="replace")[-3000:]


def test_heating_to_target(platform: Platform) -> None:
    layout = platform.layout
    fresh_tank(layout, 20.0)
    port = layout.ports["simulator"]
    run, took = asyncio.run(heat(layout, 30.0))
    assert (run.outcome, run.exit_code) == ("done", exitcodes.DONE), job_log(layout, run)
    state = sim.get_state(port)
    assert state["pico"]["relays"]["gas_valve_open"] is False and state["pico"]["relays"]["spark_on"] is False
    assert state["heater"]["water_temperature"] >= 29.5
    states = job_states(layout, run.job_id)
    assert [s.state for s in states] == ["idle", "igniting", "heating", "done"]
    heating_s = states[-1].at - states[2].at
    ignition_s = states[2].at - states[1].at
    log.warning("heating 20 → 30 °C: request to exit %.1f s, ignition %.2f s, heating %.1f s", took, ignition_s, heating_s)
    assert ignition_s < 3.0 and 3.0 < heating_s < 15.0
    entry = alarm(layout, "heating-job/heating", active=False)
    assert entry["alarm"]["severity"] == "INFO"


def test_stuck_sensor_fails_with_an_alarm_and_the_valve_closed(platform: Platform) -> None:
    layout = platform.layout
    fresh_tank(layout, 20.0)
    port = layout.ports["simulator"]
    sim.inject(port, "stuck_sensor")
    try:
        run, took = asyncio.run(heat(layout, 40.0))
    finally:
        # Water first: the stuck sensors, freed above the start temperature, would read as heat
        # without gas within DisasterDetector's grace after the job — a real FATAL.
        sim.set_temperature(port, 20.0)
        sim.clear(port)
    assert (run.outcome, run.exit_code) == ("failed", exitcodes.HEATING_FAILED), job_log(layout, run)
    assert relays(layout)["gas_valve_open"] is False
    entry = alarm(layout, "heating-job/no-temperature-change", active=True)
    assert entry["alarm"]["severity"] == "CRITICAL"
    alarm(layout, "heating-job/heating", active=False)
    assert [s.state for s in job_states(layout, run.job_id)] == ["idle", "igniting", "heating", "failed"]
    log.warning("stuck sensor: failed %.1f s after the request", took)


def test_ignition_failure_locks_out(platform: Platform) -> None:
    layout = platform.layout
    fresh_tank(layout, 20.0)
    port = layout.ports["simulator"]
    sim.inject(port, "ignition_failure")
    run, took = asyncio.run(heat(layout, 40.0))
    assert (run.outcome, run.exit_code) == ("failed", exitcodes.HEATING_FAILED), job_log(layout, run)
    entry = alarm(layout, "heating-job/lockout", active=True)
    assert entry["alarm"]["severity"] == "FATAL" and "ignition failed 3 times" in entry["alarm"]["message"]
    pico = wait_for(lambda: (lambda p: p if p["trip_latched"] else None)(sim.get_state(port)["pico"]), what="Pico tripped")
    assert pico["relays"] == {"power_on": False, "gas_valve_open": False, "spark_on": False}
    states = job_states(layout, run.job_id)
    assert [s.state for s in states].count("igniting") == 5, "three attempts and two retries announced"
    assert states[-1].state == "failed" and "locked out" in states[-1].reason
    assert wait_for(lambda: platform.supervisor.info("i2c")["statename"] == "EXITED", what="i2c stayed down")
    log.warning("ignition failure: locked out %.1f s after the request", took)
    assert Path(layout.logs).exists()
