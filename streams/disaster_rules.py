"""Disaster rules for the water heater: pure decisions over readings, job state and valve facts.

The detector watches the water only while heat can be produced or was produced a moment
ago: while a heating job is igniting or heating, while the gas valve is commanded open
(an unexpired lease) or reads open, and for a grace period (``rise_window_s`` plus a few
seconds) after the job ended or the valve closed — the stuck-valve runaway shows itself
exactly then, as water that keeps rising after the gas was cut.

While watching, four rules apply, each to median-of-three filtered samples so that one
wild sample is never a disaster:

* ``over-limit`` — a water sensor above ``disaster_c``;
* ``too-fast-rise`` — a least-squares slope above ``max_rise_c_per_s`` over
  ``rate_window_s`` (at least ``min_rate_span_s`` of data), computed exactly;
* ``rise-while-closed`` — while the valve is commanded or read closed, a rise of more
  than ``rise_while_closed_c`` within ``rise_window_s``, counted only from the moment it
  closed (the heating before the closure is not a rise "while closed");
* ``sensor-disagreement`` — during a running job, fresh sensors further apart than
  ``disagreement_c``.

Each rule reports at most one disaster per *episode*: a heating job (with its grace
period) or, without one, a stretch of valve activity named by the time it began. The
disaster id is ``rule/episode``, derived from record times only, so replaying the same
records (after a crash) finds the same ids. Time is always an argument: the records'
own timestamps, never a clock read here. No Faust, no Kafka.

A reading costs the rules the same whatever the window holds — ten samples a second or a
sensor flooding the bus with thousands — since what they read of the window is kept as
samples arrive (:class:`_Filtered`).
"""

from __future__ import annotations

import bisect
import enum
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Mapping, Sequence, overload

from streams.heater_config import WATER_SENSORS, HeaterLimits
from streams.latch import still_covered

#: For a detection, the input positions the operator reset that released its FATAL
#: occurrence covers; None while no reset has released it (:mod:`streams.latch`).
Released = Callable[["Detection"], Mapping[str, int] | None]

#: Job states in which the burner may be lit.
RUNNING_STATES = frozenset({"igniting", "heating"})

#: Measures are judged at this many decimals (0.001 °C, °C/s): far below the sensors'
#: 0.1 °C resolution, and float noise (timestamps near 1.7e9 s) never decides a boundary.
PRECISION = 3

Sample = tuple[float, float]


class Rule(str, enum.Enum):
    """The four rules; the value names the rule in disaster ids and alarm codes."""

    OVER_LIMIT = "over-limit"
    TOO_FAST_RISE = "too-fast-rise"
    RISE_WHILE_CLOSED = "rise-while-closed"
    SENSOR_DISAGREEMENT = "sensor-disagreement"


@dataclass(frozen=True)
class RuleLimits:
    """The limits of :class:`~streams.heater_config.HeaterLimits` plus the rules' own windows."""

    disaster_c: float = 90.0
    max_rise_c_per_s: float = 4.0
    rise_while_closed_c: float = 2.0
    rise_window_s: float = 3.0
    disagreement_c: float = 3.0
    rate_window_s: float = 1.5
    min_rate_span_s: float = 1.0
    min_rate_samples: int = 5
    grace_extra_s: float = 5.0
    fresh_s: float = 1.0
    default_lease_s: float = 3.0
    max_lease_s: float = 10.0
    water_sensors: tuple[str, ...] = WATER_SENSORS

    @classmethod
    def from_heater(cls, limits: HeaterLimits) -> "RuleLimits":
        """The rules' limits from the platform's validated limits document."""
        return cls(
            disaster_c=limits.disaster_c,
            max_rise_c_per_s=limits.max_rise_c_per_s,
            rise_while_closed_c=limits.rise_while_closed_c,
            rise_window_s=limits.rise_window_s,
            disagreement_c=limits.disagreement_c,
        )

    @property
    def grace_s(self) -> float:
        """How long after the job ended or the valve closed the water is still watched."""
        return self.rise_window_s + self.grace_extra_s

    def lease_for(self, requested_s: float) -> float:
        """The lease a valve command gets, as the I2C adapter grants it (default when 0, capped)."""
        return min(requested_s if requested_s > 0 else self.default_lease_s, self.max_lease_s)

    @property
    def history_s(self) -> float:
        """How much of each sensor's past a window keeps (the longest rule window, plus margin)."""
        return max(self.rise_window_s, self.rate_window_s) + 1.0


