"""Contract of the RelayBoard backend: the simulated Pico by default, a real one on request.

``HEATER_I2C_TEST_BUS`` names the bus to test (``1``, ``/dev/i2c-1`` or
``sim://127.0.0.1:PORT``); unset, a simulator is started for the module.  Every test
leaves the board safe and untripped.  Tests that need the simulator's fault injection
are skipped on real hardware.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from adapters.i2c import registers as r
from adapters.i2c.board import BoardError, RelayBoard, WrongDevice, backend_for, group_hint
from simulator import client
from tests.simulator.conftest import SimProcess, start_simulator

BUS_ENV = "HEATER_I2C_TEST_BUS"
P = r.Relays(power_on=True)
PV = r.Relays(power_on=True, gas_valve_open=True)
PVS = r.Relays(power_on=True, gas_valve_open=True, spark_on=True)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SimProcess | None]]:
    """The bus under test, and the simulator behind it when there is one."""
    bus = os.environ.get(BUS_ENV)
    if bus:
        name, argument = backend_for(bus)
        if name == "smbus":
            node = Path(argument if isinstance(argument, str) else f"/dev/i2c-{argument}")
            if not node.exists():
                pytest.skip(f"{BUS_ENV}={bus}: physical I2C bus {node} not present on this machine")
        yield bus, None
        return
    sim = start_simulator(tmp_path_factory.mktemp("i2c-contract"))
    yield sim.i2c_url, sim
    sim.terminate()


@pytest.fixture
def board(target: tuple[str, SimProcess | None]) -> Iterator[RelayBoard]:
    """The board, safe, untripped, faults cleared and watchdog disarmed (expired and cleared)."""
    with RelayBoard.open(target[0]) as board:
        settle(board)
        yield board
        board.write_relays(r.SAFE)
        if board.read_status().trip_latched:
            board.reset_latch()


@pytest.fixture
def sim(target: tuple[str, SimProcess | None]) -> Iterator[SimProcess]:
    if target[1] is None:
        pytest.skip(f"running on the physical I2C bus {target[0]}: injecting NACKs and faults needs the simulated Pico, not a real device")
    yield target[1]
    client.clear(target[1].control_port)


def settle(board: RelayBoard) -> None:
    board.write_relays(r.SAFE)
    if board.read_status().trip_latched:
        board.reset_latch()
    window = board.watchdog_window_ms() / 1000
    deadline = time.monotonic() + window + 1.0
    while board.read_status().wdt_armed:
        assert time.monotonic() < deadline, "watchdog did not expire"
        time.sleep(0.02)
    board.clear_faults()
    assert board.read_status() == r.Status(False, False, False, False, False)


def test_identity_and_window(board: RelayBoard) -> None:
    assert board.identify() == r.PICO_ID
    assert 10 <= board.watchdog_window_ms() <= 2550
    assert board.bad_kicks() == 0


def test_safe_write_always_accepted(board: RelayBoard) -> None:
    board.write_relays(r.SAFE)
    readback = board.read_back()
    assert readback.confirms(r.SAFE) and not readback.status.cmd_rejected


def test_energising_needs_an_armed_watchdog(board: RelayBoard) -> None:
    board.write_relays(P)
    readback = board.read_back()
    assert readback.contacts == r.SAFE and readback.status.cmd_rejected
    board.clear_faults()
    board.kick()
    assert board.read_status().wdt_armed
    for relays in (P, PV, PVS, PV, P, r.SAFE):
        board.write_relays(relays)
        board.kick()
        assert board.read_back().confirms(relays), relays


def test_unsafe_combination_refused_and_everything_safe(board: RelayBoard) -> None:
    board.kick()
    board.write_relays(PV)
    assert board.read_back().confirms(PV)
    board.bus.write_byte_data(board.address, r.REG_RELAY_CMD, r.RELAY_GAS_VALVE_OPEN)  # valve without power
    readback = board.read_back()
    assert readback.contacts == r.SAFE and readback.status.cmd_rejected


def test_watchdog_expiry_drives_safe_and_needs_clear_faults(board: RelayBoard) -> None:
    board.kick()
    board.write_relays(PV)
    kicked_at = time.monotonic()
    window = board.watchdog_window_ms() / 1000
    while board.read_contacts() != r.SAFE:
        assert time.monotonic() - kicked_at < window + 0.2, "watchdog did not drive the relays safe"
        time.sleep(0.01)
    assert time.monotonic() - kicked_at >= window - 0.05
    status = board.read_status()
    assert status.wdt_expired and not status.wdt_armed
    board.kick()
    board.write_relays(P)
    assert board.read_contacts() == r.SAFE, "energising refused until CLEAR_FAULTS"
    board.clear_faults()
    board.kick()
    board.write_relays(P)
    assert board.read_back().confirms(P)


def test_trip_latches_until_the_reset_sequence(board: RelayBoard) -> None:
    board.kick()
    board.write_relays(PVS)
    board.trip()
    readback = board.read_back()
    assert readback.status.trip_latched and readback.contacts == r.SAFE and readback.command == r.SAFE
    board.kick()
    board.write_relays(P)
    assert board.read_contacts() == r.SAFE, "energising refused while tripped"
    board.bus.write_byte_data(board.address, r.REG_RESET, r.RESET_CONFIRM)  # confirm without arm
    assert board.read_status().trip_latched
    board.reset_latch()
    assert not board.read_status().trip_latched


def test_reset_sequence_must_be_completed_within_the_window(board: RelayBoard) -> None:
    board.trip()
    board.bus.write_byte_data(board.address, r.REG_RESET, r.RESET_ARM)
    time.sleep(r.RESET_WINDOW_S + 0.1)
    board.bus.write_byte_data(board.address, r.REG_RESET, r.RESET_CONFIRM)
    status = board.read_status()
    assert status.trip_latched and status.cmd_rejected


def test_bad_kicks_are_counted_not_obeyed(board: RelayBoard) -> None:
    board.bus.write_byte_data(board.address, r.REG_WATCHDOG_KICK, 0x00)
    assert board.bad_kicks() == 1 and not board.read_status().wdt_armed


def test_missing_device_and_bad_registers_are_remote_io_errors(board: RelayBoard) -> None:
    ghost = RelayBoard(board.bus, address=0x43)
    with pytest.raises(BoardError) as caught:
        ghost.read_status()
    assert caught.value.errno == 121 and caught.value.operation == "read STATUS"
    with pytest.raises(OSError) as raw:
        board.bus.read_byte_data(board.address, r.REG_TRIP)  # write-only register
    assert raw.value.errno == 121
    board.identify()  # the bus recovers after a NACK


def test_nack_fault_surfaces_as_board_error(board: RelayBoard, sim: SimProcess) -> None:
    client.inject(sim.control_port, "i2c_nack")
    with pytest.raises(BoardError) as caught:
        board.kick()
    assert caught.value.errno == 121
    client.clear(sim.control_port, "i2c_nack")
    board.kick()


def test_welded_valve_shows_in_contacts_and_status(board: RelayBoard, sim: SimProcess) -> None:
    client.inject(sim.control_port, "stuck_valve")
    board.kick()
    board.write_relays(P)
    readback = board.read_back()
    assert readback.command == P and readback.contacts == PV and readback.status.valve_stuck
    assert not readback.confirms(P)
    board.write_relays(r.SAFE)
    assert board.read_contacts() == r.SAFE, "the power cut ends a welded valve"


def test_wrong_device_is_named() -> None:
    class Impostor:
        def read_byte_data(self, addr: int, reg: int) -> int:
            return 0x99

    with pytest.raises(WrongDevice):
        RelayBoard(Impostor()).identify()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bus,expected",
    [
        ("1", ("smbus", 1)),
        ("/dev/i2c-3", ("smbus", "/dev/i2c-3")),
        ("sim://127.0.0.1:5555", ("sim", "sim://127.0.0.1:5555")),
    ],
)
def test_backend_chosen_by_bus_name(bus: str, expected: tuple[str, object]) -> None:
    assert backend_for(bus) == expected


@pytest.mark.parametrize("bus", ["", "i2c", "tcp://127.0.0.1:1", "-1"])
def test_unknown_bus_names_refused(bus: str) -> None:
    with pytest.raises(ValueError):
        backend_for(bus)


def test_a_device_the_adapter_may_not_open_names_the_group_the_pod_needs() -> None:
    """The relay board's gid differs between OS images: the adapter's start-up error says which one to set."""
    wrong = group_hint("/dev/i2c-1", 994, [10001, 998])
    assert "group 994" in wrong and "[998, 10001]" in wrong and "supplementalGroups" in wrong
    assert "deploy/overlays/pi/i2c.yaml" in wrong
    mode = group_hint("/dev/i2c-1", 998, [10001, 998])
    assert "supplementalGroups" not in mode and "ls -l /dev/i2c-1" in mode
