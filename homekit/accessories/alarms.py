"""Alarms: one ContactSensor per severity; "open" (not detected) while an alarm of it is active.

The Home app alerts on an open contact sensor, and shows its StatusFault: both are set
while at least one alarm of the severity is active, so a FATAL is seen on the lock screen.
"""

from __future__ import annotations

from pyhap.const import CATEGORY_SENSOR

from homekit.accessories.base import CONTACT_DETECTED, CONTACT_NOT_DETECTED, FeedAccessory, update
from homekit.snapshot import Snapshot


class AlarmAccessory(FeedAccessory):
    """The active alarms of one severity (FATAL, CRITICAL or WARNING)."""

    category = CATEGORY_SENSOR

    def build(self) -> None:
        self.severity = str(self.spec.options["severity"])
        service = self.service("ContactSensor", ["ContactSensorState"])
        self.contact = service.configure_char("ContactSensorState", value=CONTACT_DETECTED)
        self.active: list[str] = []

    def render(self, snapshot: Snapshot) -> None:
        self.active = [a["alarm_id"] for a in snapshot.active_alarms(self.severity)]
        update(self.contact, CONTACT_NOT_DETECTED if self.active else CONTACT_DETECTED)

    def own_fault(self) -> bool:
        return bool(self.active)
