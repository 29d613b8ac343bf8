"""The heating job's burner control, EN 298 style, as a pure state machine.

No Kafka, no clock, no I/O: readings and ``now`` (seconds on one monotonic time base)
come in, :mod:`~streams.heating.effects` come out, in the order they must be carried
out. The sequence:

1. **Pre-check** (``idle``): wait for fresh water temperatures and a flame reading.
   A flame signal before any gas was let in is a false flame (a failed detector or
   a gas leak burning): lock out. Water already at the target: done, no gas.
2. **Ignition** (``igniting``): power on, valve on under a lease, spark on. The
   spark is bounded (``spark_s``); a flame must be seen within ``ignition_safety_s``
   of opening the valve, else the valve closes and, after a pause with the gas off
   (and no flame), the next attempt starts; after ``ignition_attempts`` failures:
   lock out.
3. **Heating** (``heating``): the lease is renewed every ``lease_renew_s``; the gas
   closes at once when the flame is lost, when the water reaches the target (done),
   or when it has not risen by ``min_change_c`` within ``no_change_period_s``.

A lock-out needs an operator, like a burner control's reset button: it is raised as
the FATAL alarm ``heating-job/lockout``, which latches the platform and trips the
Pico's hardware cut-off until the operator reset. Every other failure closes the
gas, raises a CRITICAL alarm and ends the job with ``failed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from streams.heater_config import HeaterLimits
from streams.heating.effects import (
    FLAME_LOSS_ALARM,
    HEATING_ALARM,
    LOCKOUT_ALARM,
    NO_CHANGE_ALARM,
    NO_DATA_ALARM,
    ClearAlarm,
    Effect,
    Finish,
    Outcome,
    Phase,
    Publish,
    RaiseAlarm,
    Relay,
)
from streams.heating.readings import Readings

#: Slack on time comparisons, so a bound is met at its exact second despite float sums.
_EPS = 1e-9


@dataclass(frozen=True)
class JobTiming:
    """Bounds of the job itself that are not heater limits.

    ``data_timeout_s`` matches the I2C adapter's freshness bound: a reading older than
    that does not count, and with none left the job stops asking for gas (the adapter
    would close the valve anyway). ``retry_pause_s`` lets unburnt gas clear between
    ignition attempts and proves the flame signal goes away with the gas.
    """

    data_wait_s: float = 5.0
    data_timeout_s: float = 2.0
    retry_pause_s: float = 1.0


class HeatingMachine:
    """One heating job from start to its outcome."""

    def __init__(self, target_c: float, limits: HeaterLimits | None = None, timing: JobTiming | None = None) -> None:
        self.target_c = target_c
        self.limits = limits or HeaterLimits()
        self.timing = timing or JobTiming()
        self.readings = Readings()
        self.phase = Phase.NEW
        self.started_at = 0.0
        self.attempt = 0
        self.attempt_at = 0.0
        self.closed_at = 0.0
        self.flame_at = 0.0
        self.lease_at = 0.0
        self.spark_on = False
        self.powered = False
        self.baseline_c = 0.0
        self.progress_by = 0.0
        self.heating_at: float | None = None
        self.finish: Finish | None = None

    # -- inputs ----------------------------------------------------------------------

    def start(self, now: float) -> list[Effect]:
        """Validate the target and begin the pre-check."""
        if self.phase is not Phase.NEW:
            raise RuntimeError("a heating job starts once")
        self.started_at = now
        refusal = target_refusal(self.target_c, self.limits)
        if refusal is not None:
            self.phase = Phase.FAILED
            self.finish = Finish(Outcome.FAILED, refusal)
            return [Publish("failed", refusal), self.finish]
        self.phase = Phase.WAITING
        effects: list[Effect] = [
            RaiseAlarm(HEATING_ALARM, "INFO", f"heating the water to {self.target_c:.1f} °C"),
            Publish("idle", "pre-check: waiting for sensor data"),
        ]
        return effects + self._evaluate(now)

    def on_temperature(self, sensor: str, value_c: float, at: float, now: float) -> list[Effect]:
        self.readings.on_temperature(sensor, value_c, at)
        return self._evaluate(now)

    def on_flame(self, present: bool, at: float, now: float) -> list[Effect]:
        self.readings.on_flame(present, at)
        return self._evaluate(now)

    def tick(self, now: float) -> list[Effect]:
        """Time passes: enforce the spark, ignition, lease, data and progress bounds."""
        return self._evaluate(now)

    def abort(self, reason: str, fatal: bool = False) -> list[Effect]:
        """Stop from outside (FATAL, a signal, a crash): gas off first, then say so.

        On FATAL the power cut-off is asked for too, even if this job never switched
        the power on: it costs nothing and the adapter may not have seen the alarm yet.
        """
        if self.phase.finished or self.phase is Phase.NEW:
            return []
        effects: list[Effect] = []
        if fatal:
            effects += [Relay("valve", False, reason=reason), Relay("cutoff", True, reason=reason)]
        elif self.powered:
            effects += self._gas_off(reason)
        self.phase = Phase.FAILED
        self.powered = False
        return effects + [Publish("failed", reason)]

    # -- rules -----------------------------------------------------------------------

    def _evaluate(self, now: float) -> list[Effect]:
        if self.phase is Phase.WAITING:
            return self._pre_check(now)
        if self.phase is Phase.IGNITING:
            return self._igniting(now)
        if self.phase is Phase.PAUSE:
            return self._pause(now)
        if self.phase is Phase.HEATING:
            return self._heating(now)
        return []

    def _pre_check(self, now: float) -> list[Effect]:
        fresh_since = now - self.timing.data_timeout_s
        water = self.readings.temperature(now, self.timing.data_timeout_s)
        flame = self.readings.flame_since(fresh_since)
        if water is None or flame is None:
            if now - self.started_at >= self.timing.data_wait_s - _EPS:
                return self._fail(
                    NO_DATA_ALARM,
                    f"no fresh water temperature and flame readings within {self.timing.data_wait_s:.0f} s of start",
                )
            return []
        if flame:
            return self._lockout("flame signal before the gas valve opened (false flame)")
        if water >= self.target_c:
            return self._done(f"water already at {water:.1f} °C (target {self.target_c:.1f} °C)")
        return self._ignite(now)

    def _ignite(self, now: float) -> list[Effect]:
        self.attempt += 1
        self.phase = Phase.IGNITING
        self.attempt_at = self.lease_at = now
        self.spark_on = self.powered = True
        lease = self.limits.lease_s
        why = f"ignition attempt {self.attempt}/{self.limits.ignition_attempts}"
        return [
            Publish("igniting", why),
            Relay("power", True, reason=why),
            Relay("valve", True, lease_s=lease, reason=why),
            Relay("spark", True, reason=why),
        ]

    def _igniting(self, now: float) -> list[Effect]:
        lost = self._data_lost(now)
        if lost:
            return self._fail(NO_DATA_ALARM, lost)
        effects: list[Effect] = []
        if self.readings.flame_since(self.attempt_at):
            assert self.readings.flame is not None
            self.flame_at = self.readings.flame.at
            if self.spark_on:
                effects.append(self._spark_off("flame proven"))
            water = self.readings.temperature(now, self.timing.data_timeout_s)
            assert water is not None
            self.phase = Phase.HEATING
            self.heating_at = now
            self.baseline_c, self.progress_by = water, now + self.limits.no_change_period_s
            took = self.flame_at - self.attempt_at
            effects.append(Publish("heating", f"flame proven {took:.2f} s into attempt {self.attempt}; water {water:.1f} °C"))
            return effects + self._heating(now)
        elapsed = now - self.attempt_at
        if self.spark_on and elapsed >= self.limits.spark_s - _EPS:
            effects.append(self._spark_off(f"spark bounded to {self.limits.spark_s:.1f} s"))
        if elapsed >= self.limits.ignition_safety_s - _EPS:
            return effects + self._ignition_failed(now)
        return effects + self._renew(now)

    def _ignition_failed(self, now: float) -> list[Effect]:
        why = f"no flame within {self.limits.ignition_safety_s:.1f} s (attempt {self.attempt}/{self.limits.ignition_attempts})"
        if self.attempt >= self.limits.ignition_attempts:
            return self._lockout(f"ignition failed {self.attempt} times: {why}")
        effects: list[Effect] = []
        if self.spark_on:
            effects.append(self._spark_off(why))
        self.phase = Phase.PAUSE
        self.closed_at = now
        return effects + [
            Relay("valve", False, reason=why),
            Publish("igniting", f"{why}; gas off, retrying in {self.timing.retry_pause_s:.1f} s"),
        ]

    def _pause(self, now: float) -> list[Effect]:
        lost = self._data_lost(now)
        if lost:
            return self._fail(NO_DATA_ALARM, lost)
        if now - self.closed_at < self.timing.retry_pause_s - _EPS:
            return []
        flame = self.readings.flame_since(self.closed_at + self.timing.retry_pause_s / 2)
        if flame is None:
            return []
        if flame:
            return self._lockout("flame signal persists with the gas valve closed (false flame)")
        return self._ignite(now)

    def _heating(self, now: float) -> list[Effect]:
        lost = self._data_lost(now)
        if lost:
            return self._fail(NO_DATA_ALARM, lost)
        flame = self.readings.flame
        assert flame is not None
        if flame.at > self.flame_at and flame.value < 0.5:
            return self._fail(FLAME_LOSS_ALARM, "flame lost while heating: gas valve closed")
        water = self.readings.temperature(now, self.timing.data_timeout_s)
        assert water is not None
        if water >= self.target_c:
            return self._done(f"target {self.target_c:.1f} °C reached ({water:.1f} °C)")
        if water - self.baseline_c >= self.limits.min_change_c - _EPS:
            self.baseline_c, self.progress_by = water, now + self.limits.no_change_period_s
        elif now >= self.progress_by - _EPS:
            return self._fail(
                NO_CHANGE_ALARM,
                f"water temperature did not rise by {self.limits.min_change_c:.1f} °C within "
                f"{self.limits.no_change_period_s:.0f} s (stuck at {self.baseline_c:.1f} °C): gas valve closed",
            )
        return self._renew(now)

    def _data_lost(self, now: float) -> str:
        """Why the job cannot go on without data ('' while it can)."""
        timeout = self.timing.data_timeout_s
        if self.readings.temperature(now, timeout) is None:
            return f"no water temperature for more than {timeout:.1f} s: gas valve closed"
        if self.readings.flame_since(now - timeout) is None:
            return f"no flame signal for more than {timeout:.1f} s: gas valve closed"
        return ""

    def _renew(self, now: float) -> list[Effect]:
        if not self.phase.wants_gas or now - self.lease_at < self.limits.lease_renew_s - _EPS:
            return []
        self.lease_at = now
        return [Relay("lease", True, lease_s=self.limits.lease_s, reason="lease renewal")]

    # -- endings ---------------------------------------------------------------------

    def _spark_off(self, why: str) -> Relay:
        self.spark_on = False
        return Relay("spark", False, reason=why)

    def _gas_off(self, why: str) -> list[Effect]:
        """Valve first, then power: the order a burner control shuts down in."""
        self.spark_on = False
        if not self.powered:
            return []
        self.powered = False
        return [Relay("valve", False, reason=why), Relay("power", False, reason=why)]

    def _end(self, phase: Phase, outcome: Outcome, why: str, alarm: RaiseAlarm | None) -> list[Effect]:
        effects = self._gas_off(why)
        if alarm is not None:
            effects.append(alarm)
        self.phase = phase
        self.finish = Finish(outcome, why)
        effects.append(Publish(phase.state, why))
        if outcome is not Outcome.LOCKOUT:
            effects.append(ClearAlarm(HEATING_ALARM, why))
        return effects + [self.finish]

    def _done(self, why: str) -> list[Effect]:
        return self._end(Phase.DONE, Outcome.DONE, why, None)

    def _fail(self, code: str, why: str) -> list[Effect]:
        return self._end(Phase.FAILED, Outcome.FAILED, why, RaiseAlarm(code, "CRITICAL", why))

    def _lockout(self, why: str) -> list[Effect]:
        message = f"burner locked out: {why}; an operator reset is required"
        return self._end(Phase.LOCKOUT, Outcome.LOCKOUT, message, RaiseAlarm(LOCKOUT_ALARM, "FATAL", message))


def target_refusal(target_c: float, limits: HeaterLimits) -> str | None:
    """Why a target is refused (None if it is acceptable); shared by the job and its controller."""
    if not isinstance(target_c, (int, float)) or isinstance(target_c, bool) or not math.isfinite(target_c):
        return f"target {target_c!r} is not a number"
    if target_c > limits.max_target_c:
        return f"target {target_c:.1f} °C above the limit of {limits.max_target_c:.1f} °C"
    if target_c <= 0:
        return f"target {target_c:.1f} °C must be above 0 °C"
    return None
