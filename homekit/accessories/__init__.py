"""One accessory family per module; :data:`KINDS` maps a schema kind to its class."""

from __future__ import annotations

from homekit.accessories.alarms import AlarmAccessory
from homekit.accessories.base import FeedAccessory
from homekit.accessories.cutoff import CutoffAccessory, LatchAccessory
from homekit.accessories.heater import HeaterAccessory
from homekit.accessories.sensors import TemperatureAccessory

KINDS: dict[str, type[FeedAccessory]] = {
    "heater": HeaterAccessory,
    "temperature": TemperatureAccessory,
    "alarm": AlarmAccessory,
    "cutoff": CutoffAccessory,
    "latch": LatchAccessory,
}

__all__ = ["KINDS", "FeedAccessory"]
