"""The hardware as one unit: tank, burner, sensors, relay board and CAN traffic.

This is where the pieces meet: the physics model reads the Pico's *actual*
relay contacts, the sensors read the physics, and paced asyncio tasks put
their frames on the bus.  Fault injection and the burst bench act here too.
Everything runs on the simulator's event loop, so no locking is needed; the
Pico itself runs in a process of its own (:mod:`simulator.pico_process`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from adapters.can import frames

from .canbus import CanHost
from .faults import FAULTS, SENSOR_COUNT, Fault, FaultError, FaultSet, build, parse_name
from .physics import HeaterModel
from .pico import Pico
from .pico_process import PicoProcess
from .sensors import SensorBank

log = logging.getLogger(__name__)

SENSOR_PERIOD_S = 0.1
BURNER_PERIOD_S = 0.1
PHYSICS_PERIOD_S = 0.02
MAX_BURST_FRAMES = 1_000_000
MAX_BURST_RATE = 20_000.0


@dataclass(slots=True)
class Burst:
    """One burst bench run, as reported in the state."""

    sensor: int
    count: int
    rate: float
    first_sequence: int
    last_sequence: int
    sent: int = 0
    suppressed: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    running: bool = True


async def paced(rate: float, send_one: Callable[[], bool]) -> None:
    """Call ``send_one`` ``rate`` times a second, evenly, until it returns False.

    Frames due in the same event-loop turn go out together, so the long-run
    rate holds even though sleeps are only millisecond-accurate.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    done = 0
    while True:
        due = int((loop.time() - start) * rate) + 1
        while done < due:
            if not send_one():
                return
            done += 1
        await asyncio.sleep(max(0.0, start + done / rate - loop.time()))


async def every(period: float, phase: float, tick: Callable[[], None], name: str) -> None:
    """Run ``tick`` on a fixed schedule (no drift); skip ticks if far behind."""
    loop = asyncio.get_running_loop()
    next_at = loop.time() + phase
    while True:
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            tick()
        except Exception:
            log.exception("%s tick failed", name)
        next_at += period
        now = loop.time()
        if now - next_at > period:
            next_at = now


