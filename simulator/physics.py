"""Thermal model of the tank and the burner's flame.

Sized for benches, not for realism of time scale: with flame the water warms
at ~1.8 degC/s near ambient, so 20 -> 45 degC takes about 15 s; without flame it
cools towards ambient with a 100 s time constant.  The temperature relief
valve caps the tank at 99 degC, so a runaway plateaus instead of diverging.

The flame follows the gas train: it needs power and an open valve, it lights
only after the spark has been on with gas present for ``ignition_delay_s``, and
it goes out the moment power or gas goes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class HeaterModel:
    """Water temperature and flame state, advanced by :meth:`step`."""

    ambient_c: float = 20.0
    temperature_c: float = 20.0
    heat_rate_c_per_s: float = 1.8
    loss_per_s: float = 0.01
    relief_c: float = 99.0
    ignition_delay_s: float = 0.2
    flame: bool = False
    ignition_blocked: bool = False
    valve_leaks: bool = False
    _spark_with_gas_s: float = 0.0

    def step(self, dt: float, power: bool, valve_open: bool, spark: bool) -> None:
        """Advance ``dt`` seconds with the given *actual* relay contacts."""
        # A leaking valve seat feeds a flame that is already lit: invisible on the relays.
        gas = power and (valve_open or (self.valve_leaks and self.flame))
        if not gas:
            self.flame = False
            self._spark_with_gas_s = 0.0
        elif not self.flame and spark and not self.ignition_blocked:
            self._spark_with_gas_s += dt
            if self._spark_with_gas_s >= self.ignition_delay_s:
                self.flame = True
        elif not spark:
            self._spark_with_gas_s = 0.0

        heating = self.heat_rate_c_per_s if self.flame else 0.0
        losses = self.loss_per_s * (self.temperature_c - self.ambient_c)
        self.temperature_c = min(self.relief_c, self.temperature_c + (heating - losses) * dt)

    def set_temperature(self, value_c: float) -> None:
        """Jump the water temperature (e.g. a tank refilled with cold water)."""
        self.temperature_c = min(self.relief_c, value_c)
