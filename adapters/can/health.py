"""Bus health: which alarm conditions hold right now, from what the bus delivered.

Pure (stdlib and the frame codec only): the service feeds observations with a
monotonic ``now`` and asks :meth:`BusHealth.assess` what holds; :class:`AlarmLedger`
turns that into "raise" and "clear" transitions so each condition is raised once and
cleared once.  Tests drive both with made-up times, no bus and no broker.

Conditions (alarm code, subject):

* ``bus-unavailable`` — the bus cannot be opened or failed under the reader;
* ``bus-off`` — a SocketCAN bus-off error frame, until a valid frame (or a controller
  restart) shows the bus carries traffic again;
* ``bus-silent`` — no valid frame for longer than ``silence_s`` (counted from opening);
* ``bus-errors`` — other error frames (error passive, overflow, protocol, no ACK...)
  within the last ``quiet_s``;
* ``sensor-dropout`` / sensor — an expected (or once seen) sensor unheard for
  ``dropout_s`` while the rest of the bus talks;
* ``sequence-gap`` / sensor — frames of that sensor lost within the last ``quiet_s``;
* ``bad-frames`` — frames the codec rejected within the last ``quiet_s``.

While a bus-wide problem holds, the per-sensor conditions cannot be judged: they are
reported as *unknown*, which keeps a raised alarm raised instead of clearing it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Mapping

from adapters.can.frames import SEQUENCE_MODULO, sequence_gap

WARNING = "WARNING"
CRITICAL = "CRITICAL"

BUS_UNAVAILABLE = "bus-unavailable"
BUS_OFF = "bus-off"
BUS_SILENT = "bus-silent"
BUS_ERRORS = "bus-errors"
SENSOR_DROPOUT = "sensor-dropout"
SEQUENCE_GAP = "sequence-gap"
BAD_FRAMES = "bad-frames"

#: Alarm codes about one sensor (subject = sensor id); they need a talking bus to be judged.
SENSOR_CODES = frozenset({SENSOR_DROPOUT, SEQUENCE_GAP})

#: The standard tank: three redundant water sensors and the flame supervision.
STANDARD_SENSORS = ("water.0", "water.1", "water.2", "burner.flame")

# Error classes of a SocketCAN error frame (the arbitration id bits, linux/can/error.h).
ERROR_CLASSES: dict[int, str] = {
    0x001: "tx_timeout",
    0x002: "lost_arbitration",
    0x004: "controller",
    0x008: "protocol",
    0x010: "transceiver",
    0x020: "no_ack",
    0x040: "bus_off",
    0x080: "bus_error",
    0x100: "restarted",
}
CAN_ERR_BUSOFF = 0x040
CAN_ERR_RESTARTED = 0x100
# Controller problems (data[1] of a CAN_ERR_CRTL frame).
CONTROLLER_DETAILS: dict[int, str] = {
    0x01: "rx_overflow",
    0x02: "tx_overflow",
    0x04: "rx_warning",
    0x08: "tx_warning",
    0x10: "rx_passive",
    0x20: "tx_passive",
    0x40: "active",
}

Key = tuple[str, str]


def error_classes(arbitration_id: int) -> list[str]:
    """Names of the classes a SocketCAN error frame's id announces (``other`` if none known)."""
    names = [name for bit, name in ERROR_CLASSES.items() if arbitration_id & bit]
    return names or ["other"]


def controller_details(arbitration_id: int, data: bytes | bytearray) -> list[str]:
    """Names of the controller problems in a ``controller`` error frame's ``data[1]``."""
    if not arbitration_id & 0x004 or len(data) < 2:
        return []
    return [name for bit, name in CONTROLLER_DETAILS.items() if data[1] & bit]


@dataclass(frozen=True)
class HealthLimits:
    """Time limits of the health rules (seconds) and the sensors expected on the bus."""

    silence_s: float = 2.0
    dropout_s: float = 1.0
    quiet_s: float = 2.0
    #: The bus counts as talking while some valid frame arrived this recently; a sensor
    #: is only blamed for its silence while the bus talks (half the dropout time, so a
    #: pause of the whole bus is never mistaken for one sensor dropping out).
    talk_window_s: float = 0.5
    expected: tuple[str, ...] = STANDARD_SENSORS
    #: A sequence jump this large is a repeat, a reorder or a sensor restart, not loss.
    reset_gap: int = SEQUENCE_MODULO // 2


@dataclass(frozen=True)
class Condition:
    """One alarm condition that holds now."""

    code: str
    severity: str
    message: str
    subject: str = ""
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.code, self.subject)


@dataclass(frozen=True)
class Assessment:
    """What holds now, and what cannot be judged now (those alarms stay as they are).

    ``unknown`` holds whole codes (every subject), ``unknown_keys`` single (code, subject) pairs.
    """

    conditions: Mapping[Key, Condition]
    unknown: frozenset[str] = frozenset()
    unknown_keys: frozenset[Key] = frozenset()

    def is_unknown(self, key: Key) -> bool:
        return key[0] in self.unknown or key in self.unknown_keys


