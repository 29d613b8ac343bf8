"""Run the simulator as a real subprocess on free loopback ports.

The simulator binds port 0 itself and publishes the ports in its readiness
marker, so there is no window in which another process could take a port
picked here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.i2c import registers as r
from adapters.i2c.simbus import SimulatedSMBus
from simulator import client

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 15.0


@dataclass
class SimProcess:
    """A running simulator and how to reach it."""

    run_dir: Path
    proc: subprocess.Popen[bytes]
    info: dict[str, Any]
    log_path: Path

    @property
    def control_port(self) -> int:
        return int(self.info["control_port"])

    @property
    def can_channel(self) -> str:
        return str(self.info["can_channel"])

    @property
    def i2c_url(self) -> str:
        return str(self.info["i2c_url"])

    def state(self) -> dict[str, Any]:
        return client.get_state(self.control_port)

    def smbus(self) -> SimulatedSMBus:
        return SimulatedSMBus(self.i2c_url)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict[str, Any]:
        """Poll /state until ``predicate`` holds; fail with the last state otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                pytest.fail(f"condition not met within {timeout} s; last state: {state}")
            time.sleep(0.02)

    def terminate(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def start_simulator(run_dir: Path, *extra: str) -> SimProcess:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / client.READY_MARKER).unlink(missing_ok=True)
    log_path = run_dir / f"simulator-{time.monotonic_ns()}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "simulator", "--run-dir", str(run_dir),
                "--can-port", "0", "--i2c-port", "0", "--control-port", "0",
                "--seed", "7", "--log-level", "INFO", *extra,
            ],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        info = client.read_marker(run_dir)
        if info is not None and info.get("pid") == proc.pid:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"simulator did not start:\n{log_path.read_text()}")
        time.sleep(0.02)
    client.wait_ready(int(info["control_port"]), timeout=5.0)
    return SimProcess(run_dir=run_dir, proc=proc, info=info, log_path=log_path)


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    """Start simulators (same run dir by default, so NVRAM carries over)."""
    started: list[SimProcess] = []

    def start(*extra: str, run_dir: Path | None = None) -> SimProcess:
        sim = start_simulator(run_dir or tmp_path / "run", *extra)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        try:
            sim.terminate(timeout=5)
        except subprocess.TimeoutExpired:
            sim.kill9()


@pytest.fixture(scope="module")
def shared_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """One simulator for a module's tests that leave no state behind."""
    sim = start_simulator(tmp_path_factory.mktemp("shared-sim"))
    yield sim
    sim.terminate()


@pytest.fixture
def sim(sim_factory: Callable[..., SimProcess]) -> SimProcess:
    return sim_factory()


@dataclass
class Kicker:
    """Kicks the Pico's watchdog from a thread, like a healthy I2C adapter."""

    url: str
    period_s: float = 0.1
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Kicker:
        bus = SimulatedSMBus(self.url)
        bus.write_byte_data(r.PICO_ADDRESS, r.REG_WATCHDOG_KICK, r.KICK_MAGIC)

        def loop() -> None:
            with bus:
                while not self._stop.wait(self.period_s):
                    try:
                        bus.write_byte_data(r.PICO_ADDRESS, r.REG_WATCHDOG_KICK, r.KICK_MAGIC)
                    except OSError:
                        pass

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)


@pytest.fixture
def kicker() -> Callable[[str], Kicker]:
    """``with kicker(sim.i2c_url): ...`` keeps the watchdog fed for the block."""
    return Kicker
