"""The disaster detector's changelog-backed tables, and how its facts travel in them.

Four tables, each a JSON object per key so the rules module stays free of Faust:

* ``disaster-job`` — ``job`` → the heating job's last state (:class:`JobFacts`);
* ``disaster-valve`` — ``valve`` → the last relay readback and valve command (:class:`ValveFacts`);
* ``disaster-windows`` — sensor id → its recent samples (:class:`SensorWindow`), written
  only while the water is watched (the broker's memory storage keeps every write);
* ``disaster-detections`` — disaster id → :class:`Detection`, so a replay after a crash or
  a restart after an operator reset finds the episode already reported.

Writes happen inside a ledger step.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import faust

from streams.consistency import Ledger
from streams.tables import json_table
from streams.disaster_rules import DisasterWatch, Detection, JobFacts, RuleLimits, SensorWindow, ValveFacts

JOB_KEY = "job"
VALVE_KEY = "valve"


class DisasterTables:
    """The detector's four tables, with conversions to and from the rules' facts.

    Written through the service's ledger (:mod:`streams.consistency`), so the facts, the
    input position and the reports they owe come back from one moment after a crash.
    """

    def __init__(self, app: faust.App, ledger: Ledger) -> None:
        self.job = ledger.tracked(json_table(app, "disaster-job", "the heating job's last state"))
        self.valve = ledger.tracked(json_table(app, "disaster-valve", "last relay readback and valve command"))
        self.windows = ledger.tracked(json_table(app, "disaster-windows", "recent samples per water sensor"))
        self.detections = ledger.tracked(json_table(app, "disaster-detections", "disasters already reported, by id"))

    def load(self, limits: RuleLimits) -> DisasterWatch:
        """A watch restored from the (recovered) tables."""
        job = self.job.get(JOB_KEY)
        valve = self.valve.get(VALVE_KEY)
        return DisasterWatch(
            limits,
            job=JobFacts(**job) if job else None,
            valve=ValveFacts(**valve) if valve else None,
            windows={sensor: window_from(data) for sensor, data in self.windows.items()},
            detections=[Detection(**data) for data in self.detections.values()],
        )

    def save_job(self, job: JobFacts) -> None:
        self.job[JOB_KEY] = asdict(job)

    def save_valve(self, valve: ValveFacts) -> None:
        self.valve[VALVE_KEY] = asdict(valve)

    def save_window(self, window: SensorWindow) -> None:
        self.windows[window.sensor] = WindowRow(window)

    def save_detection(self, detection: Detection) -> None:
        self.detections[detection.disaster_id] = asdict(detection)


class WindowRow:
    """A window as its table row, listed only when the row is written out (JSON's ``__json__``).

    Every watched reading saves its sensor's window, but only a run's last save of a key is
    written; a sensor flooding the bus keeps tens of thousands of samples, and listing them
    for each reading cost the detector more than its rules. Windows are values, so listing
    one later gives what listing it now would.
    """

    __slots__ = ("window",)

    def __init__(self, window: SensorWindow) -> None:
        self.window = window

    def __json__(self) -> dict[str, Any]:
        return {"sensor": self.window.sensor, "samples": [list(s) for s in self.window.samples]}


def window_from(data: dict[str, Any] | WindowRow) -> SensorWindow:
    if isinstance(data, WindowRow):  # saved in a run not committed yet
        return data.window
    return SensorWindow(data["sensor"], tuple((float(t), float(v)) for t, v in data["samples"]))