@dataclass
class SensorTrack:
    """What the bus told about one sensor (monotonic times)."""

    last_seen: float | None = None
    sequence: int | None = None
    frames: int = 0
    lost: int = 0
    resets: int = 0
    last_gap_at: float | None = None
    last_gap: int = 0


class BusHealth:
    """Observations in, :class:`Assessment` out. All times are one monotonic clock."""

    def __init__(self, limits: HealthLimits | None = None, now: float = 0.0) -> None:
        self.limits = limits or HealthLimits()
        self.opened_at: float | None = now
        self.lost_reason: str | None = None
        self.bus_off_at: float | None = None
        self.last_valid_at: float | None = None
        self.resumed_at: float | None = None
        self.last_error_at: float | None = None
        self.last_error_classes: tuple[str, ...] = ()
        self.last_bad_at: float | None = None
        self.last_bad_reason = ""
        self.bad_since_quiet = 0
        self.errors_since_quiet = 0
        self.sensors: dict[str, SensorTrack] = {name: SensorTrack() for name in self.limits.expected}
        self.error_counts: Counter[str] = Counter()

    # -- observations ----------------------------------------------------------------

    def on_open(self, now: float) -> None:
        """The bus is (re)opened: silence is counted from here."""
        self.opened_at = now
        self.lost_reason = None
        self.resumed_at = None

    def on_lost(self, now: float, reason: str) -> None:
        """The bus could not be opened or failed; nothing on it can be judged until reopened."""
        self.lost_reason = reason
        self.opened_at = None
        self.resumed_at = None

    def on_frame(self, now: float, sensor: str, sequence: int) -> int:
        """A valid frame of ``sensor``; returns the number of its frames lost just before it."""
        quiet = self.last_valid_at is None or now - self.last_valid_at > self.limits.talk_window_s
        if quiet or self.resumed_at is None or self.bus_off_at is not None:
            # Traffic (re)starts: every sensor gets a dropout period to be heard again.
            self.resumed_at = now
        self.bus_off_at = None
        self.last_valid_at = now
        track = self.sensors.get(sensor)
        if track is None:
            track = self.sensors[sensor] = SensorTrack()
        lost = 0
        if track.sequence is not None:
            gap = sequence_gap(track.sequence, sequence)
            if gap >= self.limits.reset_gap:
                track.resets += 1
            elif gap:
                lost = gap
                track.lost += gap
                track.last_gap = gap
                track.last_gap_at = now
        track.sequence = sequence
        track.last_seen = now
        track.frames += 1
        return lost

    def on_error_frame(self, now: float, arbitration_id: int, data: bytes | bytearray = b"") -> list[str]:
        """A SocketCAN error frame; returns its class names (for counting)."""
        classes = error_classes(arbitration_id)
        self.error_counts.update(classes)
        if arbitration_id & CAN_ERR_BUSOFF:
            # The warnings that led up to it are part of the bus-off, not a second problem.
            self.bus_off_at = now
            self.last_error_at = None
        elif arbitration_id & CAN_ERR_RESTARTED:
            self.bus_off_at = None
        if self.bus_off_at is None and set(classes) - {"bus_off", "restarted"}:
            if self.last_error_at is None or now - self.last_error_at > self.limits.quiet_s:
                self.errors_since_quiet = 0
            self.errors_since_quiet += 1
            self.last_error_at = now
            self.last_error_classes = tuple(classes + controller_details(arbitration_id, data))
        return classes

    def on_bad_frame(self, now: float, reason: str) -> None:
        """A frame the codec rejected (unknown id, wrong length, out of range...)."""
        if self.last_bad_at is None or now - self.last_bad_at > self.limits.quiet_s:
            self.bad_since_quiet = 0
        self.bad_since_quiet += 1
        self.last_bad_at = now
        self.last_bad_reason = reason

    # -- assessment ------------------------------------------------------------------

    def assess(self, now: float) -> Assessment:
        """The conditions that hold at ``now``."""
        found: list[Condition] = []
        if self.lost_reason is not None:
            found.append(Condition(BUS_UNAVAILABLE, CRITICAL, f"CAN bus unavailable: {self.lost_reason}"))
            codes = {BUS_OFF, BUS_SILENT, BUS_ERRORS, BAD_FRAMES, *SENSOR_CODES}
            return _assessment(found, codes)
        unknown: set[str] = set()
        if self.bus_off_at is not None:
            found.append(Condition(BUS_OFF, CRITICAL, "CAN controller reported bus-off: no frames can be received"))
            unknown |= {BUS_SILENT, BUS_ERRORS, *SENSOR_CODES}
        else:
            silent_for = self._silent_for(now)
            if silent_for > self.limits.silence_s:
                found.append(
                    Condition(
                        BUS_SILENT, CRITICAL,
                        f"no valid CAN frame for {silent_for:.1f} s (limit {self.limits.silence_s:g} s)",
                        details={"silent_s": f"{silent_for:.1f}"},
                    )
                )
                unknown |= SENSOR_CODES
            if self._recent(self.last_error_at, now):
                found.append(
                    Condition(
                        BUS_ERRORS, WARNING,
                        f"CAN error frames on the bus ({', '.join(self.last_error_classes)})",
                        details={"classes": ",".join(self.last_error_classes), "count": str(self.errors_since_quiet)},
                    )
                )
        if self._recent(self.last_bad_at, now):
            found.append(
                Condition(
                    BAD_FRAMES, WARNING,
                    f"CAN frames rejected by the codec (last: {self.last_bad_reason})",
                    details={"last_reason": self.last_bad_reason},
                )
            )
        unknown_keys: set[Key] = set()
        if not unknown & SENSOR_CODES:
            if self._bus_talks(now):
                found.extend(self._sensor_conditions(now, unknown_keys))
            else:
                unknown |= SENSOR_CODES
        return _assessment(found, unknown, unknown_keys)

    def _sensor_conditions(self, now: float, unknown_keys: set[Key]) -> list[Condition]:
        found: list[Condition] = []
        assert self.resumed_at is not None
        for name, track in sorted(self.sensors.items()):
            since = self.resumed_at if track.last_seen is None else max(track.last_seen, self.resumed_at)
            silent_for = now - since
            if track.last_seen is None or track.last_seen < self.resumed_at:
                # Not heard since the bus came back: too early to say it is healthy.
                unknown_keys.add((SENSOR_DROPOUT, name))
            if silent_for > self.limits.dropout_s:
                heard = "never heard" if track.last_seen is None else f"silent for {silent_for:.1f} s"
                found.append(
                    Condition(SENSOR_DROPOUT, WARNING, f"sensor {name} {heard} while the bus carries traffic", subject=name)
                )
            if self._recent(track.last_gap_at, now):
                found.append(
                    Condition(
                        SEQUENCE_GAP, WARNING,
                        f"sensor {name}: {track.last_gap} frame(s) lost (sequence gap), {track.lost} in total",
                        subject=name,
                        details={"last_gap": str(track.last_gap), "lost_total": str(track.lost)},
                    )
                )
        return found

    # -- helpers -------------------------------------------------------------------------

    def _silent_for(self, now: float) -> float:
        """Seconds without a valid frame, counted from the later of the last frame and the opening."""
        marks = [t for t in (self.last_valid_at, self.opened_at) if t is not None]
        return now - max(marks) if marks else 0.0

    def _bus_talks(self, now: float) -> bool:
        """Valid frames flow (so one silent sensor is that sensor's problem, not the bus's)."""
        return (
            self.resumed_at is not None
            and self.last_valid_at is not None
            and now - self.last_valid_at <= self.limits.talk_window_s
        )

    def _recent(self, at: float | None, now: float) -> bool:
        return at is not None and now - at <= self.limits.quiet_s

    def snapshot(self, now: float) -> dict[str, dict[str, object]]:
        """Per-sensor view for ``/can``: age of the last frame, last sequence, losses."""
        return {
            name: {
                "last_seen_age_s": None if t.last_seen is None else round(now - t.last_seen, 3),
                "sequence": t.sequence,
                "frames": t.frames,
                "lost": t.lost,
                "sequence_resets": t.resets,
            }
            for name, t in sorted(self.sensors.items())
        }


