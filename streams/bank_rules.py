"""The sensor bank's decisions as plain functions: no Faust, no Kafka, no clock.

BankManager keeps, per sensor, the latest reading and its quality (fresh, stale,
implausible), and a set of *conditions*, each one alarm with a deterministic id
(``bank/<code>/<subject>``). Every input — a reading, or a timer tick with an explicit
``now`` — gives a :class:`Step`: the state that changed and the effects (raise / clear),
exactly one per condition start and end.

Why the rules have the shape they have:

* **Time comes from the data.** A raise or clear carries the ``received_at`` of the reading
  that caused it (a stale sensor: its last reading + ``stale_after_s``), so replaying the
  same input gives the same alarm times, and AlarmsServer's order-independent history
  absorbs the replay. Per condition, effect times never go backwards (a clear is never
  earlier than its raise), or the history would order them the other way round.
* **Replays are no-ops.** A reading not newer than its sensor's latest is a duplicate (or
  out of order) and changes nothing; re-applying a reading to a condition it already
  changed changes nothing either. That is what lets the agent resume after kill -9 from
  its last committed offset with tables that are ahead of it.
* **Hysteresis** on every threshold: a value raises at ``>= limit`` and clears only below
  ``limit - hysteresis``, so noise around a limit does not toggle the alarm.
* **Implausible readings are not believed**: they raise their own alarm and are left out
  of over-temperature, disagreement and statistics (a single spike neither trips nor
  clears anything; a real step is believed one reading later).
* **FATAL is never cleared here**: only the operator reset ends it (design rule 2). The
  reset covers the readings received up to it (see :mod:`streams.latch`): those cannot
  start a FATAL again — they are replayed after every restart — and a FATAL condition
  they started ends with it, silently (the reset already ended the alarm). The first
  reading after the reset that is still over the limit raises FATAL again.
* **The CAN adapter checks the FATAL limit too** (:mod:`streams.fatal_limit`), on the same
  readings by the same rule. Its FATAL latches the platform, and the bank stops deciding,
  often before it has decided the readings over the limit. A reset that released the
  limiter's FATAL covers the readings up to it, as a reset of the bank's own does: those
  cannot start a FATAL, and the first reading past them that is still over the limit does.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping, MutableMapping, Protocol

from streams.heater_config import FLAME_SENSOR, WATER_SENSORS, HeaterLimits
from streams.fatal_limit import LIMITER_PREFIX, fresh
from streams.ids import alarm_id_for, occurrence_key
from streams.latch import merged_cover, still_covered

SOURCE = "bank"

STALE = "sensor-stale"
IMPLAUSIBLE = "sensor-implausible"
DISAGREEMENT = "sensor-disagreement"
#: Over-temperature codes per level, lowest first; each level is its own alarm.
OVERTEMP = {"WARNING": "overtemp-warning", "CRITICAL": "overtemp-critical", "FATAL": "overtemp-fatal"}
#: Subject of the disagreement alarm (the redundant water sensors as a group).
WATER_GROUP = "water"


class Quality(str, enum.Enum):
    FRESH = "fresh"
    STALE = "stale"
    IMPLAUSIBLE = "implausible"


class ReadingLike(Protocol):
    """What the rules read from a ``sensorData`` record (``SensorReading`` fits)."""

    sensor: str
    kind: str
    value: float
    received_at: float


@dataclass(frozen=True)
class Reading:
    """A plain reading, for tests and tools that do not want Faust records."""

    sensor: str
    kind: str
    value: float
    received_at: float
    unit: str = "C"
    sequence: int = 0


@dataclass(frozen=True)
class BankConfig:
    """The limits plus the bank's own tuning (hysteresis, window length)."""

    limits: HeaterLimits = field(default_factory=HeaterLimits)
    water_sensors: tuple[str, ...] = WATER_SENSORS
    flame_sensor: str = FLAME_SENSOR
    hysteresis_c: float = 2.0
    disagreement_hysteresis_c: float = 0.5
    window_s: float = 60.0

    @property
    def levels(self) -> tuple[tuple[str, float], ...]:
        """(severity, threshold) of over-temperature, lowest first."""
        lim = self.limits
        return (("WARNING", lim.warning_c), ("CRITICAL", lim.critical_c), ("FATAL", lim.fatal_c))


@dataclass(frozen=True)
class WindowStats:
    """Min/max/mean of one sensor's plausible readings in one tumbling window."""

    sensor: str
    start: float
    end: float
    count: int
    minimum: float
    maximum: float
    total: float
    last_at: float

    @property
    def mean(self) -> float:
        return self.total / self.count