class Board:
    """Owns the hardware models and the tasks that make them run."""

    def __init__(
        self,
        pico: Pico | PicoProcess,
        can_host: CanHost,
        model: HeaterModel,
        rng: random.Random,
        sensor_period_s: float = SENSOR_PERIOD_S,
    ) -> None:
        self.pico = pico
        self.can = can_host
        self.model = model
        self.rng = rng
        self.sensors = SensorBank(rng)
        self.faults = FaultSet()
        self.sensor_period_s = sensor_period_s
        self.burst: Burst | None = None
        self._burner_sequence = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._garbage_task: asyncio.Task[None] | None = None
        self._burst_task: asyncio.Task[None] | None = None
        self._last_step = time.monotonic()

    # ---------------------------------------------------------------- running

    def start(self) -> None:
        self._last_step = time.monotonic()
        specs: list[tuple[float, float, Callable[[], None], str]] = [
            (PHYSICS_PERIOD_S, 0.0, self._physics_tick, "physics"),
            (BURNER_PERIOD_S, 0.05, self._burner_tick, "burner"),
            (0.1, 0.0, self.can.drain, "can-drain"),
        ]
        for index in range(SENSOR_COUNT):
            phase = self.sensor_period_s * index / SENSOR_COUNT
            specs.append((self.sensor_period_s, phase, self._sensor_tick(index), f"sensor-{index}"))
        self._tasks = [asyncio.create_task(every(*spec), name=spec[3]) for spec in specs]

    async def stop(self) -> None:
        tasks = [*self._tasks, self._garbage_task, self._burst_task]
        live = [t for t in tasks if t is not None and not t.done()]
        for task in live:
            task.cancel()
        await asyncio.gather(*live, return_exceptions=True)

    def _physics_tick(self) -> None:
        now = time.monotonic()
        dt, self._last_step = now - self._last_step, now
        self.pico.check_watchdog()
        relays = self.pico.relays()
        self.model.step(dt, relays.power_on, relays.gas_valve_open, relays.spark_on)

    def _burner_tick(self) -> None:
        arbitration_id, data = frames.encode_burner_status(self.model.flame, self._burner_sequence)
        if self.can.send(arbitration_id, data, "burner_status"):
            self._burner_sequence = (self._burner_sequence + 1) % frames.SEQUENCE_MODULO

    def _sensor_tick(self, index: int) -> Callable[[], None]:
        sensor = self.sensors.sensors[index]

        def tick() -> None:
            if self.burst is not None and self.burst.running and self.burst.sensor == index:
                return
            reading = self.sensors.reading(index, self.model.temperature_c, self.faults)
            if reading is None or self.can.bus_off:
                return
            value, status = reading
            arbitration_id, data = frames.encode_water_temp(index, value, sensor.sequence, status)
            if self.can.send(arbitration_id, data, "water_temp"):
                sensor.next_sequence()
                sensor.sent += 1
                sensor.last_sent_at = time.time()

        return tick

    # ------------------------------------------------------------------ faults

    def inject(self, name: str, sensor: int | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Activate a fault (or run a one-shot action); returns what was applied."""
        fault = build(name, sensor, params)
        if fault.name == "set_temperature":
            self.model.set_temperature(fault.params["value"])
            log.info("water temperature set to %.1f", fault.params["value"])
            return fault.as_dict()
        self.faults.add(fault)
        log.warning("fault injected: %s", fault.as_dict())
        self._apply_faults(restart_garbage=fault.name == "garbage_frames")
        return fault.as_dict()

    def clear(self, name: str | None = None, sensor: int | None = None) -> list[dict[str, Any]]:
        """Remove one fault (optionally for one sensor) or, with no name, all."""
        if name is not None:
            name, sensor = parse_name(name, sensor)
            if name not in FAULTS:
                raise FaultError(f"unknown fault {name!r}")
        gone = self.faults.remove(name, sensor)
        if gone:
            log.info("faults cleared: %s", [f.name for f in gone])
        self._apply_faults(restart_garbage=False)
        return [f.as_dict() for f in gone]

    def _apply_faults(self, restart_garbage: bool) -> None:
        self.pico.set_valve_stuck("stuck_valve" in self.faults)
        self.pico.nack_all = "i2c_nack" in self.faults
        self.model.ignition_blocked = "ignition_failure" in self.faults
        self.model.valve_leaks = "valve_leak" in self.faults
        if "bus_off" in self.faults:
            self.can.go_bus_off()
        else:
            self.can.recover()
        garbage = self.faults.get("garbage_frames")
        if self._garbage_task is not None and (garbage is None or restart_garbage):
            self._garbage_task.cancel()
            self._garbage_task = None
        if garbage is not None and self._garbage_task is None:
            self._garbage_task = asyncio.create_task(self._garbage(garbage), name="garbage")

    async def _garbage(self, fault: Fault) -> None:
        def send_one() -> bool:
            if "garbage_frames" not in self.faults:
                return False
            kind, arbitration_id, data = self._garbage_frame()
            self.can.send(arbitration_id, data, kind)
            return True

        await paced(fault.params["rate"], send_one)

    def _garbage_frame(self) -> tuple[str, int, bytes]:
        """One frame the codec must reject, of a random kind."""
        rng = self.rng
        choice = rng.randrange(3)
        if choice == 0:
            arbitration_id = rng.randrange(0x800)
            while arbitration_id in (frames.WATER_TEMP_ID, frames.BURNER_STATUS_ID):
                arbitration_id = rng.randrange(0x800)
            return "garbage_unknown_id", arbitration_id, rng.randbytes(rng.randint(0, 8))
        if choice == 1:
            arbitration_id = rng.choice((frames.WATER_TEMP_ID, frames.BURNER_STATUS_ID))
            return "garbage_bad_length", arbitration_id, rng.randbytes(rng.randint(0, 7))
        raw = rng.choice((rng.randint(1501, 0x7FFF), rng.randint(-0x8000, -401)))
        data = struct.pack("<BhBH2x", rng.randrange(SENSOR_COUNT), raw, 0, rng.randrange(1 << 16))
        return "garbage_out_of_range", frames.WATER_TEMP_ID, data

    # ------------------------------------------------------------------- burst

    def start_burst(self, count: int, rate: float, sensor: int = 0) -> dict[str, Any]:
        """Send ``count`` WaterTemp frames of ``sensor`` with consecutive sequence numbers."""
        if self.burst is not None and self.burst.running:
            raise FaultError("a burst is already running")
        if not 1 <= count <= MAX_BURST_FRAMES:
            raise FaultError(f"count {count} outside 1..{MAX_BURST_FRAMES}")
        if not 1.0 <= rate <= MAX_BURST_RATE:
            raise FaultError(f"rate {rate} outside 1..{MAX_BURST_RATE:.0f}")
        if not 0 <= sensor < SENSOR_COUNT:
            raise FaultError(f"sensor {sensor} outside 0..{SENSOR_COUNT - 1}")
        first = self.sensors.sensors[sensor].sequence
        self.burst = Burst(
            sensor=sensor,
            count=count,
            rate=rate,
            first_sequence=first,
            last_sequence=(first + count - 1) % frames.SEQUENCE_MODULO,
        )
        self._burst_task = asyncio.create_task(self._run_burst(self.burst), name="burst")
        return asdict(self.burst)

    async def _run_burst(self, burst: Burst) -> None:
        sensor = self.sensors.sensors[burst.sensor]

        def send_one() -> bool:
            if burst.sent + burst.suppressed >= burst.count:
                return False
            value = round(self.model.temperature_c + sensor.offset_c, 1)
            arbitration_id, data = frames.encode_water_temp(burst.sensor, value, sensor.next_sequence())
            if self.can.send(arbitration_id, data, "water_temp_burst"):
                burst.sent += 1
            else:
                burst.suppressed += 1
            return True

        burst.started_at = time.time()
        try:
            await paced(burst.rate, send_one)
        finally:
            burst.finished_at = time.time()
            burst.running = False
            sensor.sent += burst.sent
            log.info(
                "burst done: %d sent, %d suppressed in %.3f s",
                burst.sent, burst.suppressed, burst.finished_at - burst.started_at,
            )

    # ------------------------------------------------------------------- state

    async def settle(self) -> None:
        """Wait until what the Pico was told is in force in it, and its snapshot is current."""
        if isinstance(self.pico, PicoProcess):
            await self.pico.refresh()

    def state(self) -> dict[str, Any]:
        return {
            "time": time.time(),
            "pico": self.pico.snapshot(),
            "heater": {
                "water_temperature": round(self.model.temperature_c, 2),
                "flame": self.model.flame,
                "ambient": self.model.ambient_c,
                "ignition_blocked": self.model.ignition_blocked,
            },
            "sensors": self.sensors.snapshot(),
            "faults": self.faults.as_list(),
            "can": self.can.counters(),
            "burst": asdict(self.burst) if self.burst is not None else None,
        }
