"""The water heater: a HeaterCooler that only heats.

Shows the water temperature (median of the schema's sensors), whether a heating job runs
(Active) and whether the burner is lit (CurrentHeaterCoolerState Heating; Idle while a job
waits or follows the water with the gas closed). The heating threshold is the job's
target. A phone's write becomes one call of the injected command: ``start`` with a target
(Active on, or a new threshold) or ``stop`` (Active off); the platform decides, and the
characteristics follow what it reports, not what was written.
"""

from __future__ import annotations

from typing import Any

from pyhap.const import CATEGORY_HEATER

from homekit.accessories.base import FeedAccessory, update
from homekit.snapshot import Snapshot
from streams.heater_config import HeaterLimits

INACTIVE, IDLE, HEATING = 0, 1, 2
TARGET_HEAT = 1
#: The lowest target offered on the phone: below it a gas burner has nothing to do.
MIN_TARGET_C = 10.0


class HeaterAccessory(FeedAccessory):
    """The heater: current and target water temperature, heating state, start/stop a job."""

    category = CATEGORY_HEATER

    def build(self) -> None:
        self.sensors = [str(s) for s in self.spec.options["sensors"]]
        limits = HeaterLimits()
        default_target = float(self.spec.options.get("default_target_c", min(45.0, limits.max_target_c)))
        service = self.service("HeaterCooler", ["Active", "CurrentHeaterCoolerState", "TargetHeaterCoolerState",
                                                "CurrentTemperature", "HeatingThresholdTemperature"])
        self.active = service.configure_char("Active", value=0)
        self.state = service.configure_char("CurrentHeaterCoolerState", value=INACTIVE)
        mode = service.get_characteristic("TargetHeaterCoolerState")
        mode.value = TARGET_HEAT  # before narrowing the valid values, so the default (Auto) is never judged
        mode.override_properties(valid_values={"Heat": TARGET_HEAT})
        self.current = service.configure_char("CurrentTemperature", properties={"minValue": -40, "maxValue": 150})
        self.target = service.configure_char(
            "HeatingThresholdTemperature", value=default_target,
            properties={"minValue": MIN_TARGET_C, "maxValue": limits.max_target_c, "minStep": 0.5},
        )
        service.setter_callback = self.on_write
        self.last: Snapshot | None = None

    def render(self, snapshot: Snapshot) -> None:
        self.last = snapshot
        water = snapshot.water_temperature(self.sensors)
        if water is not None:
            update(self.current, round(water, 1))
        running = snapshot.job_running
        update(self.active, 1 if running else 0)
        update(self.state, HEATING if snapshot.burner_on else IDLE if running else INACTIVE)
        job = snapshot.job
        if running and job is not None:
            update(self.target, float(job["target_c"]))

    def on_write(self, values: dict[str, Any]) -> None:
        """One write from the phone (all characteristics it set at once) → one command."""
        if values.get("Active") == 0:
            self.command("stop", {})
        elif "HeatingThresholdTemperature" in values or values.get("Active") == 1:
            target = float(values.get("HeatingThresholdTemperature", self.target.value))
            self.command("start", {"target_c": target})

    def revert(self) -> None:
        """A refused command: show again what the platform reports."""
        if self.last is not None:
            self.render(self.last)