# -- facts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFacts:
    """The heating job as last reported; ``ended_at`` is when it left igniting/heating."""

    job_id: str
    state: str
    at: float
    ended_at: float | None = None

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    def then(self, job_id: str, state: str, at: float) -> "JobFacts":
        """The facts after the next state record (``at`` not older than :attr:`at`)."""
        if state in RUNNING_STATES:
            ended_at = None
        elif self.running or job_id != self.job_id:
            ended_at = at
        else:
            ended_at = self.ended_at if self.ended_at is not None else at
        return JobFacts(job_id, state, at, ended_at)


def first_job(job_id: str, state: str, at: float) -> JobFacts:
    """Facts from the first state record seen: a finished job ended at its record's time."""
    return JobFacts(job_id, state, at, None if state in RUNNING_STATES or state == "idle" else at)


@dataclass(frozen=True)
class ValveFacts:
    """The gas valve as commanded (``I2CHeating``) and as read back (``relayState``).

    ``command_since``/``readback_since`` are when each source last changed between open
    and closed; lease renewals and repeated readbacks leave them alone. An open command
    holds for its lease: it counts as closed from ``command_at + lease_s`` unless renewed.
    """

    command_on: bool | None = None
    command_at: float = 0.0
    lease_s: float = 0.0
    command_since: float = 0.0
    readback_open: bool | None = None
    readback_at: float = 0.0
    readback_since: float = 0.0

    def commanded_open(self, now: float) -> bool | None:
        if self.command_on is None:
            return None
        if not self.command_on:
            return False
        return now <= self.command_at + self.lease_s

    def command_closed_since(self, now: float) -> float | None:
        if self.command_on is None or self.commanded_open(now):
            return None
        return self.command_since if not self.command_on else self.command_at + self.lease_s

    def readback_closed_since(self) -> float | None:
        return self.readback_since if self.readback_open is False else None

    def open_since(self, now: float) -> float | None:
        """Since when some source says open (the earliest), or None."""
        times = [self.command_since] if self.commanded_open(now) else []
        if self.readback_open:
            times.append(self.readback_since)
        return min(times) if times else None

    def closed_since(self, now: float) -> float | None:
        """Since when some source says closed (the earliest), or None: closed if either says so."""
        times = [t for t in (self.command_closed_since(now), self.readback_closed_since()) if t is not None]
        return min(times) if times else None

    def last_closure(self, now: float) -> float | None:
        """The latest moment a source switched to closed: the start of the grace period."""
        times = [t for t in (self.command_closed_since(now), self.readback_closed_since()) if t is not None]
        return max(times) if times else None

    def with_command(self, on: bool, at: float, lease_s: float = 0.0) -> "ValveFacts":
        if self.command_on is not None and at < self.command_at:
            return self  # an older command (a replay): the newer one stands
        was_open = self.commanded_open(at)
        if on:
            since = self.command_since if was_open else at
        elif was_open is None or was_open:
            since = at
        else:
            closed_since = self.command_closed_since(at)
            since = at if closed_since is None else closed_since
        return replace(self, command_on=on, command_at=at, lease_s=lease_s if on else 0.0, command_since=since)

    def renewed(self, at: float, lease_s: float) -> "ValveFacts":
        """A lease renewal: it extends an open valve's lease and never reopens a closed one."""
        if self.command_on is None or at < self.command_at or not self.commanded_open(at):
            return self
        return replace(self, command_at=at, lease_s=lease_s)

    def with_readback(self, valve_open: bool, at: float) -> "ValveFacts":
        if self.readback_open is not None and at < self.readback_at:
            return self
        since = self.readback_since if self.readback_open is valve_open else at
        return replace(self, readback_open=valve_open, readback_at=at, readback_since=since)


def _binary(x: float) -> tuple[int, int]:
    """``x`` as ``(p, k)`` with ``x == p / 2**k`` exactly (a finite float is a dyadic rational)."""
    p, q = x.as_integer_ratio()
    return p, q.bit_length() - 1


