"""The simulated Pico through SimulatedSMBus, as the I2C adapter will see it."""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from typing import Any

import pytest

from adapters.i2c import registers as r
from adapters.i2c.simbus import SimulatedSMBus, parse_target
from simulator import client

SimProcess = Any  # the `sim` fixture's handle (tests/simulator/conftest.py)
A = r.PICO_ADDRESS
ALL_ON = r.RELAY_POWER_ON | r.RELAY_GAS_VALVE_OPEN | r.RELAY_SPARK_ON
WDT_TOLERANCE_S = 0.05


def status(bus: SimulatedSMBus) -> r.Status:
    return r.decode_status(bus.read_byte_data(A, r.REG_STATUS))


def test_identity_commands_and_readback(sim: SimProcess) -> None:
    with sim.smbus() as bus:
        assert bus.read_byte_data(A, r.REG_ID) == r.PICO_ID
        assert r.decode_wdt_window(bus.read_byte_data(A, r.REG_WDT_WINDOW)) == 500
        assert bus.read_byte_data(A, r.REG_RELAY_STATE) == r.RELAYS_SAFE
        bus.write_byte_data(A, r.REG_WATCHDOG_KICK, r.KICK_MAGIC)
        bus.write_byte_data(A, r.REG_RELAY_CMD, r.RELAY_POWER_ON | r.RELAY_GAS_VALVE_OPEN)
        assert bus.read_byte_data(A, r.REG_RELAY_STATE) == r.RELAY_POWER_ON | r.RELAY_GAS_VALVE_OPEN
        assert bus.read_byte_data(A, r.REG_RELAY_CMD) == r.RELAY_POWER_ON | r.RELAY_GAS_VALVE_OPEN
        assert status(bus) == r.Status(False, False, False, False, True)
        bus.write_byte_data(A, r.REG_RELAY_CMD, r.RELAYS_SAFE)
    relays = sim.state()["pico"]["relays"]
    assert relays == {"power_on": False, "gas_valve_open": False, "spark_on": False}


def test_unsafe_sequences_are_refused(sim: SimProcess) -> None:
    with sim.smbus() as bus:
        bus.write_byte_data(A, r.REG_RELAY_CMD, r.RELAY_POWER_ON)
        assert bus.read_byte_data(A, r.REG_RELAY_STATE) == r.RELAYS_SAFE, "no relays before the first kick"
        assert status(bus).cmd_rejected
        bus.write_byte_data(A, r.REG_CLEAR_FAULTS, r.CLEAR_FAULTS_MAGIC)
        bus.write_byte_data(A, r.REG_WATCHDOG_KICK, r.KICK_MAGIC)
        bus.write_byte_data(A, r.REG_RELAY_CMD, r.RELAY_POWER_ON | r.RELAY_GAS_VALVE_OPEN)
        bus.write_byte_data(A, r.REG_RELAY_CMD, r.RELAY_GAS_VALVE_OPEN | r.RELAY_SPARK_ON)
        assert bus.read_byte_data(A, r.REG_RELAY_STATE) == r.RELAYS_SAFE, "valve without power: all safe"
        assert status(bus).cmd_rejected
        with pytest.raises(OSError) as info:
            bus.write_byte_data(A, r.REG_RELAY_STATE, 0x01)
        assert info.value.errno == errno.EREMOTEIO
    assert sim.state()["pico"]["i2c"]["rejected"] == 2


def test_watchdog_expiry_puts_relays_safe_within_the_window(sim: SimProcess) -> None:
    with sim.smbus() as bus:
        bus.write_byte_data(A, r.REG_WATCHDOG_KICK, r.KICK_MAGIC)
        bus.write_byte_data(A, r.REG_RELAY_CMD, ALL_ON)
        assert bus.read_byte_data(A, r.REG_RELAY_STATE) == ALL_ON
        bus.write_byte_data(A, r.REG_WATCHDOG_KICK, r.KICK_MAGIC)  # the last kick
    state = sim.wait_for(lambda s: s["pico"]["watchdog"]["expired"], timeout=3.0)
    pico = state["pico"]
    last_kick = pico["watchdog"]["last_kick_at"]
    stamps = pico["timestamps"]
    for key in ("power_cut_at", "valve_closed_at", "spark_off_at", "safe_at", "wdt_expired_at"):
        assert 0.495 <= stamps[key] - last_kick <= 0.5 + WDT_TOLERANCE_S, (key, stamps[key] - last_kick)
    assert pico["relays"] == {"power_on": False, "gas_valve_open": False, "spark_on": False}
    causes = {t["cause"] for t in pico["transitions"] if not t["on"]}
    assert causes == {"watchdog"}
    with sim.smbus() as bus:
        assert status(bus).wdt_expired and not status(bus).wdt_armed
        bus.write_byte_data(A, r.REG_WATCHDOG_KICK, r.KICK_MAGIC)
        bus.write_byte_data(A, r.REG_RELAY_CMD, r.RELAY_POWER_ON)
        assert bus.read_byte_data(A, r.REG_RELAY_STATE) == r.RELAYS_SAFE, "expiry must be acknowledged"
        bus.write_byte_data(A, r.REG_CLEAR_FAULTS, r.CLEAR_FAULTS_MAGIC)
        bus.write_byte_data(A, r.REG_RELAY_CMD, r.RELAY_POWER_ON)
        assert bus.read_byte_data(A, r.REG_RELAY_STATE) == r.RELAY_POWER_ON


