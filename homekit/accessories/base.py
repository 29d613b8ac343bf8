"""What every accessory of the bridge shares: it shows a snapshot, and a fault while the feed is away.

Data flows two ways and never mixes: :meth:`FeedAccessory.show` only sets characteristics
from the feed; a phone's write only calls the one injected command function (the heater
has one; the rest are read-only). No accessory talks to Kafka or to a device.
"""

from __future__ import annotations

from typing import Any, Callable

from pyhap.accessory import Accessory
from pyhap.characteristic import Characteristic

from homekit.schema import AccessorySpec
from homekit.snapshot import Snapshot

#: HomeKit's StatusFault values.
NO_FAULT, GENERAL_FAULT = 0, 1
#: ContactSensorState values: "detected" is the quiet state, "not detected" the one that alerts.
CONTACT_DETECTED, CONTACT_NOT_DETECTED = 0, 1

Command = Callable[[str, dict[str, Any]], None]


class FeedAccessory(Accessory):
    """An accessory that follows the feed; every one has a StatusFault characteristic."""

    category: int

    def __init__(self, driver: Any, spec: AccessorySpec, command: Command) -> None:
        super().__init__(driver, spec.name)
        self.spec = spec
        self.command = command
        self.faults: list[Characteristic] = []
        self.backend_down = True  # until the first snapshot: nothing shown is known yet
        self.build()
        self.set_fault_chars()

    def build(self) -> None:
        """Add this family's services through :meth:`service`."""
        raise NotImplementedError

    def service(self, name: str, chars: list[str]) -> Any:
        """A HAP service with ``chars`` and a StatusFault, which says the backend is away (or the family's own fault)."""
        service = self.add_preload_service(name, chars=[*chars, "StatusFault"])
        self.faults.append(service.get_characteristic("StatusFault"))
        return service

    def show(self, snapshot: Snapshot) -> None:
        """Set characteristics from a snapshot (only those that changed notify the phone)."""
        self.backend_down = False
        self.render(snapshot)
        self.set_fault_chars()

    def render(self, snapshot: Snapshot) -> None:
        """Set this family's characteristics from a snapshot (faults are set after it)."""
        raise NotImplementedError

    def own_fault(self) -> bool:
        """A fault of the thing shown (a sensor without readings, an active alarm)."""
        return False

    def lose_backend(self) -> None:
        """The feed is away: show a fault until the next snapshot."""
        self.backend_down = True
        self.set_fault_chars()

    def set_fault_chars(self) -> None:
        value = GENERAL_FAULT if self.backend_down or self.own_fault() else NO_FAULT
        for char in self.faults:
            if char.value != value:
                char.set_value(value)


def update(char: Characteristic, value: Any) -> None:
    """Set a characteristic only when its value changes, so the phone gets one event per change."""
    if char.value != value:
        char.set_value(value)