def _assessment(found: list[Condition], unknown: set[str], unknown_keys: set[Key] | None = None) -> Assessment:
    return Assessment({c.key: c for c in found}, frozenset(unknown), frozenset(unknown_keys or ()))


@dataclass(frozen=True)
class Transition:
    """Raise or clear one alarm."""

    action: Literal["raise", "clear"]
    condition: Condition


class AlarmLedger:
    """Which conditions are raised; the transitions that bring the alarms in line with an assessment.

    A transition counts only once :meth:`confirm` is called (after the alarm was sent), so
    a failed send is simply proposed again on the next assessment.
    """

    def __init__(self) -> None:
        self.raised: dict[Key, Condition] = {}

    def transitions(self, assessment: Assessment) -> list[Transition]:
        """Raise what holds and is not raised; clear what is raised, no longer holds and can be judged."""
        out = [Transition("raise", c) for key, c in assessment.conditions.items() if key not in self.raised]
        out += [
            Transition("clear", c)
            for key, c in self.raised.items()
            if key not in assessment.conditions and not assessment.is_unknown(key)
        ]
        return out

    def confirm(self, transition: Transition) -> None:
        """The alarm was sent: record the new state."""
        if transition.action == "raise":
            self.raised[transition.condition.key] = transition.condition
        else:
            self.raised.pop(transition.condition.key, None)
