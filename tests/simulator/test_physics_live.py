"""The running heater: ignition, heating, and the stuck-valve runaway."""

from __future__ import annotations

from typing import Any

from adapters.i2c import registers as r
from simulator import client

SimProcess = Any  # the `sim` fixture's handle (tests/simulator/conftest.py)
A = r.PICO_ADDRESS
POWER = r.RELAY_POWER_ON
VALVE = r.RELAY_GAS_VALVE_OPEN
SPARK = r.RELAY_SPARK_ON


def test_ignition_heats_and_closing_the_valve_puts_the_flame_out(sim: SimProcess, kicker: Any) -> None:
    start = sim.state()["heater"]["water_temperature"]
    with kicker(sim.i2c_url), sim.smbus() as bus:
        bus.write_byte_data(A, r.REG_RELAY_CMD, POWER | VALVE | SPARK)
        sim.wait_for(lambda s: s["heater"]["flame"], timeout=2.0)
        bus.write_byte_data(A, r.REG_RELAY_CMD, POWER | VALVE)
        state = sim.wait_for(lambda s: s["heater"]["water_temperature"] >= start + 2.0, timeout=4.0)
        assert state["heater"]["flame"]
        assert all(s["temperature"] > start + 1.0 for s in state["sensors"].values())
        bus.write_byte_data(A, r.REG_RELAY_CMD, POWER)
        sim.wait_for(lambda s: not s["heater"]["flame"], timeout=1.0)
        bus.write_byte_data(A, r.REG_RELAY_CMD, r.RELAYS_SAFE)


def test_ignition_failure_means_no_flame(sim: SimProcess, kicker: Any) -> None:
    client.inject(sim.control_port, "ignition_failure")
    with kicker(sim.i2c_url), sim.smbus() as bus:
        bus.write_byte_data(A, r.REG_RELAY_CMD, POWER | VALVE | SPARK)
        sim.wait_for(lambda s: s["pico"]["relays"]["spark_on"], timeout=1.0)
        state = sim.wait_for(lambda s: s["pico"]["timestamps"]["spark_on_at"] < s["time"] - 0.6, timeout=2.0)
        assert not state["heater"]["flame"]
        bus.write_byte_data(A, r.REG_RELAY_CMD, r.RELAYS_SAFE)


def test_stuck_valve_runaway_until_power_cut(sim: SimProcess, kicker: Any) -> None:
    with kicker(sim.i2c_url), sim.smbus() as bus:
        bus.write_byte_data(A, r.REG_RELAY_CMD, POWER)
        client.inject(sim.control_port, "stuck_valve")
        assert bus.read_byte_data(A, r.REG_RELAY_STATE) == POWER | VALVE
        assert r.decode_status(bus.read_byte_data(A, r.REG_STATUS)).valve_stuck
        bus.write_byte_data(A, r.REG_RELAY_CMD, POWER | SPARK)  # spark only: the welded valve feeds gas
        sim.wait_for(lambda s: s["heater"]["flame"], timeout=2.0)
        bus.write_byte_data(A, r.REG_RELAY_CMD, POWER)  # "valve closed, spark off"
        hot = sim.state()["heater"]["water_temperature"]
        state = sim.wait_for(lambda s: s["heater"]["water_temperature"] >= hot + 2.0, timeout=4.0)
        assert state["heater"]["flame"] and state["pico"]["relay_cmd"] == POWER
        bus.write_byte_data(A, r.REG_RELAY_CMD, r.RELAYS_SAFE)  # power cut ends it
        state = sim.wait_for(lambda s: not s["heater"]["flame"], timeout=1.0)
        assert not state["pico"]["relays"]["gas_valve_open"]
        assert state["pico"]["timestamps"]["valve_closed_at"] == state["pico"]["timestamps"]["power_cut_at"]
