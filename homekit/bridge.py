"""The HAP bridge: the accessories the schema names, and one per registered service, shown from the feed.

The schema's accessories are fixed at start. Service accessories follow the registry:
a snapshot that lists a new service adds one, a service no longer listed (the operator
stopped watching it) loses its one. Each change of the set is announced the HAP way —
the configuration number goes up (kept in HAP-python's state file, advertised over mDNS
where mDNS is on) — so a controller reads ``/accessories`` again. Service accessories
keep their AIDs for good (:mod:`homekit.aids`).
"""

from __future__ import annotations

import logging
from typing import Any

from pyhap.accessory import Bridge

from homekit.accessories import KINDS, FeedAccessory, ServiceAccessory
from homekit.accessories.base import Command
from homekit.accessories.services import changes
from homekit.aids import RESERVED, AidStore
from homekit.schema import BridgeSpec
from homekit.snapshot import Snapshot

log = logging.getLogger(__name__)

SERVICE_KEY = "service:"


class HeaterBridge(Bridge):
    """A HAP bridge whose accessories all follow the feed."""

    def __init__(self, driver: Any, spec: BridgeSpec, command: Command, aids: AidStore) -> None:
        super().__init__(driver, spec.name)
        self.set_info_service(manufacturer=spec.manufacturer, model=spec.model)
        self.spec = spec
        self.command = command
        self.aids = aids
        self.feed_accessories: list[FeedAccessory] = []
        self.service_accessories: dict[str, ServiceAccessory] = {}
        for accessory_spec in spec.accessories:
            accessory = KINDS[accessory_spec.kind](driver, accessory_spec, command)
            self.add_accessory(accessory)
            self.feed_accessories.append(accessory)
        if spec.services is not None:  # the set shown last, until the feed says otherwise
            for key in aids.shown:
                if key.startswith(SERVICE_KEY):
                    self._add_service(key[len(SERVICE_KEY):])

    def show(self, snapshot: Snapshot) -> None:
        services = snapshot.services
        if self.spec.services is not None and services is not None:
            self.follow_registry(services)
        for accessory in self.every_accessory():
            accessory.show(snapshot)

    def follow_registry(self, services: dict[str, Any]) -> bool:
        """Add and remove service accessories to match the registry; True (and announced) when the set changed."""
        add, remove = changes(self.service_accessories, services)
        for name in remove:
            accessory = self.service_accessories.pop(name)
            del self.accessories[accessory.aid]
            log.info("homekit: service %s no longer registered; accessory %r (aid %d) removed",
                     name, accessory.display_name, accessory.aid)
        for name in add:
            accessory = self._add_service(name)
            log.info("homekit: service %s registered; accessory %r (aid %d) added", name, accessory.display_name,
                     accessory.aid)
        if not (add or remove):
            return False
        self.aids.set_shown(SERVICE_KEY + name for name in self.service_accessories)
        self._announce()
        return True

    def _add_service(self, name: str) -> ServiceAccessory:
        assert self.spec.services is not None
        accessory = ServiceAccessory(self.driver, self.spec.services.spec(name), self.command)
        accessory.aid = self.aids.aid_for(SERVICE_KEY + name, {*RESERVED, *self.accessories})
        self.add_accessory(accessory)
        self.service_accessories[name] = accessory
        return accessory

    def _announce(self) -> None:
        """Tell controllers the accessory set changed: a new configuration number (only if the set really differs)."""
        driver = self.driver
        if getattr(driver, "aio_stop_event", None) is None:
            return  # not serving yet: the driver compares the set with its state file when it starts
        if driver.state.set_accessories_hash(driver.accessories_hash):
            driver.async_persist()
            driver.async_update_advertisement()
            log.info("homekit: accessory set changed; configuration number %d", driver.state.config_version)

    def every_accessory(self) -> list[FeedAccessory]:
        return [*self.feed_accessories, *self.service_accessories.values()]

    def lose_backend(self) -> None:
        for accessory in self.every_accessory():
            accessory.lose_backend()

    def revert(self) -> None:
        """After a refused command, every accessory shows the platform's state again."""
        for accessory in self.feed_accessories:
            revert = getattr(accessory, "revert", None)
            if revert is not None:
                revert()
