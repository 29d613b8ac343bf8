"""The heater's limits: one validated document every control service reads.

Defaults are sized for the simulated tank (~1.8 °C/s with flame, a heating cycle
of ~15 s from 20 to 45 °C) and are plausible for a domestic gas water heater. Rules
that involve rates are measured in real time; nothing here speeds up clocks.
ConfigurationServer publishes this document on the ``config`` topic
(:mod:`streams.config_rules`) and the services that judge readings follow it live; until a
version is published they use these defaults (overridable per field from the environment,
``HEATER_LIMIT_<FIELD>``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Mapping

#: Sensor ids on ``sensorData`` (set by the CAN adapter from the DBC's sensor index).
WATER_SENSORS = ("water.0", "water.1", "water.2")
FLAME_SENSOR = "burner.flame"


class ConfigInvalid(ValueError):
    """A limit is missing, of the wrong type, or inconsistent with the others."""


@dataclass(frozen=True)
class HeaterLimits:
    # Sensor bank (BankManager)
    warning_c: float = 60.0
    critical_c: float = 75.0
    fatal_c: float = 85.0
    stale_after_s: float = 1.0
    implausible_jump_c: float = 5.0
    disagreement_c: float = 3.0
    # Disaster detector
    disaster_c: float = 90.0
    max_rise_c_per_s: float = 4.0
    rise_while_closed_c: float = 2.0
    rise_window_s: float = 3.0
    # Heating job (burner control, EN 298 style)
    max_target_c: float = 55.0
    ignition_safety_s: float = 3.0
    ignition_attempts: int = 3
    spark_s: float = 1.0
    no_change_period_s: float = 6.0
    min_change_c: float = 0.5
    lease_s: float = 3.0
    lease_renew_s: float = 1.0

    def check(self) -> "HeaterLimits":
        """Raise :class:`ConfigInvalid` unless the limits are ordered and positive."""
        if not (self.warning_c < self.critical_c < self.fatal_c < self.disaster_c):
            raise ConfigInvalid("expected warning_c < critical_c < fatal_c < disaster_c")
        if self.max_target_c >= self.warning_c:
            raise ConfigInvalid("max_target_c must stay below warning_c")
        if self.lease_renew_s * 2 > self.lease_s:
            raise ConfigInvalid("lease_renew_s must be at most half of lease_s")
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ConfigInvalid(f"{f.name} must be positive")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "HeaterLimits":
        env = os.environ if env is None else env
        changes: dict[str, float | int] = {}
        for f in fields(cls):
            raw = env.get(f"HEATER_LIMIT_{f.name.upper()}")
            if raw is not None:
                try:
                    changes[f.name] = int(raw) if f.type in (int, "int") else float(raw)
                except ValueError:
                    raise ConfigInvalid(f"HEATER_LIMIT_{f.name.upper()}={raw!r} is not a number") from None
        return replace(cls(), **changes).check()