@dataclass(frozen=True)
class SensorState:
    """The latest reading of one sensor and what the bank thinks of it."""

    sensor: str
    kind: str
    value: float
    received_at: float
    quality: Quality = Quality.FRESH
    unit: str = ""
    sequence: int = 0
    window: WindowStats | None = None  # the open one-minute window; closed ones go to Step.windows


@dataclass(frozen=True)
class Condition:
    """One alarm condition: active or not since ``since`` (the time of its last effect)."""

    code: str
    subject: str
    severity: str
    active: bool
    since: float
    message: str = ""
    covered: dict[str, int] | None = None  # ended by a reset: the input positions it covers (streams.latch)

    @property
    def key(self) -> str:
        return condition_key(self.code, self.subject)


@dataclass(frozen=True)
class Effect:
    """Raise or clear one alarm, at the time of the data that caused it."""

    kind: str  # "raise" | "clear"
    code: str
    subject: str
    severity: str
    at: float
    message: str
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def alarm_id(self) -> str:
        return f"{SOURCE}/{self.code}/{self.subject}"


@dataclass(frozen=True)
class Step:
    """What one input changed: state to write and effects to send (in that order).

    ``windows`` holds windows that closed with this input (the open one rides in the
    sensor's state, so a reading costs one state write, not two).
    """

    sensors: dict[str, SensorState] = field(default_factory=dict)
    conditions: dict[str, Condition] = field(default_factory=dict)
    windows: dict[str, WindowStats] = field(default_factory=dict)
    effects: tuple[Effect, ...] = ()
    duplicate: bool = False


@dataclass
class BankView:
    """The state the rules read; any mappings (dicts in tests, tables in the agent).

    ``release``: for a FATAL occurrence, the input positions the operator reset that
    released it covers, or None while none has (:mod:`streams.latch`). ``limiter_cover``:
    the input positions covered by the resets that released a FATAL of the CAN adapter's
    limiter (:mod:`streams.fatal_limit`), None while none has.
    """

    sensors: Mapping[str, SensorState]
    conditions: Mapping[str, Condition]
    release: Callable[[str], Mapping[str, int] | None] = lambda _key: None
    limiter_cover: Callable[[], Mapping[str, int] | None] = lambda: None

    def release_of(self, condition: Condition) -> Mapping[str, int] | None:
        """What the reset that released this condition's FATAL occurrence covers; None if none did."""
        return self.release(occurrence_key(alarm_id_for(SOURCE, condition.code, condition.subject), condition.since))


def condition_key(code: str, subject: str) -> str:
    return f"{code}/{subject}"


def window_start(at: float, window_s: float) -> float:
    return math.floor(at / window_s) * window_s


def window_key(sensor: str, start: float) -> str:
    return f"{sensor}@{int(start)}"


