"""One accessory family per module; :data:`KINDS` maps a schema kind to its class.

Service accessories are not in :data:`KINDS`: the schema's ``services`` entry is a
template, and the bridge makes one :class:`ServiceAccessory` per registered service.
"""

from __future__ import annotations

from homekit.accessories.alarms import AlarmAccessory
from homekit.accessories.base import FeedAccessory
from homekit.accessories.cutoff import CutoffAccessory, LatchAccessory
from homekit.accessories.exceptions import ExceptionsAccessory
from homekit.accessories.heater import HeaterAccessory
from homekit.accessories.sensors import TemperatureAccessory
from homekit.accessories.services import ServiceAccessory

KINDS: dict[str, type[FeedAccessory]] = {
    "heater": HeaterAccessory,
    "temperature": TemperatureAccessory,
    "alarm": AlarmAccessory,
    "cutoff": CutoffAccessory,
    "latch": LatchAccessory,
    "exceptions": ExceptionsAccessory,
}

__all__ = ["KINDS", "FeedAccessory", "ServiceAccessory"]
