"""The Home app as the tests play it: a real aiohomekit controller on 127.0.0.1, no zeroconf.

It pairs with the bridge at its known address and port (retrying: about 1 % of
pairings fail SRP at step 4), reads every accessory, subscribes, keeps each event with
its arrival time, and writes characteristics as a phone does.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohomekit.characteristic_cache import CharacteristicCacheMemory
from aiohomekit.controller.ip.controller import IpController
from aiohomekit.controller.ip.discovery import IpDiscovery
from aiohomekit.controller.ip.pairing import IpPairing
from aiohomekit.model.categories import Categories
from aiohomekit.model.characteristics import CharacteristicsTypes
from aiohomekit.model.feature_flags import FeatureFlags
from aiohomekit.model.status_flags import StatusFlags
from aiohomekit.zeroconf import HomeKitService

PAIR_ATTEMPTS = 3
NAME = CharacteristicsTypes.NAME
#: Characteristic UUID → the short name the tests use.
CHARS: dict[str, str] = {
    CharacteristicsTypes.TEMPERATURE_CURRENT: "CurrentTemperature",
    CharacteristicsTypes.STATUS_FAULT: "StatusFault",
    CharacteristicsTypes.CONTACT_STATE: "ContactSensorState",
    CharacteristicsTypes.ACTIVE: "Active",
    CharacteristicsTypes.CURRENT_HEATER_COOLER_STATE: "CurrentHeaterCoolerState",
    CharacteristicsTypes.TARGET_HEATER_COOLER_STATE: "TargetHeaterCoolerState",
    CharacteristicsTypes.TEMPERATURE_HEATING_THRESHOLD: "HeatingThresholdTemperature",
    CharacteristicsTypes.STATUS_ACTIVE: "StatusActive",
    CharacteristicsTypes.LIGHT_LEVEL_CURRENT: "CurrentAmbientLightLevel",
}


@dataclass
class Event:
    name: str  # accessory name
    char: str
    value: Any
    at: float  # time.monotonic() on arrival


@dataclass
class HomeApp:
    """One paired controller and what it has seen."""

    address: str
    port: int
    controller: IpController | None = None
    pairing: IpPairing | None = None
    ids: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)  # (aid, iid) → (accessory, char)
    aids: dict[str, int] = field(default_factory=dict)  # accessory name → aid, as last read
    events: list[Event] = field(default_factory=list)
    pair_attempts: int = 0

    async def pair(self, pin: str) -> IpPairing:
        """Pair, retrying a failed attempt (the bridge stays unpaired after a failed one)."""
        self.controller = IpController(char_cache=CharacteristicCacheMemory(), zeroconf_instance=None)
        last: Exception | None = None
        for attempt in range(1, PAIR_ATTEMPTS + 1):
            self.pair_attempts = attempt
            discovery = IpDiscovery(self.controller, self.description())
            try:
                finish = await discovery.async_start_pairing(f"test-{attempt}")
                self.pairing = await finish(pin)
                break
            except Exception as exc:  # SRP's rare padding mismatch: try again with a fresh exchange
                last = exc
                await discovery.close()
                await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"pairing failed {PAIR_ATTEMPTS} times; last: {last!r}")
        self.pairing.dispatcher_connect(self._on_event)
        return self.pairing

    def description(self) -> HomeKitService:
        return HomeKitService(
            name="Heater", id="00:00:00:00:00:00", model="", feature_flags=FeatureFlags(0),
            status_flags=StatusFlags.UNPAIRED, config_num=1, state_num=1, category=Categories.BRIDGE,
            protocol_version="1.1", type="_hap._tcp.local.", address=self.address, addresses=[self.address],
            port=self.port,
        )

    async def reconnect(self, pairing_data: dict[str, Any]) -> IpPairing:
        """A controller that was paired before: only its keys, a new connection (as after a phone restart)."""
        self.controller = IpController(char_cache=CharacteristicCacheMemory(), zeroconf_instance=None)
        self.pairing = IpPairing(self.controller, pairing_data)
        self.pairing.dispatcher_connect(self._on_event)
        return self.pairing

    async def read_all(self) -> dict[str, dict[str, Any]]:
        """Every accessory by name → its characteristics by short name (with (aid, iid) kept for writes)."""
        assert self.pairing is not None
        accessories = await self.pairing.list_accessories_and_characteristics()
        seen: dict[str, dict[str, Any]] = {}
        self.aids = {}
        for accessory in accessories:
            chars = [c for s in accessory["services"] for c in s["characteristics"]]
            name = next(c["value"] for c in chars if c["type"] == NAME or c["type"] == "23")
            values: dict[str, Any] = {}
            for char in chars:
                short = CHARS.get(char["type"].upper()) or CHARS.get(_long(char["type"]))
                if short:
                    values[short] = char.get("value")
                    self.ids[(accessory["aid"], char["iid"])] = (name, short)
            seen[name] = values
            self.aids[name] = accessory["aid"]
        return seen

    def iid(self, accessory: str, char: str) -> tuple[int, int]:
        return next(key for key, where in self.ids.items() if where == (accessory, char))

    async def subscribe_all(self) -> None:
        assert self.pairing is not None
        await self.pairing.subscribe(list(self.ids))

    async def read(self, accessory: str, char: str) -> Any:
        assert self.pairing is not None
        key = (self.aids[accessory], self.iid(accessory, char)[1])
        return (await self.pairing.get_characteristics([key]))[key]["value"]

    async def write(self, accessory: str, values: dict[str, Any]) -> dict[Any, Any]:
        """Write characteristics of one accessory in one request; the bridge's per-characteristic errors."""
        assert self.pairing is not None
        return await self.pairing.put_characteristics([(*self.iid(accessory, c), v) for c, v in values.items()])

    def _on_event(self, data: dict[tuple[int, int], dict[str, Any]]) -> None:
        at = time.monotonic()
        for key, value in data.items():
            where = self.ids.get(key)
            if where is not None and "value" in value:
                self.events.append(Event(where[0], where[1], value["value"], at))

    async def wait_event(self, accessory: str, char: str, predicate: Any, since: float, timeout: float = 10.0) -> Event:
        """The first event on ``accessory``/``char`` after ``since`` whose value satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.at >= since and event.name == accessory and event.char == char and predicate(event.value):
                    return event
            await asyncio.sleep(0.01)
        recent = [(e.name, e.char, e.value) for e in self.events if e.at >= since][-10:]
        raise AssertionError(f"no event {accessory}/{char} in {timeout} s; recent: {recent}")

    async def close(self) -> None:
        if self.pairing is not None:
            await self.pairing.close()


def _long(short: str) -> str:
    """A HAP short type ("11") as its full UUID."""
    return f"{int(short, 16):08X}-0000-1000-8000-0026BB765291" if len(short) <= 8 else short.upper()
