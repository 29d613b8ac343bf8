"""Rule 2 on the whole local platform: after FATAL, control services stay down, display services
show state read-only, a restart stays halted, and only the operator reset brings it all back."""

from __future__ import annotations

import json
import time
import uuid
from typing import Iterator

import pytest

from heater import reset
from heater.catalogue import COMPONENTS
from heater.platform import Platform
from heater.probes import http_json
from heater.rundir import Layout
from simulator import client as sim
from streams.records import Alarm, RelayCommand
from tests.support import consume_until, produce, run, try_get, wait_for

CONTROL = [c.name for c in COMPONENTS if c.control]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    running = Platform(tmp_path_factory.mktemp("platform"))
    try:
        running.start(timeout=90)
        yield running
    finally:
        running.stop()


def process(platform: Platform, name: str) -> dict:
    return platform.supervisor.info(name)


def test_fatal_halts_every_service_and_the_operator_reset_restores_them(platform: Platform) -> None:
    layout = platform.layout
    sim_port = layout.ports["simulator"]
    assert CONTROL, "at least one control service runs under heater up"
    fatal = Alarm(alarm_id="test/fatal", source="test", code="fatal", severity="FATAL", message="injected", raised_at=time.time())
    run(produce(layout.broker_bootstrap, "createAlarm", [fatal.dumps()], key=fatal.alarm_id.encode()))

    # The Pico opened the power cut-off and latched the trip.
    pico = wait_for(lambda: (lambda p: p if p["trip_latched"] else None)(sim.get_state(sim_port)["pico"]), what="Pico tripped")
    assert pico["relays"] == {"power_on": False, "gas_valve_open": False, "spark_on": False}

    # Control services exit with the stay-down code and are not restarted.
    for name in CONTROL:
        info = wait_for(lambda n=name: (lambda i: i if i["statename"] == "EXITED" else None)(process(platform, n)), what=f"{name} exited")
        assert info["exitstatus"] == 3
    # Display services stay up, read-only, not ready; their views still answer.
    alarms = layout.web_url("alarms")
    status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(http_json(alarms + "/readyz")), what="alarms halted")
    assert body["phase"] == "halted"
    assert http_json(alarms + "/latch")[1]["latched"] is True
    time.sleep(1.0)
    assert all(process(platform, n)["statename"] == "EXITED" for n in CONTROL), "no automatic restart"

    # Restarted by hand (as Kubernetes would): alive, halted, not ready, doing nothing.
    name = CONTROL[0]
    platform.supervisor.start(name)
    status, body = wait_for(lambda: (lambda r: r if r and r[0] == 503 else None)(try_get(layout.web_url(name) + "/readyz")), what="came up halted")
    assert body["phase"] == "halted" and process(platform, name)["statename"] == "RUNNING"
    assert sim.get_state(sim_port)["pico"]["trip_latched"] is True

    # The operator reset: signed, verified, the latch and the Pico released, services back.
    assert reset.main(layout.run_dir, "alice") == 0
    for name in CONTROL:
        wait_for(lambda n=name: (try_get(layout.web_url(n) + "/readyz") or (0,))[0] == 200, timeout=30, what=f"{name} ready again")
    wait_for(lambda: http_json(alarms + "/readyz")[0] == 200, what="alarms ready again")
    wait_for(lambda: not sim.get_state(sim_port)["pico"]["trip_latched"], what="Pico released")
    entry = http_json(alarms + "/alarm?id=test/fatal")[1]
    assert entry["active"] is False and entry["cleared_by"] == "alice" and entry["alarm"]["severity"] == "FATAL"


def command(action: str, on: bool, lease_s: float = 0.0) -> bytes:
    return RelayCommand(
        command_id=uuid.uuid4().hex, action=action, on=on, issued_by="test", issued_at=time.time(), lease_s=lease_s
    ).dumps()


def fresh_temperature(layout: Layout) -> bool:
    lease = http_json(layout.web_url("i2c") + "/relays")[1]["lease"]
    return lease["temperature_age_s"] is not None and lease["temperature_age_s"] < lease["stale_after_s"] / 2


def test_runaway_burner_is_caught_by_temperature_and_the_power_is_cut(platform: Platform) -> None:
    """A leaking valve seat keeps the burner lit after the valve closed: the relays look right,
    only the water temperature shows it. DisasterDetector must catch it and the power is cut."""
    layout = platform.layout
    sim_port = layout.ports["simulator"]
    for name in ("disaster", "i2c", "can"):
        wait_for(lambda n=name: (try_get(layout.web_url(n) + "/readyz") or (0,))[0] == 200, timeout=30, what=f"{name} ready")
    sim.clear(sim_port)
    sim.set_temperature(sim_port, 20.0)
    # Ready is not enough after the reset: the valve opens only on fresh temperature data.
    wait_for(lambda: fresh_temperature(layout), timeout=30, what="I2C adapter sees fresh temperature data")
    sim.inject(sim_port, "valve_leak")
    try:
        send = lambda *values: run(produce(layout.broker_bootstrap, "I2CHeating", list(values)))  # noqa: E731
        send(command("power", True), command("valve", True, lease_s=3.0), command("spark", True))
        wait_for(lambda: sim.get_state(sim_port)["heater"]["flame"], what="burner lit")
        send(command("spark", False), command("valve", False))
        valve_closed = wait_for(lambda: not sim.get_state(sim_port)["pico"]["relays"]["gas_valve_open"], what="valve closed")
        assert valve_closed and sim.get_state(sim_port)["heater"]["flame"], "the leak keeps it burning"

        def disasters(messages: list) -> list:
            return [json.loads(m.value) for m in messages if m.value and b"rise-while-closed" in m.value]

        (event, *_) = disasters(run(consume_until(layout.broker_bootstrap, "DisasterDetected", lambda ms: bool(disasters(ms)), timeout=30)))
        assert event["rule"] == "rise-while-closed"
        pico = wait_for(lambda: (lambda p: p if p["trip_latched"] else None)(sim.get_state(sim_port)["pico"]), what="Pico tripped")
        assert pico["relays"] == {"power_on": False, "gas_valve_open": False, "spark_on": False}
        latch = http_json(layout.web_url("alarms") + "/latch")[1]
        assert latch["latched"] and latch["alarm_id"].startswith("disaster/rise-while-closed")
        state = wait_for(lambda: (lambda s: s if not s["heater"]["flame"] else None)(sim.get_state(sim_port)), what="flame out")
        peak = state["heater"]["water_temperature"]
        time.sleep(1.0)
        assert sim.get_state(sim_port)["heater"]["water_temperature"] <= peak + 0.05, "no more heating after the cut"
        print(f"runaway: DisasterDetected after a {event['value']:.1f} C rise with the valve closed; water peaked at {peak:.1f} C")
    finally:
        sim.clear(sim_port)
        if http_json(layout.web_url("alarms") + "/latch")[1]["latched"]:
            assert reset.main(layout.run_dir, "alice") == 0
