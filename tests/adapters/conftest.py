"""Fixtures of the CAN adapter tests: the bus under contract, and the adapter as a process.

The contract bus is the simulator's (python-can ``remote``) unless
``HEATER_CAN_CONTRACT_CHANNEL`` names another, as ``interface:channel`` — e.g.
``socketcan:can0`` on the Pi or ``socketcan:vcan0`` on a Linux box with vcan.  A
SocketCAN channel that names no network device skips the contract suite; nothing else does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import can
import pytest

from adapters.can.bus import open_bus
from heater.runtime.broker import EmbeddedBroker
from heater.runtime.processes import free_port
from heater.runtime.vault import EmbeddedVault
from tests.simulator.conftest import SimProcess, start_simulator
from tests.support import ServiceProcess, wait_for

CONTRACT_ENV = "HEATER_CAN_CONTRACT_CHANNEL"


@dataclass(frozen=True)
class ContractBus:
    """Where the contract suite runs: one interface and channel, opened as often as needed."""

    interface: str
    channel: str
    simulated: bool

    def open(self) -> can.BusABC:
        """A node on the bus, opened the way the adapter opens it."""
        return open_bus(self.interface, self.channel)

    def missing_channel(self) -> str:
        """A channel of the same interface that cannot exist (for the 'unavailable' contract)."""
        if self.interface == "remote":
            return f"ws://127.0.0.1:{free_port()}/"
        return "nocan9"


@pytest.fixture(scope="module")
def contract_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContractBus]:
    """The bus the backend contract runs on (the simulation unless configured otherwise)."""
    configured = os.environ.get(CONTRACT_ENV, "").strip()
    if configured:
        interface, _, channel = configured.partition(":")
        if not channel:
            pytest.fail(f"{CONTRACT_ENV}={configured!r}: expected interface:channel, e.g. socketcan:can0")
        if interface == "socketcan" and not Path("/sys/class/net", channel).exists():
            pytest.skip(f"{CONTRACT_ENV}: no CAN network device {channel!r} on this machine")
        yield ContractBus(interface, channel, simulated=False)
        return
    sim = start_simulator(tmp_path_factory.mktemp("can-contract"))
    try:
        yield ContractBus("remote", sim.can_channel, simulated=True)
    finally:
        sim.terminate()


class CanAdapterProcess(ServiceProcess):
    """The CAN adapter (``heater worker can``) on a free port, on the given bus; its views verify ``vault``'s tokens."""

    def __init__(self, broker: EmbeddedBroker, run_dir: Path, channel: str, vault: EmbeddedVault,
                 interface: str = "remote") -> None:
        super().__init__("can", broker.url, run_dir,
                         {"HEATER_CAN_INTERFACE": interface, "HEATER_CAN_CHANNEL": channel}, vault=vault)

    def view(self) -> dict[str, Any]:
        """The adapter's ``/can`` view."""
        status, body = self.get("/can")
        assert status == 200, body
        return body

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class CanStack:
    """Broker, simulated hardware and one running CAN adapter."""

    broker: EmbeddedBroker
    sim: SimProcess
    adapter: CanAdapterProcess
    ready_s: float
    can_port: int
    vault: EmbeddedVault

    def restart_simulator(self) -> SimProcess:
        """Stop the hardware and start it again on the same CAN port (tests replace, never leak, it)."""
        self.sim.terminate()
        self.sim = start_simulator(self.sim.run_dir, "--can-port", str(self.can_port))
        return self.sim


@pytest.fixture(scope="module")
def can_stack(broker: EmbeddedBroker, vault: EmbeddedVault, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CanStack]:
    """The session broker, a simulator and a CAN adapter process, for one test module."""
    run_dir = tmp_path_factory.mktemp("can-stack")
    can_port = free_port()
    sim = start_simulator(run_dir / "sim", "--can-port", str(can_port))
    adapter = CanAdapterProcess(broker, run_dir, sim.can_channel, vault).start()
    stack: CanStack | None = None
    try:
        ready_s = adapter.wait_ready(timeout=30)
        stack = CanStack(broker, sim, adapter, ready_s, can_port, vault)
        yield stack
    finally:
        (stack.adapter if stack else adapter).stop()
        (stack.sim if stack else sim).terminate()


def wait_view(adapter: CanAdapterProcess, predicate: Any, timeout: float = 10.0, what: str = "/can condition") -> dict[str, Any]:
    """Poll ``/can`` until ``predicate(view)`` holds; the view that satisfied it."""
    holder: dict[str, Any] = {}

    def check() -> bool:
        assert adapter.alive(), adapter.tail()
        holder["view"] = adapter.view()
        return bool(predicate(holder["view"]))

    wait_for(check, timeout, 0.05, what=what)
    return holder["view"]
