"""The simulated Pico's answer time, at rest and while the simulator floods the CAN bus.

The FATAL path ends with one I2C write to the Pico (TRIP); the time the simulated board
takes to answer is part of every FATAL → cut measurement, and a real board answers in
microseconds whatever the bus carries. Starts its own broker, Vault, simulator, CAN
adapter, BankManager and DisasterDetector (the flood's readers, which keep both cores busy as
on the platform), then reads the Pico's status register
``RATE_HZ`` times a second, as the I2C adapter does, for ``--seconds`` at rest and again
while a burst of 9,000 frames/s runs.

Prints progress, then ONE JSON line: round-trip percentiles per phase (``flood`` is the
headline: ``p50_ms``, ``p99_ms``, ``max_ms``). Run: ``python bench/pico_round_trip.py``
(about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.i2c import registers as r  # noqa: E402
from adapters.i2c.simbus import SimulatedSMBus  # noqa: E402
from bench.can_ingest import burst_state, start_adapter, start_simulator, stop_simulator  # noqa: E402
from bench.stats import percentile  # noqa: E402
from heater.runtime.broker import EmbeddedBroker  # noqa: E402
from heater.runtime.services import ServiceProcess  # noqa: E402
from heater.runtime.vault import EmbeddedVault  # noqa: E402
from simulator import client  # noqa: E402

RATE_HZ = 50.0
FLOOD_FPS = 9000.0
#: The flood starts this long before the probing, and outlasts it by as much.
FLOOD_MARGIN_S = 1.0
#: The services that read the flood besides the CAN adapter.
READERS = ("bank", "disaster")
START_TIMEOUT_S = 60.0


def progress(text: str) -> None:
    print(f"[pico-round-trip {time.strftime('%H:%M:%S')}] {text}", flush=True)


def probe(i2c_url: str, seconds: float) -> dict[str, Any]:
    """Status reads at ``RATE_HZ`` for ``seconds``: round-trip percentiles in ms."""
    rtts: list[float] = []
    with SimulatedSMBus(i2c_url) as bus:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.perf_counter()
            bus.read_byte_data(r.PICO_ADDRESS, r.REG_STATUS)
            rtts.append((time.perf_counter() - began) * 1000)
            time.sleep(1.0 / RATE_HZ)
    return {"reads": len(rtts), "p50_ms": round(percentile(rtts, 50), 2), "p90_ms": round(percentile(rtts, 90), 2),
            "p99_ms": round(percentile(rtts, 99), 2), "max_ms": round(max(rtts), 2),
            "over_5ms": sum(rtt > 5 for rtt in rtts)}


def run(seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-pico-") as tmp:
        root = Path(tmp)
        progress("starting broker and Vault")
        with EmbeddedBroker(root / "broker") as broker, EmbeddedVault(root / "vault") as vault:
            progress("starting simulator, CAN adapter, " + ", ".join(READERS))
            sim, info = start_simulator(root / "sim")
            services: list[ServiceProcess] = []
            try:
                services += [ServiceProcess(name, broker.url, root, vault=vault).start() for name in READERS]
                services.append(start_adapter(root, broker, info["can_channel"], vault))
                for service in services:
                    service.wait_ready(timeout=START_TIMEOUT_S)
                control = int(info["control_port"])
                progress(f"at rest: {seconds:.0f} s of status reads at {RATE_HZ:.0f} Hz")
                quiet = probe(info["i2c_url"], seconds)
                progress(f"flooded: the same while {FLOOD_FPS:.0f} frames/s cross the bus")
                client.burst(control, int(FLOOD_FPS * (seconds + 2 * FLOOD_MARGIN_S)), FLOOD_FPS, sensor=1)
                time.sleep(FLOOD_MARGIN_S)
                load = os.getloadavg()[0]
                flood = probe(info["i2c_url"], seconds)
                while burst_state(control)["running"]:
                    time.sleep(0.2)
                flood["bus_fps"] = round(burst_state(control)["sent"] / (seconds + 2 * FLOOD_MARGIN_S), 1)
            finally:
                for service in services:
                    service.stop()
                stop_simulator(sim)
    return {"p50_ms": flood["p50_ms"], "p99_ms": flood["p99_ms"], "max_ms": flood["max_ms"],
            "flood": flood, "quiet": quiet, "seconds": seconds, "cpus": os.cpu_count(), "load_avg_1m": round(load, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="probing per phase (default 20)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
