"""The gas valve's view of the sensors: the newest valid temperature and flame readings.

The I2C adapter keeps the valve open only while fresh temperature readings arrive, and
needs the flame to prove ignition and to see it lost (DESIGN rule 3). It used to take
every ``sensorData`` reading for that, and on a flooded bus (9,000 readings a second) the
process that cuts the power on a FATAL spent its time in readings it then dropped. This
adapter sees every frame anyway; it says what the valve needs on ``sensorFreshness``
with each batch of readings it publishes, so the I2C adapter reads at most ten small
records a second whatever the bus carries.

Pure: frames in, records out. :class:`adapters.can.service.CanAdapter` feeds it and sends.
"""

from __future__ import annotations

from adapters.can.frames import DecodedFrame, FrameKind
from streams.records import SensorFreshness


class FreshnessTracker:
    """The newest valid temperature and flame reading, and whether the valve has been told."""

    def __init__(self) -> None:
        self.temperature_at = 0.0
        self.flame = False
        self.flame_at = 0.0
        self._told = (0.0, False, 0.0)

    def on_frame(self, frame: DecodedFrame, received_at: float) -> None:
        """A valid frame; a sensor that flags its own reading faulty does not keep the valve open."""
        if frame.sensor_fault:
            return
        if frame.kind is FrameKind.WATER_TEMP:
            self.temperature_at = max(self.temperature_at, received_at)
        elif frame.kind is FrameKind.BURNER_STATUS and received_at >= self.flame_at:
            self.flame, self.flame_at = bool(frame.flame), received_at

    def news(self, now: float) -> SensorFreshness | None:
        """The record to send if anything changed since the last one, else None (marks it told)."""
        state = (self.temperature_at, self.flame, self.flame_at)
        if state == self._told:
            return None
        self._told = state
        return SensorFreshness(temperature_at=self.temperature_at, flame=self.flame, flame_at=self.flame_at,
                               sent_at=now)

    def retell(self) -> None:
        """The last record may not have reached the broker: say it again with the next batch."""
        self._told = (0.0, False, 0.0)
