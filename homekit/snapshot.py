"""One state of the platform as the feed sends it, with the questions accessories ask of it.

Pure: no HAP, no sockets. The feed's JSON (see :mod:`streams.homekit_feed`) is kept as
it came; these accessors decide what counts as running, heating or stale.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

#: Heating job states after which no job runs.
ENDED_STATES = frozenset({"done", "failed", "fatal", "stopped", "cancelled"})


@dataclass(frozen=True)
class Snapshot:
    """The whole state from one feed message."""

    data: dict[str, Any] = field(default_factory=dict)

    @property
    def seq(self) -> int:
        return int(self.data.get("seq", 0))

    def temperature(self, sensor: str) -> float | None:
        reading = (self.data.get("sensors") or {}).get(sensor)
        if not reading or reading.get("value") is None:
            return None
        return float(reading["value"])

    def sensor_faulty(self, sensor: str) -> bool:
        """No reading yet, or the sensor flags its own fault (status bits)."""
        reading = (self.data.get("sensors") or {}).get(sensor)
        return reading is None or bool(reading.get("status", 0))

    def water_temperature(self, sensors: list[str]) -> float | None:
        """The median of the sensors that report: one wrong sensor does not move it."""
        values = [t for t in (self.temperature(s) for s in sensors) if t is not None]
        return statistics.median(values) if values else None

    def active_alarms(self, severity: str) -> list[dict[str, Any]]:
        return [a for a in self.data.get("alarms") or [] if a.get("severity") == severity]

    @property
    def latched(self) -> bool:
        return bool((self.data.get("latch") or {}).get("latched"))

    @property
    def power_cut(self) -> bool | None:
        """True when the board reports its power cut-off tripped (latched until the reset); None before any readback.

        Power merely off is the heater at rest (a heating job switches it on), not a cut-off.
        """
        relays = self.data.get("relays")
        if not relays:
            return None
        return bool(relays.get("trip_latched"))

    @property
    def valve_open(self) -> bool:
        return bool((self.data.get("relays") or {}).get("valve_open"))

    @property
    def job(self) -> dict[str, Any] | None:
        return self.data.get("heating")

    @property
    def job_running(self) -> bool:
        job = self.job
        return bool(job) and job.get("state") not in ENDED_STATES

    @property
    def burner_on(self) -> bool:
        """A running job that has lit the burner (the gas valve open)."""
        return self.job_running and (self.job or {}).get("state") in ("igniting", "heating") and self.valve_open

    @property
    def services(self) -> dict[str, dict[str, Any]] | None:
        """The services StateRegistry watches, by name, as it last recorded them; None while the feed does not know.

        A service the operator stopped watching (the registry's ``/registry/watch``) is left out:
        it is no longer part of the platform the phone shows.
        """
        rows = self.data.get("services")
        if rows is None:
            return None
        return {name: row for name, row in rows.items() if row.get("watched", True)}

    @property
    def exceptions_total(self) -> int | None:
        """Unhandled exceptions ExceptionsServer has counted, from every sender; None while unknown."""
        counts = self.data.get("exceptions")
        return None if counts is None else int(counts.get("total", 0))