class BankRules:
    """The decision function: ``on_reading`` and ``on_tick`` over a :class:`BankView`."""

    def __init__(self, config: BankConfig | None = None) -> None:
        self.config = config or BankConfig()

    # -- readings ---------------------------------------------------------------------

    def on_reading(self, view: BankView, reading: ReadingLike, position: tuple[str, int] | None = None) -> Step:
        """Decide one reading; ``position`` is where it stands in its input ("topic:partition", offset)."""
        previous = view.sensors.get(reading.sensor)
        if previous is not None and reading.received_at <= previous.received_at:
            return Step(duplicate=True)
        quality = self._quality(previous, reading)
        value = float(reading.value)
        window, closed = self._window(previous, reading.sensor, value, reading.received_at, quality)
        state = SensorState(
            reading.sensor, reading.kind, value, reading.received_at, quality,
            str(getattr(reading, "unit", "")), int(getattr(reading, "sequence", 0)), window,
        )
        changes = _Changes(view.conditions)
        at = reading.received_at
        changes.want(STALE, reading.sensor, "WARNING", False, at, "")
        implausible = quality is Quality.IMPLAUSIBLE
        if changes.is_active(IMPLAUSIBLE, reading.sensor) != implausible:  # messages only for a transition
            changes.want(
                IMPLAUSIBLE, reading.sensor, "WARNING", implausible, at,
                f"{reading.sensor}: implausible reading {reading.value:g}",
                {"sensor": reading.sensor, "value": f"{reading.value:g}"}
                | ({"previous": f"{previous.value:g}"} if previous is not None else {}),
            )
        if quality is Quality.FRESH and reading.kind == "temperature":
            self._overtemp(changes, state, view, position)
        if reading.sensor in self.config.water_sensors and quality is Quality.FRESH:
            self._disagreement(changes, {**view.sensors, reading.sensor: state}, at)
        return Step(sensors={reading.sensor: state}, conditions=changes.conditions, windows=closed, effects=changes.effects)

    def _quality(self, previous: SensorState | None, reading: ReadingLike) -> Quality:
        if reading.kind == "flame":
            return Quality.FRESH if reading.value in (0.0, 1.0) else Quality.IMPLAUSIBLE
        last = None if previous is None else (previous.value, previous.received_at)
        # The CAN adapter's FATAL limiter believes a reading by the same rule (streams.fatal_limit).
        believed = fresh(last, float(reading.value), reading.received_at, self.config.limits)
        return Quality.FRESH if believed else Quality.IMPLAUSIBLE

    def _overtemp(self, changes: "_Changes", state: SensorState, view: BankView, position: tuple[str, int] | None) -> None:
        for severity, limit in self.config.levels:
            code = OVERTEMP[severity]
            fatal = severity == "FATAL"
            current = changes.current(code, state.sensor)
            active = current is not None and current.active
            if active and fatal and current is not None and (covered := view.release_of(current)) is not None:
                current = changes.end_by_reset(current, covered)
                active = False
            if active:
                desired = fatal or state.value >= limit - self.config.hysteresis_c
            else:
                # A released FATAL still over the limit is a new occurrence — from readings past
                # those the reset covered, not from the backlog the operator had already seen.
                over = state.value >= limit
                held = fatal and over and (
                    (current is not None and still_covered(current.covered, position))
                    # Nor from readings a reset of the CAN adapter's limiter covered: that FATAL stopped
                    # the adapter, and this service, before either decided the rest of the overheat.
                    or still_covered(view.limiter_cover(), position))
                desired = over and not held
            if active == desired:
                continue  # no transition: nothing to write or send (the messages are for effects only)
            message = f"{state.sensor} at {state.value:.1f} °C (limit {limit:g} °C)"
            details = {"sensor": state.sensor, "value": f"{state.value:g}", "limit": f"{limit:g}"}
            changes.want(code, state.sensor, severity, desired, state.received_at, message, details)

    def _disagreement(self, changes: "_Changes", sensors: Mapping[str, SensorState], at: float) -> None:
        limits = self.config.limits
        values = {
            s: st.value
            for s in self.config.water_sensors
            if (st := sensors.get(s)) is not None
            and st.quality is Quality.FRESH
            and at - st.received_at <= limits.stale_after_s
        }
        if len(values) < 2:
            return  # not enough evidence either way: keep the condition as it is
        spread = max(values.values()) - min(values.values())
        current = changes.current(DISAGREEMENT, WATER_GROUP)
        limit = limits.disagreement_c
        if current is not None and current.active:
            desired = spread > limit - self.config.disagreement_hysteresis_c
        else:
            desired = spread > limit
        if (current is not None and current.active) == desired:
            return
        message = f"water sensors disagree by {spread:.1f} °C (limit {limit:g} °C)"
        details = {s: f"{v:g}" for s, v in sorted(values.items())} | {"spread": f"{spread:.2f}"}
        changes.want(DISAGREEMENT, WATER_GROUP, "CRITICAL", desired, at, message, details)

    def _window(
        self, previous: SensorState | None, sensor: str, value: float, at: float, quality: Quality
    ) -> tuple[WindowStats | None, dict[str, WindowStats]]:
        """The new state's open window; a window the reading leaves behind is closed."""
        window = previous.window if previous is not None else None
        closed: dict[str, WindowStats] = {}
        if window is not None and window.start != window_start(at, self.config.window_s):
            closed[window_key(window.sensor, window.start)] = window
            window = None
        if quality is Quality.FRESH:
            window = add_value(window, sensor, value, at, self.config.window_s) or window
        return window, closed

    # -- timer ------------------------------------------------------------------------

    def on_tick(self, view: BankView, now: float) -> Step:
        """Staleness: a sensor without a reading for ``stale_after_s`` is stale.

        The alarm's time is the moment it became stale (last reading + limit), not the
        tick's, so when the tick runs does not change the history.
        """
        limit = self.config.limits.stale_after_s
        changes = _Changes(view.conditions)
        sensors: dict[str, SensorState] = {}
        for name, state in sorted(view.sensors.items()):
            if now - state.received_at <= limit:
                continue
            if state.quality is not Quality.STALE:
                sensors[name] = replace(state, quality=Quality.STALE)
            changes.want(
                STALE, name, "WARNING", True, state.received_at + limit,
                f"{name}: no reading for more than {limit:g} s", {"sensor": name, "last_at": f"{state.received_at:.3f}"},
            )
        return Step(sensors=sensors, conditions=changes.conditions, effects=changes.effects)


