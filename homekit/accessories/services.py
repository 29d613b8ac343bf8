"""Services: one ContactSensor per service StateRegistry watches, made and removed as the registry changes.

The registry decides who is healthy; the accessory only shows its verdict (the feed
carries the registry's own rows, :mod:`streams.homekit_feed`):

* **ContactSensorState** — "detected" (closed) while the service is there; "not detected"
  (open, the state the Home app alerts on) once the registry judges it missing;
* **StatusActive** — on while the service reports itself ready; off while it starts,
  stops, or stays up halted after a FATAL (shown, not acting: DESIGN rule 2);
* **StatusFault** — a missing service, or nothing known (the feed away, or the registry's
  state not read yet).

ContactSensor matches the bridge's other status accessories (alarms, cut-off, latch):
open is the state that needs the operator. Names come from the schema's ``services``
entry (``name_format``); the bridge gives each a stable AID (:mod:`homekit.aids`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from pyhap.const import CATEGORY_SENSOR

from homekit.accessories.base import CONTACT_DETECTED, CONTACT_NOT_DETECTED, FeedAccessory, update
from homekit.snapshot import Snapshot

#: The registry's phase of a service that acts (see :class:`streams.lifecycle.Phase`).
READY = "ready"


@dataclass(frozen=True)
class ServiceLook:
    """What one service's accessory shows."""

    contact: int
    active: bool
    fault: bool


UNKNOWN = ServiceLook(CONTACT_DETECTED, False, True)


def look(row: dict[str, Any] | None) -> ServiceLook:
    """The registry's row of a service → its accessory's characteristics (None: not known)."""
    if row is None:
        return UNKNOWN
    if row.get("missing"):
        return ServiceLook(CONTACT_NOT_DETECTED, False, True)
    return ServiceLook(CONTACT_DETECTED, row.get("phase") == READY, False)


def changes(shown: Iterable[str], wanted: Iterable[str]) -> tuple[list[str], list[str]]:
    """Which services' accessories to add and which to remove, in name order."""
    shown, wanted = set(shown), set(wanted)
    return sorted(wanted - shown), sorted(shown - wanted)


class ServiceAccessory(FeedAccessory):
    """One service as the registry sees it: there or missing, active or not."""

    category = CATEGORY_SENSOR

    def build(self) -> None:
        self.service_name = str(self.spec.options["service"])
        service = self.service("ContactSensor", ["ContactSensorState", "StatusActive"])
        self.contact = service.configure_char("ContactSensorState", value=CONTACT_DETECTED)
        self.active = service.configure_char("StatusActive", value=False)
        self.shown = UNKNOWN

    def render(self, snapshot: Snapshot) -> None:
        services = snapshot.services
        self.shown = look(None if services is None else services.get(self.service_name))
        update(self.contact, self.shown.contact)
        update(self.active, self.shown.active)

    def own_fault(self) -> bool:
        return self.shown.fault
