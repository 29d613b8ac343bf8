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
  ``rate_window_s`` (at least ``min_rate_span_s`` of data);
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
"""

from __future__ import annotations

import bisect
import enum
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


class Samples(Sequence[Sample]):
    """A window's samples, oldest first: a view of a list that only ever grows at its end.

    A window is a value (the watch and its tables hand windows around), but copying one for
    each new sample cost a pass over all of them: a sensor flooding the bus fills its window
    with tens of thousands, and the detector fell seconds behind. The newest window's view
    ends where the list ends, so the next sample is appended to the list and the new view
    reaches one further; an older view still ends where it did, and a sample added to it
    gets a list of its own. Old samples are dropped by moving the view's start; the list is
    copied once half of it is behind the start.
    """

    __slots__ = ("_items", "_start", "_end")

    def __init__(self, items: Iterable[Sample] = (), start: int = 0, end: int | None = None) -> None:
        self._items = items if isinstance(items, list) else list(items)
        self._start = start
        self._end = len(self._items) if end is None else end

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
            return Samples(self._items, self._start, self._end + 1)
        return Samples([*self, sample])

    def from_index(self, index: int) -> "Samples":
        """The samples from ``index`` (of this view) on."""
        start = self._start + index
        if start > len(self._items) // 2:
            return Samples(self._items[start:self._end])
        return Samples(self._items, start, self._end)


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
        values = [v for _, v in self.samples]
        return [(self.samples[i][0], _median3(values[i - 2], values[i - 1], values[i])) for i in range(2, len(values))]

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


def slope(samples: list[Sample]) -> float:
    """Least-squares slope (value per second) of at least two samples at distinct times."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    sxx = sum((t - mean_t) ** 2 for t, _ in samples)
    sxy = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return sxy / sxx if sxx > 0 else 0.0


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
        found = [d for d in self._evaluate(window, now, status)
                 if not reported(self.detections.get(d.disaster_id), released, position)]
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

    def _evaluate(self, window: SensorWindow, now: float, status: WatchStatus) -> list[Detection]:
        filtered = window.filtered()
        found = [self._over_limit(window.sensor, filtered, now, status), self._too_fast(window.sensor, filtered, now, status)]
        if status.valve_closed and status.closed_since is not None:
            found.append(self._rise_while_closed(window.sensor, filtered, now, status, status.closed_since))
        if self.job is not None and self.job.running:
            found.append(self._disagreement(now, status))
        return [d for d in found if d is not None]

    def _detection(self, rule: Rule, status: WatchStatus, sensor: str, message: str, value: float, limit: float, at: float) -> Detection:
        return Detection(f"{rule.value}/{status.episode}", rule.value, status.episode, sensor, message, round(value, PRECISION), limit, at)

    def _over_limit(self, sensor: str, filtered: list[Sample], now: float, status: WatchStatus) -> Detection | None:
        limit = self.limits.disaster_c
        if not filtered or not _over(value := filtered[-1][1], limit):
            return None
        message = f"{sensor} at {value:.1f} °C is over the disaster limit {limit:.1f} °C ({status.reason})"
        return self._detection(Rule.OVER_LIMIT, status, sensor, message, value, limit, now)

    def _too_fast(self, sensor: str, filtered: list[Sample], now: float, status: WatchStatus) -> Detection | None:
        recent = [s for s in filtered if s[0] >= now - self.limits.rate_window_s]
        if len(recent) < self.limits.min_rate_samples or round(recent[-1][0] - recent[0][0], PRECISION) < self.limits.min_rate_span_s:
            return None
        rate, limit = slope(recent), self.limits.max_rise_c_per_s
        if not _over(rate, limit):
            return None
        message = f"{sensor} rising {rate:.2f} °C/s, faster than {limit:.2f} °C/s ({status.reason})"
        return self._detection(Rule.TOO_FAST_RISE, status, sensor, message, rate, limit, now)

    def _rise_while_closed(
        self, sensor: str, filtered: list[Sample], now: float, status: WatchStatus, closed_since: float
    ) -> Detection | None:
        start = max(now - self.limits.rise_window_s, closed_since)
        since = [v for t, v in filtered if t >= start]
        if len(since) < 2:
            return None
        rise, limit = since[-1] - min(since), self.limits.rise_while_closed_c
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
