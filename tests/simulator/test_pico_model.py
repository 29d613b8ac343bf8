"""The Pico state machine and the thermal model, with a fake clock (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.i2c import registers as r
from simulator.nvram import NVRAM_FILENAME, Nvram
from simulator.physics import HeaterModel
from simulator.pico import Nack, Pico


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pico(tmp_path: Path, clock: FakeClock) -> Pico:
    return Pico(Nvram(tmp_path), window_ms=500, clock=clock, wall=clock)


def kick(pico: Pico) -> None:
    pico.write(r.PICO_ADDRESS, r.REG_WATCHDOG_KICK, r.KICK_MAGIC)


def command(pico: Pico, value: int) -> None:
    pico.write(r.PICO_ADDRESS, r.REG_RELAY_CMD, value)


def status(pico: Pico) -> r.Status:
    return r.decode_status(pico.read(r.PICO_ADDRESS, r.REG_STATUS))


ALL_ON = r.RELAY_POWER_ON | r.RELAY_GAS_VALVE_OPEN | r.RELAY_SPARK_ON


def test_identity_and_window(pico: Pico) -> None:
    assert pico.read(r.PICO_ADDRESS, r.REG_ID) == 0x50
    assert r.decode_wdt_window(pico.read(r.PICO_ADDRESS, r.REG_WDT_WINDOW)) == 500


def test_relays_refused_before_first_kick(pico: Pico) -> None:
    command(pico, r.RELAY_POWER_ON)
    assert pico.read(r.PICO_ADDRESS, r.REG_RELAY_STATE) == r.RELAYS_SAFE
    assert status(pico).cmd_rejected


def test_watchdog_expiry_goes_safe_and_blocks_until_cleared(pico: Pico, clock: FakeClock) -> None:
    kick(pico)
    command(pico, ALL_ON)
    assert pico.read(r.PICO_ADDRESS, r.REG_RELAY_STATE) == ALL_ON
    clock.now += 0.499
    assert not pico.check_watchdog()
    clock.now += 0.002
    assert pico.check_watchdog()
    assert pico.contacts() == r.RELAYS_SAFE
    assert pico.timestamps["power_cut_at"] == clock.now
    kick(pico)
    command(pico, r.RELAY_POWER_ON)
    assert pico.contacts() == r.RELAYS_SAFE, "WDT_EXPIRED must be acknowledged first"
    pico.write(r.PICO_ADDRESS, r.REG_CLEAR_FAULTS, r.CLEAR_FAULTS_MAGIC)
    command(pico, r.RELAY_POWER_ON)
    assert pico.contacts() == r.RELAY_POWER_ON
    assert status(pico) == r.Status(False, False, False, False, True)


def test_bad_kicks_are_counted_and_do_not_feed_the_watchdog(pico: Pico, clock: FakeClock) -> None:
    kick(pico)
    command(pico, r.RELAY_POWER_ON)
    for _ in range(3):
        clock.now += 0.2
        pico.write(r.PICO_ADDRESS, r.REG_WATCHDOG_KICK, 0x5A)
    assert pico.read(r.PICO_ADDRESS, r.REG_BAD_KICKS) == 3
    assert pico.contacts() == r.RELAYS_SAFE
    assert status(pico).wdt_expired


@pytest.mark.parametrize("value", [r.RELAY_GAS_VALVE_OPEN, r.RELAY_SPARK_ON, 0x08 | r.RELAY_POWER_ON])
def test_unsafe_combinations_refused_and_drive_safe(pico: Pico, value: int) -> None:
    kick(pico)
    command(pico, r.RELAY_POWER_ON | r.RELAY_GAS_VALVE_OPEN)
    command(pico, value)
    assert pico.contacts() == r.RELAYS_SAFE
    assert pico.read(r.PICO_ADDRESS, r.REG_RELAY_CMD) == r.RELAY_POWER_ON | r.RELAY_GAS_VALVE_OPEN
    assert status(pico).cmd_rejected


def test_trip_latches_in_nvram_and_reset_window(tmp_path: Path, pico: Pico, clock: FakeClock) -> None:
    kick(pico)
    command(pico, ALL_ON)
    pico.write(r.PICO_ADDRESS, r.REG_TRIP, r.TRIP_MAGIC)
    assert pico.contacts() == r.RELAYS_SAFE
    reborn = Pico(Nvram(tmp_path), clock=clock, wall=clock)
    assert reborn.trip_latched
    kick(reborn)
    command(reborn, r.RELAY_POWER_ON)
    assert reborn.contacts() == r.RELAYS_SAFE
    # arm, then confirm too late: refused, still latched
    reborn.write(r.PICO_ADDRESS, r.REG_RESET, r.RESET_ARM)
    clock.now += 1.01
    reborn.write(r.PICO_ADDRESS, r.REG_RESET, r.RESET_CONFIRM)
    assert reborn.trip_latched and status(reborn).cmd_rejected
    reborn.write(r.PICO_ADDRESS, r.REG_RESET, r.RESET_ARM)
    clock.now += 0.5
    reborn.write(r.PICO_ADDRESS, r.REG_RESET, r.RESET_CONFIRM)
    assert not reborn.trip_latched
    assert not Pico(Nvram(tmp_path), clock=clock, wall=clock).trip_latched


def test_unreadable_nvram_counts_as_tripped(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / NVRAM_FILENAME).write_text("{not json")
    assert Pico(Nvram(tmp_path), clock=clock, wall=clock).trip_latched


def test_wrong_magic_and_bad_registers(pico: Pico) -> None:
    pico.write(r.PICO_ADDRESS, r.REG_TRIP, 0x00)
    assert not pico.trip_latched and status(pico).cmd_rejected
    with pytest.raises(Nack):
        pico.write(r.PICO_ADDRESS, r.REG_ID, 1)
    with pytest.raises(Nack):
        pico.read(r.PICO_ADDRESS, r.REG_TRIP)
    with pytest.raises(Nack):
        pico.read(r.PICO_ADDRESS, 0x42)
    with pytest.raises(Nack):
        pico.read(0x43, r.REG_ID)


def test_stuck_valve_shows_in_readback_and_power_cut_ends_it(pico: Pico) -> None:
    kick(pico)
    command(pico, r.RELAY_POWER_ON)
    pico.set_valve_stuck(True)
    assert pico.read(r.PICO_ADDRESS, r.REG_RELAY_STATE) == r.RELAY_POWER_ON | r.RELAY_GAS_VALVE_OPEN
    assert status(pico).valve_stuck
    command(pico, r.RELAYS_SAFE)
    assert pico.contacts() == r.RELAYS_SAFE


def test_heating_cycle_fits_the_bench_budget() -> None:
    model = HeaterModel()
    elapsed = 0.0
    model.step(0.1, power=True, valve_open=True, spark=True)
    model.step(0.1, power=True, valve_open=True, spark=True)
    assert model.flame
    while model.temperature_c < 45.0:
        model.step(0.02, power=True, valve_open=True, spark=False)
        elapsed += 0.02
    assert elapsed <= 20.0
    model.step(0.02, power=True, valve_open=False, spark=False)
    assert not model.flame


def test_no_flame_without_spark_or_gas() -> None:
    model = HeaterModel()
    for _ in range(50):
        model.step(0.02, power=True, valve_open=True, spark=False)
    assert not model.flame
    for _ in range(50):
        model.step(0.02, power=False, valve_open=True, spark=True)
    assert not model.flame and model.temperature_c == pytest.approx(20.0)
