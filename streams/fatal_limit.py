"""The FATAL temperature limit, checked where a reading enters the platform. Pure: no Kafka, no clock.

BankManager decides over-temperature from ``sensorData``, behind every reading queued
before it. On a saturated bus that queue is long (measured at 9,000 frames/s on two
cores: the bank about 0.5 s behind, the adapter's own queue to ``sensorData`` another
0.4–1 s), and a FATAL waits behind it. So the CAN adapter checks the FATAL limit itself,
on each frame as it decodes it, and raises ``can/overtemp-fatal/<sensor>`` at once: a
second, independent channel for the one limit that cuts the power, like the separate
limiter a burner control keeps beside its regulator. BankManager stays the first
channel and decides everything else.

Both channels judge the same reading the same way (:func:`fresh`), so a glitch the bank
does not believe (a jump beyond ``implausible_jump_c``) does not trip the limiter
either, and both raise FATAL on the same reading. The limiter's occurrence is named by
it: ``can/overtemp-fatal/<sensor>@<received_at>``.

Its FATAL latches the platform at once, and every control service stops: the adapter
before it has judged the other sensors, the bank often before it has decided any of
the overheat. So an operator reset that released a limiter FATAL covers the readings
received up to it, for the bank, as a reset of the bank's own FATAL does: catching up on
them after the reset, the bank does not latch the platform again for the danger the
operator saw; a reading past them still over the limit does (:mod:`streams.bank_rules`).
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.heater_config import HeaterLimits

#: The limiter runs in the CAN adapter; its alarms are that service's.
SOURCE = "can"
CODE = "overtemp-fatal"
#: How the limiter's FATAL occurrences begin: ``can/overtemp-fatal/<sensor>@<received_at>``.
LIMITER_PREFIX = f"{SOURCE}/{CODE}/"


def fresh(previous: tuple[float, float] | None, value: float, at: float, limits: HeaterLimits) -> bool:
    """Whether a reading is believed: ``previous`` is the sensor's last (value, received_at).

    A reading after a gap longer than ``stale_after_s`` (or the first) is believed; one that
    jumps more than ``implausible_jump_c`` from the last is not (a real step is believed one
    reading later, when it no longer jumps).
    """
    if previous is None or at - previous[1] > limits.stale_after_s:
        return True
    return abs(value - previous[0]) <= limits.implausible_jump_c


@dataclass(frozen=True)
class LimitTrip:
    """A believed reading at or over the FATAL limit: raise FATAL for it now."""

    sensor: str
    value: float
    at: float
    limit: float

    @property
    def message(self) -> str:
        return f"{self.sensor} at {self.value:.1f} °C (FATAL limit {self.limit:g} °C, checked as it came off the bus)"

    @property
    def details(self) -> dict[str, str]:
        return {"sensor": self.sensor, "value": f"{self.value:g}", "limit": f"{self.limit:g}"}


class FatalLimiter:
    """Per temperature sensor: the last reading, and whether this process already tripped for it.

    One trip per sensor for the life of the process: the trip latches the platform, and
    the adapter stays down until the operator reset starts it again, with a new limiter.
    """

    def __init__(self, limits: HeaterLimits) -> None:
        self.limits = limits
        self._last: dict[str, tuple[float, float]] = {}
        self.tripped: set[str] = set()

    def on_reading(self, sensor: str, value: float, at: float) -> LimitTrip | None:
        """Judge one temperature reading; a :class:`LimitTrip` the first time one is believed over the limit."""
        previous = self._last.get(sensor)
        if previous is not None and at <= previous[1]:
            return None  # not newer than the last: the bank skips it too
        self._last[sensor] = (value, at)
        if value < self.limits.fatal_c or sensor in self.tripped or not fresh(previous, value, at, self.limits):
            return None
        self.tripped.add(sensor)
        return LimitTrip(sensor, value, at, self.limits.fatal_c)

    def failed(self, trip: LimitTrip) -> None:
        """The trip's alarm could not be sent: the next believed reading over the limit trips again."""
        self.tripped.discard(trip.sensor)
