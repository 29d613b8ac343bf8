"""The HAP bridge: the accessories the schema names, shown from the feed's snapshots."""

from __future__ import annotations

from typing import Any

from pyhap.accessory import Bridge

from homekit.accessories import KINDS, FeedAccessory
from homekit.accessories.base import Command
from homekit.schema import BridgeSpec
from homekit.snapshot import Snapshot


class HeaterBridge(Bridge):
    """A HAP bridge whose accessories all follow the feed."""

    def __init__(self, driver: Any, spec: BridgeSpec, command: Command) -> None:
        super().__init__(driver, spec.name)
        self.set_info_service(manufacturer=spec.manufacturer, model=spec.model)
        self.feed_accessories: list[FeedAccessory] = []
        for accessory_spec in spec.accessories:
            accessory = KINDS[accessory_spec.kind](driver, accessory_spec, command)
            self.add_accessory(accessory)
            self.feed_accessories.append(accessory)

    def show(self, snapshot: Snapshot) -> None:
        for accessory in self.feed_accessories:
            accessory.show(snapshot)

    def lose_backend(self) -> None:
        for accessory in self.feed_accessories:
            accessory.lose_backend()

    def revert(self) -> None:
        """After a refused command, every accessory shows the platform's state again."""
        for accessory in self.feed_accessories:
            revert = getattr(accessory, "revert", None)
            if revert is not None:
                revert()