class _ExactSums:
    """Exact sums of t, v, t² and t·v over the samples at list indices ``lo``..``hi - 1``: the least-squares slope.

    Float sums of epoch times (~1.7e9) lose the very digits a slope is made of, so the sums are
    integers: ``t = origin + T / 2**kt`` and ``v = V / 2**kv``, with the scales raised (and the
    sums multiplied up) when a sample needs a finer one. Exact sums can slide: a sample leaves
    them as exactly as it came in, so a window's slope costs the samples that came and went.
    """

    __slots__ = ("lo", "hi", "n", "t", "v", "tt", "tv", "kt", "kv", "origin")

    def __init__(self, origin: float) -> None:
        self.origin, self.kt = _binary(origin)  # origin * 2**kt, at the current scale
        self.kv = 0
        self.restart(0)

    def restart(self, at: int) -> None:
        self.lo = self.hi = at
        self.n = self.t = self.v = self.tt = self.tv = 0

    def _scaled(self, t: float, v: float) -> tuple[int, int]:
        tp, tk = _binary(t)
        vp, vk = _binary(v)
        if tk > self.kt:
            d, self.kt = tk - self.kt, tk
            self.origin <<= d
            self.t, self.tt, self.tv = self.t << d, self.tt << 2 * d, self.tv << d
        if vk > self.kv:
            d, self.kv = vk - self.kv, vk
            self.v, self.tv = self.v << d, self.tv << d
        return (tp << (self.kt - tk)) - self.origin, vp << (self.kv - vk)

    def add(self, t: float, v: float, sign: int) -> None:
        """Count the sample in (``sign`` 1) or out (-1)."""
        ti, vi = self._scaled(t, v)
        self.n += sign
        self.t += sign * ti
        self.v += sign * vi
        self.tt += sign * ti * ti
        self.tv += sign * ti * vi

    def slope(self) -> float:
        """The least-squares slope of the samples counted in, exact and rounded once (0.0 without a spread in time)."""
        sxx = self.n * self.tt - self.t * self.t  # n·Sxx·2**(2kt)
        if self.n < 2 or sxx <= 0:
            return 0.0
        sxy = self.n * self.tv - self.t * self.v  # n·Sxy·2**(kt+kv)
        return (sxy << self.kt) / (sxx << self.kv)  # int / int: correctly rounded


class _Filtered:
    """The filtered values of one :class:`Samples` list, and what the rules ask of them, kept as it grows.

    The filtered value at list index k (the median of the samples at k-2..k) depends on the
    list alone, so it serves every view that starts at k-2 or before, and it stays true: the
    list only grows at its end. Each is computed once, when a rule first needs the list's end.

    The rules judge the newest window, a view that ends where the list ends, over a recent
    stretch of it. For such views two summaries answer in (amortized) constant time instead of
    a pass over tens of thousands of samples: a stack of the list indices whose filtered value
    no later one undercuts (its entry at or after a stretch's start holds the stretch's
    minimum), and exact sums over the rate window's stretch for the slope. A view that ends
    earlier, or a list with a value that is not a number, is judged by a plain scan.
    """

    __slots__ = ("items", "values", "finite", "lows", "low_values", "sums")

    def __init__(self, items: list[Sample]) -> None:
        self.items = items
        self.values: list[float] = []
        self.finite = True
        self.lows: list[int] = []
        self.low_values: list[float] = []
        self.sums: _ExactSums | None = None

    def catch_up(self) -> None:
        """Filter the samples appended since the last call, and fold them into the stack."""
        items, values, lows, low_values = self.items, self.values, self.lows, self.low_values
        for k in range(len(values), len(items)):
            at, value = items[k]
            if k >= 2:
                value = _median3(items[k - 2][1], items[k - 1][1], value)
                while low_values and low_values[-1] > value:  # strictly: min() keeps the first of equals
                    lows.pop()
                    low_values.pop()
                lows.append(k)
                low_values.append(value)
            self.finite = self.finite and math.isfinite(at) and math.isfinite(value)
            values.append(value)

    def moved(self, items: list[Sample], start: int) -> "_Filtered":
        """The same for ``items``, the copy of this whole list from ``start`` on: the values and the
        stack shift down, the sums keep their samples, so dropping the old half costs no refiltering."""
        moved = _Filtered(items)
        moved.values, moved.finite = self.values[start:], self.finite
        cut = bisect.bisect_left(self.lows, start)
        moved.lows, moved.low_values = [k - start for k in self.lows[cut:]], self.low_values[cut:]
        if (sums := self.sums) is not None and sums.lo >= start:
            sums.lo, sums.hi = sums.lo - start, sums.hi - start
            moved.sums, self.sums = sums, None
        return moved

    def min_from(self, first: int) -> float:
        """The least filtered value from list index ``first`` to the list's end (caught up, finite)."""
        return self.low_values[bisect.bisect_left(self.lows, first)]

    def slope_from(self, first: int) -> float:
        """:func:`slope` of the filtered samples from list index ``first`` to the list's end (caught up, finite):
        the sums slide there from where they last stood."""
        items, values, end = self.items, self.values, len(self.items)
        sums = self.sums
        if sums is None:
            sums = self.sums = _ExactSums(items[first][0])
        if not sums.lo <= first <= sums.hi:
            sums.restart(first)
        for k in range(sums.hi, end):
            sums.add(items[k][0], values[k], 1)
        for k in range(sums.lo, first):
            sums.add(items[k][0], values[k], -1)
        sums.lo, sums.hi = first, end
        return sums.slope()


