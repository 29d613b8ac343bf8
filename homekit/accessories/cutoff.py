"""The power cut-off and the FATAL latch: two ContactSensors, "open" when the cut-off has tripped / the platform is latched."""

from __future__ import annotations

from pyhap.const import CATEGORY_SENSOR

from homekit.accessories.base import CONTACT_DETECTED, CONTACT_NOT_DETECTED, FeedAccessory, update
from homekit.snapshot import Snapshot


class CutoffAccessory(FeedAccessory):
    """The power cut-off as the relay board reports it: open once it has tripped, until the reset."""

    category = CATEGORY_SENSOR

    def build(self) -> None:
        service = self.service("ContactSensor", ["ContactSensorState"])
        self.contact = service.configure_char("ContactSensorState", value=CONTACT_DETECTED)
        self._unknown = True

    def render(self, snapshot: Snapshot) -> None:
        cut = snapshot.power_cut
        self._unknown = cut is None  # no readback from the board yet: shown as a fault, not as "on"
        update(self.contact, CONTACT_NOT_DETECTED if cut else CONTACT_DETECTED)

    def own_fault(self) -> bool:
        return self._unknown


class LatchAccessory(FeedAccessory):
    """The FATAL latch: open from the first FATAL until the operator reset."""

    category = CATEGORY_SENSOR

    def build(self) -> None:
        service = self.service("ContactSensor", ["ContactSensorState"])
        self.contact = service.configure_char("ContactSensorState", value=CONTACT_DETECTED)
        self._latched = False

    def render(self, snapshot: Snapshot) -> None:
        self._latched = snapshot.latched
        update(self.contact, CONTACT_NOT_DETECTED if self._latched else CONTACT_DETECTED)

    def own_fault(self) -> bool:
        return self._latched
