"""Water temperature sensors: one TemperatureSensor per sensor the schema names."""

from __future__ import annotations

from pyhap.const import CATEGORY_SENSOR

from homekit.accessories.base import FeedAccessory, update
from homekit.snapshot import Snapshot


class TemperatureAccessory(FeedAccessory):
    """The latest reading of one sensor; a fault while it has none or flags its own."""

    category = CATEGORY_SENSOR

    def build(self) -> None:
        self.sensor = str(self.spec.options["sensor"])
        service = self.service("TemperatureSensor", ["CurrentTemperature"])
        self.current = service.configure_char("CurrentTemperature", properties={"minValue": -40, "maxValue": 150})
        self._faulty = True

    def render(self, snapshot: Snapshot) -> None:
        self._faulty = snapshot.sensor_faulty(self.sensor)
        value = snapshot.temperature(self.sensor)
        if value is not None:
            update(self.current, round(value, 1))

    def own_fault(self) -> bool:
        return self._faulty