class Samples(Sequence[Sample]):
    """A window's samples, oldest first: a view of a list that only ever grows at its end.

    A window is a value (the watch and its tables hand windows around), but copying one for
    each new sample cost a pass over all of them: a sensor flooding the bus fills its window
    with tens of thousands, and the detector fell seconds behind. The newest window's view
    ends where the list ends, so the next sample is appended to the list and the new view
    reaches one further; an older view still ends where it did, and a sample added to it
    gets a list of its own. Old samples are dropped by moving the view's start; the list is
    copied once half of it is behind the start. The views of a list share its filtered values
    (:class:`_Filtered`): derived from the list, they change nothing a view shows.
    """

    __slots__ = ("_items", "_start", "_end", "_filtered")

    def __init__(self, items: Iterable[Sample] = (), start: int = 0, end: int | None = None,
                 filtered: _Filtered | None = None) -> None:
        self._items = items if isinstance(items, list) else list(items)
        self._start = start
        self._end = len(self._items) if end is None else end
        self._filtered = filtered if filtered is not None else _Filtered(self._items)

    def __len__(self) -> int:
        return self._end - self._start

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Sample, ...]: ...

    def __getitem__(self, index: int | slice) -> Sample | tuple[Sample, ...]:
        places = range(self._start, self._end)[index]
        if isinstance(places, range):
            return tuple(self._items[k] for k in places)
        return self._items[places]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._items[self._start:self._end])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))

    def appended(self, sample: Sample) -> "Samples":
        if self._end == len(self._items):
            self._items.append(sample)
            return Samples(self._items, self._start, self._end + 1, self._filtered)
        return Samples([*self, sample])

    def from_index(self, index: int) -> "Samples":
        """The samples from ``index`` (of this view) on."""
        start = self._start + index
        if start > len(self._items) // 2:
            items = self._items[start:self._end]
            at_end = self._end == len(self._items)
            return Samples(items, 0, None, self._filtered.moved(items, start) if at_end else None)
        return Samples(self._items, start, self._end, self._filtered)

    def filtered(self) -> list[Sample]:
        """Every filtered sample: ``(at, median of it and its two predecessors)`` from the third on."""
        self._filtered.catch_up()
        items, values = self._items, self._filtered.values
        return [(items[k][0], values[k]) for k in range(self._start + 2, self._end)]

    def filtered_since(self, at: float) -> "FilteredRun":
        """The filtered samples at or after ``at``."""
        self._filtered.catch_up()
        first = bisect.bisect_left(self._items, (at,), min(self._start + 2, self._end), self._end)
        return FilteredRun(self, first)


class FilteredRun:
    """The filtered samples of a window from some time on, judged without listing them where possible."""

    __slots__ = ("_samples", "_first", "_end")

    def __init__(self, samples: Samples, first: int) -> None:
        self._samples = samples
        self._first = first  # list index
        self._end = samples._end

    def __len__(self) -> int:
        return self._end - self._first

    @property
    def span(self) -> float:
        """The time from the first to the last sample (at least one sample)."""
        items = self._samples._items
        return items[self._end - 1][0] - items[self._first][0]

    @property
    def last(self) -> float:
        """The last filtered value (at least one sample)."""
        return self._samples._filtered.values[self._end - 1]

    def _at_list_end(self) -> bool:
        filtered = self._samples._filtered
        return filtered.finite and self._end == len(filtered.items)

    def min(self) -> float:
        """The least filtered value (at least one sample), the same float ``min`` of the list would give."""
        filtered = self._samples._filtered
        if self._at_list_end():
            return filtered.min_from(self._first)
        return min(filtered.values[self._first:self._end])

    def samples(self) -> list[Sample]:
        items, values = self._samples._items, self._samples._filtered.values
        return [(items[k][0], values[k]) for k in range(self._first, self._end)]

    def slope(self) -> float:
        """:func:`slope` of these samples (at least two), from the list's sliding sums where they serve."""
        if self._at_list_end():
            return self._samples._filtered.slope_from(self._first)
        return slope(self.samples())