def test_trip_latch_survives_kill_9_until_the_reset_sequence(sim_factory: Any) -> None:
    first = sim_factory()
    with first.smbus() as bus:
        bus.write_byte_data(A, r.REG_WATCHDOG_KICK, r.KICK_MAGIC)
        bus.write_byte_data(A, r.REG_RELAY_CMD, ALL_ON)
        bus.write_byte_data(A, r.REG_TRIP, r.TRIP_MAGIC)
        assert bus.read_byte_data(A, r.REG_RELAY_STATE) == r.RELAYS_SAFE
        assert status(bus).trip_latched
    tripped = first.state()["pico"]
    assert tripped["timestamps"]["power_cut_at"] == pytest.approx(tripped["timestamps"]["tripped_at"], abs=0.05)
    first.kill9()

    second = sim_factory()
    with second.smbus() as bus:
        assert status(bus).trip_latched
        bus.write_byte_data(A, r.REG_WATCHDOG_KICK, r.KICK_MAGIC)
        bus.write_byte_data(A, r.REG_RELAY_CMD, r.RELAY_POWER_ON)
        assert bus.read_byte_data(A, r.REG_RELAY_STATE) == r.RELAYS_SAFE
        assert status(bus).cmd_rejected
        bus.write_byte_data(A, r.REG_RESET, r.RESET_CONFIRM)  # confirm without arm: refused
        assert status(bus).trip_latched
        bus.write_byte_data(A, r.REG_RESET, r.RESET_ARM)
        bus.write_byte_data(A, r.REG_RESET, r.RESET_CONFIRM)
        assert not status(bus).trip_latched
        bus.write_byte_data(A, r.REG_CLEAR_FAULTS, r.CLEAR_FAULTS_MAGIC)
        bus.write_byte_data(A, r.REG_RELAY_CMD, r.RELAY_POWER_ON)
        assert bus.read_byte_data(A, r.REG_RELAY_STATE) == r.RELAY_POWER_ON
    assert second.terminate() == 0, "SIGTERM is a clean shutdown"
    assert client.read_marker(second.run_dir) is None


def test_i2c_nack_and_unreachable_simulator_raise_oserror_121(sim: SimProcess) -> None:
    client.inject(sim.control_port, "i2c_nack")
    with sim.smbus() as bus:
        with pytest.raises(OSError) as info:
            bus.read_byte_data(A, r.REG_ID)
        assert (info.value.errno, info.value.strerror) == (121, "Remote I/O error")
        client.clear(sim.control_port, "i2c_nack")
        assert bus.read_byte_data(A, r.REG_ID) == r.PICO_ID
        with pytest.raises(OSError) as info:
            bus.read_byte_data(0x43, r.REG_ID)
        assert info.value.errno == 121
    assert sim.state()["pico"]["i2c"]["nacks"] == 2

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    started = time.monotonic()
    with SimulatedSMBus(f"sim://127.0.0.1:{closed_port}") as bus:
        with pytest.raises(OSError) as info:
            bus.write_byte_data(A, r.REG_WATCHDOG_KICK, r.KICK_MAGIC)
    assert info.value.errno == 121
    assert time.monotonic() - started < 0.5


def test_simbus_reconnects_after_a_simulator_restart(sim_factory: Any) -> None:
    first = sim_factory()
    port = int(first.info["i2c_port"])
    bus = first.smbus()
    assert bus.read_byte_data(A, r.REG_ID) == r.PICO_ID
    first.kill9()
    sim_factory("--i2c-port", str(port))
    assert bus.read_byte_data(A, r.REG_ID) == r.PICO_ID, "a stale connection is replaced, not failed"
    bus.close()


def _gone(pid: int, timeout: float = 3.0) -> bool:
    """Whether process ``pid`` has ended (or is a zombie nobody reaped) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_the_pico_is_a_process_of_its_own_that_ends_with_the_simulator(sim_factory: Any) -> None:
    """A board of its own answers whatever the simulator's bus flood keeps busy, and no board
    outlives the simulated hardware: killed or stopped, its Pico goes and its port closes."""
    first = sim_factory()
    pico_pid, port = int(first.info["pico_pid"]), int(first.info["i2c_port"])
    assert pico_pid != first.proc.pid and not _gone(pico_pid, timeout=0)
    with first.smbus() as bus:
        assert bus.read_byte_data(A, r.REG_ID) == r.PICO_ID
    first.kill9()
    assert _gone(pico_pid), "the Pico outlived a simulator killed with SIGKILL"
    assert _refused(port)

    second = sim_factory("--i2c-port", str(port))
    pico_pid = int(second.info["pico_pid"])
    assert second.terminate() == 0
    assert _gone(pico_pid, timeout=0), "SIGTERM: the simulator waits for its Pico to end"
    assert _refused(port)


def test_a_simulator_whose_pico_dies_stops_with_an_error(sim: SimProcess) -> None:
    """Hardware without its relay board is not left looking ready."""
    os.kill(int(sim.info["pico_pid"]), signal.SIGKILL)
    assert sim.proc.wait(5) == 1
    assert client.read_marker(sim.run_dir) is None
    assert "the Pico is gone" in sim.log_path.read_text()


def test_parse_target() -> None:
    assert parse_target("sim://127.0.0.1:5000") == 5000
    assert parse_target(5001) == 5001
    with pytest.raises(ValueError):
        parse_target("sim://10.0.0.1:5000")
