"""The three redundant water temperature sensors on the tank.

Each sensor has a small fixed calibration offset and a little noise, a
resolution of 0.1 degC, saturates at the ends of its -40..150 degC range (and
flags itself faulty there), and keeps its own wrapping sequence counter.
Faults change what a sensor reports, never the water itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from adapters.can.frames import (
    SEQUENCE_MODULO,
    STATUS_SENSOR_FAULT,
    TEMPERATURE_MAX_C,
    TEMPERATURE_MIN_C,
)

from .faults import SENSOR_COUNT, FaultSet

BASE_NOISE_C = 0.05
OFFSETS_C = (0.0, 0.1, -0.1)


@dataclass(slots=True)
class Sensor:
    index: int
    offset_c: float
    sequence: int = 0
    last_value: float | None = None
    last_status: int = 0
    sent: int = 0
    last_sent_at: float | None = None

    def next_sequence(self) -> int:
        """The counter for the frame about to be sent (wraps at 65536)."""
        value = self.sequence
        self.sequence = (self.sequence + 1) % SEQUENCE_MODULO
        return value


class SensorBank:
    """Produces each sensor's next reading from the true water temperature."""

    def __init__(self, rng: random.Random, count: int = SENSOR_COUNT) -> None:
        self.rng = rng
        self.sensors = [Sensor(i, OFFSETS_C[i % len(OFFSETS_C)]) for i in range(count)]

    def reading(self, index: int, water_c: float, faults: FaultSet) -> tuple[float, int] | None:
        """``(temperature, status)`` sensor ``index`` would send now; None if silent."""
        sensor = self.sensors[index]
        if faults.for_sensor("sensor_dropout", index):
            return None
        status = STATUS_SENSOR_FAULT if faults.for_sensor("sensor_fault", index) else 0
        forced = faults.for_sensor("overtemp", index)
        if faults.for_sensor("stuck_sensor", index) and sensor.last_value is not None:
            value = sensor.last_value
        elif forced is not None:
            value = forced.params["value"]
        else:
            noisy = faults.for_sensor("noisy_sensor", index)
            sigma = noisy.params["sigma"] if noisy else BASE_NOISE_C
            value = water_c + sensor.offset_c + self.rng.gauss(0.0, sigma)
        if value < TEMPERATURE_MIN_C or value > TEMPERATURE_MAX_C:
            status |= STATUS_SENSOR_FAULT
            value = min(max(value, TEMPERATURE_MIN_C), TEMPERATURE_MAX_C)
        value = round(value, 1)
        sensor.last_value = value
        sensor.last_status = status
        return value, status

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            str(s.index): {
                "temperature": s.last_value,
                "status": s.last_status,
                "next_sequence": s.sequence,
                "sent": s.sent,
                "last_sent_at": s.last_sent_at,
            }
            for s in self.sensors
        }