class _Changes:
    """Condition transitions of one step, with their effects, times kept monotonic."""

    def __init__(self, base: Mapping[str, Condition]) -> None:
        self._base = base
        self.conditions: dict[str, Condition] = {}
        self._effects: list[Effect] = []

    @property
    def effects(self) -> tuple[Effect, ...]:
        return tuple(self._effects)

    def current(self, code: str, subject: str) -> Condition | None:
        key = condition_key(code, subject)
        return self.conditions.get(key) or self._base.get(key)

    def is_active(self, code: str, subject: str) -> bool:
        current = self.current(code, subject)
        return current is not None and current.active

    def end_by_reset(self, condition: Condition, covered: Mapping[str, int]) -> Condition:
        """An operator reset released this FATAL condition's occurrence: a transition with no effect to send.

        Still over the limit past the input the reset covered, a reading raises it again —
        a new occurrence, at the reading's time, which latches at once."""
        ended = replace(condition, active=False, message=f"reset: {condition.message}", covered=dict(covered))
        self.conditions[ended.key] = ended
        return ended

    def want(
        self,
        code: str,
        subject: str,
        severity: str,
        active: bool,
        cause_at: float,
        message: str,
        details: Mapping[str, str] | None = None,
    ) -> None:
        current = self.current(code, subject)
        if (current is not None and current.active) == active:
            return
        if current is None:
            at = cause_at
        elif active:  # a raise must come strictly after the clear before it
            at = cause_at if cause_at > current.since else math.nextafter(current.since, math.inf)
        else:  # a clear at the raise's time still sorts after it
            at = max(cause_at, current.since)
        covered = None
        if not active and current is not None:
            severity, message, covered = current.severity, f"cleared: {current.message}", current.covered
        condition = Condition(code=code, subject=subject, severity=severity, active=active, since=at, message=message,
                              covered=covered)
        self.conditions[condition.key] = condition
        self._effects.append(
            Effect("raise" if active else "clear", code, subject, severity, at, message, dict(details or {}))
        )


def add_sample(stats: WindowStats | None, state: SensorState, window_s: float) -> WindowStats | None:
    """``stats`` with one more sample; None when the sample was already counted (a replay)."""
    return add_value(stats, state.sensor, state.value, state.received_at, window_s)


def add_value(stats: WindowStats | None, sensor: str, value: float, at: float, window_s: float) -> WindowStats | None:
    """``stats`` with one more value received ``at``; None when it was already counted (a replay)."""
    if stats is None:
        start = window_start(at, window_s)
        return WindowStats(sensor, start, start + window_s, 1, value, value, value, at)
    if at <= stats.last_at:
        return None
    return WindowStats(
        sensor, stats.start, stats.end, stats.count + 1,
        min(stats.minimum, value), max(stats.maximum, value),
        stats.total + value, at,
    )


def apply(
    step: Step,
    sensors: MutableMapping[str, SensorState],
    conditions: MutableMapping[str, Condition],
    windows: MutableMapping[str, WindowStats],
) -> None:
    """Write a step's state changes into plain mappings (the in-memory bank)."""
    conditions.update(step.conditions)
    windows.update(step.windows)
    sensors.update(step.sensors)


class Bank:
    """The rules over in-memory state: what BankManager decides, without Kafka."""

    def __init__(self, config: BankConfig | None = None) -> None:
        self.rules = BankRules(config)
        self.sensors: dict[str, SensorState] = {}
        self.conditions: dict[str, Condition] = {}
        self.windows: dict[str, WindowStats] = {}
        self.released: dict[str, dict[str, int]] = {}  # FATAL occurrence → input positions its reset covers

    @property
    def view(self) -> BankView:
        return BankView(self.sensors, self.conditions, self.released.get,
                        lambda: merged_cover(p for k, p in self.released.items() if k.startswith(LIMITER_PREFIX)))

    def stats(self) -> dict[str, WindowStats]:
        """Every window, closed and open, by :func:`window_key`."""
        open_ = {window_key(s.sensor, s.window.start): s.window for s in self.sensors.values() if s.window}
        return {**self.windows, **open_}

    def reading(self, reading: ReadingLike, position: tuple[str, int] | None = None) -> tuple[Effect, ...]:
        return self._apply(self.rules.on_reading(self.view, reading, position))

    def tick(self, now: float) -> tuple[Effect, ...]:
        return self._apply(self.rules.on_tick(self.view, now))

    def feed(self, readings: Iterable[ReadingLike]) -> list[Effect]:
        return [effect for reading in readings for effect in self.reading(reading)]

    def active(self) -> list[str]:
        return sorted(key for key, c in self.conditions.items() if c.active)

    def _apply(self, step: Step) -> tuple[Effect, ...]:
        apply(step, self.sensors, self.conditions, self.windows)
        return step.effects
