"""StateRegistry's changelog-backed tables, written inside ledger steps.

* ``registry-services`` — service name → :class:`ServiceEntry` (last beat, watched, missing);
* ``registry-strangers`` — unauthorized senders already reported (one FATAL each);
* ``registry-disasters`` — disaster id → the ``DisasterDetected`` report, for the platform view.
"""

from __future__ import annotations

from typing import Any

import faust

from streams.consistency import Ledger
from streams.tables import json_table
from streams.records import DisasterEvent
from streams.registry_rules import Registry, RegistryLimits, ServiceEntry

#: Disasters kept for the platform view (the newest).
DISASTERS_KEPT = 50


class RegistryTables:
    def __init__(self, app: faust.App, ledger: Ledger) -> None:
        self.services = ledger.tracked(json_table(app, "registry-services", "every service's last beat and watch state"))
        self.strangers = ledger.tracked(json_table(app, "registry-strangers", "unauthorized senders reported"))
        self.disasters = ledger.tracked(json_table(app, "registry-disasters", "disasters reported on DisasterDetected"))

    def load(self, limits: RegistryLimits) -> Registry:
        return Registry(
            limits,
            services={name: ServiceEntry.from_row(row) for name, row in self.services.items()},
            strangers={key: dict(row) for key, row in self.strangers.items()},
        )

    def save_service(self, entry: ServiceEntry) -> None:
        self.services[entry.name] = entry.to_row()

    def save_stranger(self, key: str, row: dict[str, Any]) -> None:
        self.strangers[key] = dict(row)

    def save_disaster(self, event: DisasterEvent) -> None:
        self.disasters[event.disaster_id] = event.asdict()
        if len(self.disasters) > DISASTERS_KEPT:
            oldest = min(self.disasters.items(), key=lambda item: item[1]["detected_at"])[0]
            del self.disasters[oldest]

    def recent_disasters(self) -> list[dict[str, Any]]:
        return sorted((dict(row) for row in self.disasters.values()), key=lambda row: row["detected_at"], reverse=True)