@dataclass(frozen=True)
class SensorWindow:
    """One sensor's recent samples ``(at, value)``, oldest first, at most ``history_s`` long."""

    sensor: str
    samples: Samples = field(default_factory=Samples)

    def __post_init__(self) -> None:
        if not isinstance(self.samples, Samples):
            object.__setattr__(self, "samples", Samples(self.samples))

    @property
    def newest(self) -> float | None:
        return self.samples[-1][0] if self.samples else None

    def add(self, at: float, value: float, keep_s: float) -> "SensorWindow | None":
        """The window with the sample added and old ones dropped; None for a repeat or a stale one.

        The samples are kept in time order, so the newest sample — nearly every one — goes at
        the end (:class:`Samples`), and where the window starts and whether a time is a repeat
        are found by binary search.
        """
        samples = self.samples
        if samples and at <= samples[-1][0]:
            if at < samples[-1][0] - keep_s:
                return None
            place = bisect.bisect_left(samples, (at,))
            if place < len(samples) and samples[place][0] == at:
                return None
            merged = Samples([*samples[:place], (at, value), *samples[place:]])
        else:
            merged = samples.appended((at, value))
        return SensorWindow(self.sensor, merged.from_index(bisect.bisect_left(merged, (merged[-1][0] - keep_s,))))

    def filtered(self) -> list[Sample]:
        """Median of each sample and its two predecessors: one wild sample never shows.

        The first two samples have no filtered value: a sensor is judged from its third.
        """
        return self.samples.filtered()

    def latest_filtered(self) -> float | None:
        """The last value of :meth:`filtered`, without filtering the whole window."""
        return _median3(*(v for _, v in self.samples[-3:])) if len(self.samples) >= 3 else None


@dataclass(frozen=True)
class Detection:
    """One disaster: which rule, in which episode, with the measured value and its limit."""

    disaster_id: str
    rule: str
    episode: str
    sensor: str
    message: str
    value: float
    limit: float
    at: float


@dataclass(frozen=True)
class WatchStatus:
    """Whether the water is watched at a moment, why, and the episode it belongs to."""

    watching: bool
    reason: str = ""
    episode: str = ""
    valve_closed: bool = False
    closed_since: float | None = None


@dataclass(frozen=True)
class ReadingOutcome:
    """What one reading changed: the sensor's window (None if ignored), the watch, new disasters."""

    window: SensorWindow | None
    status: WatchStatus
    detections: list[Detection] = field(default_factory=list)


# -- measures -------------------------------------------------------------------------


def _median3(a: float, b: float, c: float) -> float:
    return max(min(a, b), min(max(a, b), c))


def _over(value: float, limit: float) -> bool:
    return round(value, PRECISION) > limit


def slope(samples: Sequence[Sample]) -> float:
    """Least-squares slope (value per second) of at least two samples at distinct times, exact and rounded once.

    Exact, so the rate rule's verdict does not depend on how the sums were taken: a pass over
    the samples and the sums a window keeps as samples come and go (:class:`_ExactSums`) give
    the same float. A sample that is not a number makes no slope (NaN, which no rule exceeds).
    """
    if not all(math.isfinite(t) and math.isfinite(v) for t, v in samples):
        return math.nan
    sums = _ExactSums(samples[0][0])
    for t, v in samples:
        sums.add(t, v, 1)
    return sums.slope()


def _ms(at: float) -> str:
    return str(round(at * 1000))


# -- the watch ------------------------------------------------------------------------


