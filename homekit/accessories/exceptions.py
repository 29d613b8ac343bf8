"""The exceptions count: a LightSensor whose light level is the number of unhandled exceptions.

HomeKit has no counter. Among the standard characteristics that the Home app shows as a
plain number, can be read by automations ("when the level rises above 0, notify me") and
needs no third-party app, the light sensor's CurrentAmbientLightLevel is the usual choice
for bridging a count; it is shown in "lux". A custom characteristic would be invisible in
the Home app. The value is ExceptionsServer's total over every sender (unknown senders
included: they raise their own security alarm besides), as the feed carries it.

HAP bounds the level to 0.0001 … 100000: zero exceptions show as 0.0001 (the Home app
displays 0 lux), and a count beyond the upper bound shows the bound. StatusFault is set
while the count is not known (the feed away, or ExceptionsServer's state not read yet).
"""

from __future__ import annotations

from pyhap.const import CATEGORY_SENSOR

from homekit.accessories.base import FeedAccessory, update
from homekit.snapshot import Snapshot

#: CurrentAmbientLightLevel's bounds in HAP.
MIN_LEVEL, MAX_LEVEL = 0.0001, 100000.0


def level(count: int) -> float:
    """A count as a light level HAP accepts."""
    return min(MAX_LEVEL, max(MIN_LEVEL, float(count)))


class ExceptionsAccessory(FeedAccessory):
    """The number of unhandled exceptions the platform's services reported."""

    category = CATEGORY_SENSOR

    def build(self) -> None:
        service = self.service("LightSensor", ["CurrentAmbientLightLevel"])
        self.count = service.configure_char("CurrentAmbientLightLevel", value=MIN_LEVEL)
        self.total: int | None = None

    def render(self, snapshot: Snapshot) -> None:
        self.total = snapshot.exceptions_total
        if self.total is not None:
            update(self.count, level(self.total))

    def own_fault(self) -> bool:
        return self.total is None