class DisasterWatch:
    """The detector's state and rules; every input carries its own time."""

    def __init__(
        self,
        limits: RuleLimits,
        job: JobFacts | None = None,
        valve: ValveFacts | None = None,
        windows: Mapping[str, SensorWindow] | None = None,
        detections: Iterable[Detection] = (),
    ) -> None:
        self.limits = limits
        self.job = job
        self.valve = valve or ValveFacts()
        self.windows: dict[str, SensorWindow] = dict(windows or {})
        self.detections: dict[str, Detection] = {d.disaster_id: d for d in detections}

    # -- inputs -----------------------------------------------------------------------

    def on_job_state(self, job_id: str, state: str, at: float) -> JobFacts:
        if self.job is None:
            self.job = first_job(job_id, state, at)
        elif at >= self.job.at:
            self.job = self.job.then(job_id, state, at)
        return self.job

    def on_valve_command(self, on: bool, at: float, lease_s: float = 0.0) -> ValveFacts:
        """A command to open (for a lease) or close the valve; a power cut counts as a close."""
        self.valve = self.valve.with_command(on, at, self.limits.lease_for(lease_s))
        return self.valve

    def on_lease_renewal(self, at: float, lease_s: float = 0.0) -> ValveFacts:
        """A ``lease`` command: keeps an open valve open; the adapter refuses it for a closed one."""
        self.valve = self.valve.renewed(at, self.limits.lease_for(lease_s))
        return self.valve

    def on_readback(self, valve_open: bool, at: float) -> ValveFacts:
        self.valve = self.valve.with_readback(valve_open, at)
        return self.valve

    def on_reading(self, sensor: str, value: float, at: float, released: Released = lambda _: None,
                   position: tuple[str, int] | None = None) -> ReadingOutcome:
        """Add a water temperature sample; return the new disasters it reveals.

        ``released`` tells what the reset that released a detection's FATAL occurrence
        covers; ``position`` is where this reading stands in its input. A released
        detection does not hide the same disaster found again past that (see :func:`reported`).
        """
        if sensor not in self.limits.water_sensors:
            return ReadingOutcome(None, self.status(at))
        window = self.windows.get(sensor, SensorWindow(sensor)).add(at, value, self.limits.history_s)
        if window is None:
            return ReadingOutcome(None, self.status(at))
        self.windows[sensor] = window
        now = window.newest or at
        status = self.status(now)
        if not status.watching:
            return ReadingOutcome(window, status)
        found = self._evaluate(window, now, status,
                               lambda disaster_id: not reported(self.detections.get(disaster_id), released, position))
        for detection in found:
            self.detections[detection.disaster_id] = detection
        return ReadingOutcome(window, status, found)

    # -- watching ---------------------------------------------------------------------

    def status(self, now: float) -> WatchStatus:
        """Whether the water is watched at ``now`` (see the module docstring)."""
        grace = self.limits.grace_s
        job, valve = self.job, self.valve
        closed_since = valve.closed_since(now)
        closed = closed_since is not None
        if job is not None and job.running:
            return WatchStatus(True, f"heating job {job.job_id} {job.state}", f"job-{job.job_id}", closed, closed_since)
        open_since = valve.open_since(now)
        job_grace = job is not None and job.ended_at is not None and job.ended_at <= now <= job.ended_at + grace
        episode = f"job-{job.job_id}" if job_grace and job is not None else ""
        if open_since is not None:
            why = "valve commanded open" if valve.commanded_open(now) else "valve reads open"
            return WatchStatus(True, why, episode or f"valve-{_ms(open_since)}", closed, closed_since)
        if job_grace and job is not None:
            return WatchStatus(True, f"grace after heating job {job.job_id} {job.state}", episode, closed, closed_since)
        closure = valve.last_closure(now)
        if closure is not None and closure <= now <= closure + grace:
            return WatchStatus(True, "grace after the valve closed", f"valve-{_ms(closure)}", closed, closed_since)
        return WatchStatus(False, "no heating job and the valve is closed", "", closed, closed_since)

    # -- rules ------------------------------------------------------------------------

    def _evaluate(self, window: SensorWindow, now: float, status: WatchStatus,
                  fresh: Callable[[str], bool] = lambda _: True) -> list[Detection]:
        """The new disasters the sensor's newest sample reveals: those whose id ``fresh`` accepts.

        A rule whose disaster stands reported in this episode (:func:`reported`) is not judged at
        all, as its finding would be dropped: a disaster that persists (the flooding sensor of a runaway) costs no
        more than quiet water. What the other rules read of the window costs no pass over it
        (:class:`_Filtered`), so a flooding sensor's window is as quick to judge as a quiet one's.
        """
        rules: list[tuple[Rule, Callable[[], Detection | None]]] = [
            (Rule.OVER_LIMIT, lambda: self._over_limit(window, now, status)),
            (Rule.TOO_FAST_RISE, lambda: self._too_fast(window, now, status)),
        ]
        if status.valve_closed and (closed_since := status.closed_since) is not None:
            rules.append((Rule.RISE_WHILE_CLOSED, lambda: self._rise_while_closed(window, now, status, closed_since)))
        if self.job is not None and self.job.running:
            rules.append((Rule.SENSOR_DISAGREEMENT, lambda: self._disagreement(now, status)))
        found = [judge() for rule, judge in rules if fresh(f"{rule.value}/{status.episode}")]
        return [d for d in found if d is not None]

    def _detection(self, rule: Rule, status: WatchStatus, sensor: str, message: str, value: float, limit: float, at: float) -> Detection:
        return Detection(f"{rule.value}/{status.episode}", rule.value, status.episode, sensor, message, round(value, PRECISION), limit, at)

    def _over_limit(self, window: SensorWindow, now: float, status: WatchStatus) -> Detection | None:
        limit, sensor = self.limits.disaster_c, window.sensor
        if (value := window.latest_filtered()) is None or not _over(value, limit):
            return None
        message = f"{sensor} at {value:.1f} °C is over the disaster limit {limit:.1f} °C ({status.reason})"
        return self._detection(Rule.OVER_LIMIT, status, sensor, message, value, limit, now)

    def _too_fast(self, window: SensorWindow, now: float, status: WatchStatus) -> Detection | None:
        recent = window.samples.filtered_since(now - self.limits.rate_window_s)
        if len(recent) < self.limits.min_rate_samples or round(recent.span, PRECISION) < self.limits.min_rate_span_s:
            return None
        limit, sensor = self.limits.max_rise_c_per_s, window.sensor

        rate = recent.slope()
        if not _over(rate, limit):
            return None
        message = f"{sensor} rising {rate:.2f} °C/s, faster than {limit:.2f} °C/s ({status.reason})"
        return self._detection(Rule.TOO_FAST_RISE, status, sensor, message, rate, limit, now)

    def _rise_while_closed(
        self, window: SensorWindow, now: float, status: WatchStatus, closed_since: float
    ) -> Detection | None:
        since = window.samples.filtered_since(max(now - self.limits.rise_window_s, closed_since))
        if len(since) < 2:
            return None
        rise, limit, sensor = since.last - since.min(), self.limits.rise_while_closed_c, window.sensor
        if not _over(rise, limit):
            return None
        message = (
            f"{sensor} rose {rise:.1f} °C within {self.limits.rise_window_s:.0f} s with the gas valve closed "
            f"(limit {limit:.1f} °C): heat without gas, the valve may be stuck open ({status.reason})"
        )
        return self._detection(Rule.RISE_WHILE_CLOSED, status, sensor, message, rise, limit, now)

    def _disagreement(self, now: float, status: WatchStatus) -> Detection | None:
        latest = {
            name: value
            for name, w in self.windows.items()
            if w.newest is not None and w.newest >= now - self.limits.fresh_s and (value := w.latest_filtered()) is not None
        }
        if len(latest) < 2:
            return None
        high, low = max(latest, key=latest.__getitem__), min(latest, key=latest.__getitem__)
        spread, limit = latest[high] - latest[low], self.limits.disagreement_c
        if not _over(spread, limit):
            return None
        message = (
            f"sensors disagree during heating: {high} {latest[high]:.1f} °C vs {low} {latest[low]:.1f} °C "
            f"({spread:.1f} °C apart, limit {limit:.1f} °C)"
        )
        return self._detection(Rule.SENSOR_DISAGREEMENT, status, f"{high},{low}", message, spread, limit, now)


def reported(prior: Detection | None, released: Released, position: tuple[str, int] | None = None) -> bool:
    """Whether a disaster was reported already: once per rule and episode, and again once a reset released it.

    An episode can outlive an operator reset (the water still rising in a job's grace
    period); the reset released the first report's FATAL, so the danger that persists
    past the readings the reset covered is reported again — a new occurrence — and latches.
    """
    if prior is None:
        return False
    covered = released(prior)
    return covered is None or still_covered(covered, position)
