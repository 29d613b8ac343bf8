"""The relay controller: commands and sensor freshness in, desired relay outputs out.

Pure decision logic (no I/O, no clock of its own: every call takes ``now`` on one
monotonic time base) so every rule is a row in a table-driven test.  The Pico
enforces its own minimum (nothing energised without power, a fed watchdog and no
trip); this controller adds the rules a burner control needs on top:

* order of the gas train: valve needs power, spark needs an open valve, and a
  command that would break the order is refused, not "fixed";
* the gas valve is a **lease**: it opens for ``lease_s`` seconds and stays open only
  while the heating job renews it, while fresh temperature readings arrive and while
  DisasterDetector's heartbeat says it decides current readings, so a dead job,
  broker or detector closes the gas within seconds;
* ignition safety time: an open valve without a proven flame closes after a bound,
  and repeated failures lock the valve out until the power is switched off;
* the spark is bounded in time; a flame lost after ignition closes the valve;
* commands that arrive late (a backlog after an outage) never energise anything;
* switching things off, and ``cutoff``, are always accepted.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace
from typing import Any

from adapters.i2c.registers import SAFE, Relays

log = logging.getLogger(__name__)


class Action(str, enum.Enum):
    """What a relay command asks for (the values of ``I2CHeating`` records)."""

    POWER = "power"
    VALVE = "valve"
    SPARK = "spark"
    LEASE = "lease"
    CUTOFF = "cutoff"


class Refusal(str, enum.Enum):
    """Why a command was refused; the values are metric labels."""

    POWER_CUT = "power-cut"
    VALVE_CLOSED = "valve-closed"
    STALE_DATA = "stale-data"
    DETECTOR_SILENT = "detector-silent"
    STALE_COMMAND = "stale-command"
    LOCKOUT = "ignition-lockout"


@dataclass(frozen=True)
class Limits:
    """Time bounds of the gas train, in seconds."""

    default_lease_s: float = 3.0
    max_lease_s: float = 10.0
    stale_after_s: float = 2.0
    detector_silent_after_s: float = 3.0
    """How old the newest reading DisasterDetector says it decided may be (its beats
    come every 0.5 s; a restarted detector catching up on a backlog counts as silent)."""
    ignition_safety_s: float = 5.0
    max_spark_s: float = 4.0
    max_command_age_s: float = 2.0
    max_ignition_failures: int = 3


@dataclass(frozen=True)
class Command:
    """One relay command as the controller sees it (``age_s``: how late it arrived)."""

    action: Action
    on: bool
    lease_s: float = 0.0
    age_s: float = 0.0
    command_id: str = ""
    issued_by: str = ""


@dataclass(frozen=True)
class SafetyEvent:
    """Something the controller did on its own that an operator must hear about."""

    code: str
    severity: str
    message: str


@dataclass(frozen=True)
class Decision:
    """Outcome of a command or a tick: the outputs to drive now, and why."""

    outputs: Relays
    changed: bool
    accepted: bool = True
    refusal: Refusal | None = None
    message: str = ""
    events: tuple[SafetyEvent, ...] = ()


@dataclass
class _Train:
    """Timing state of the gas train (all times on the caller's monotonic clock)."""

    lease_until: float | None = None
    valve_opened_at: float | None = None
    spark_on_at: float | None = None
    ignition_at: float | None = None
    temperature_at: float | None = None
    detector_at: float | None = None
    flame: bool | None = None
    flame_at: float | None = None
    ignition_failures: int = 0


class RelayController:
    """Desired relay outputs under the gas-train rules."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.outputs: Relays = SAFE
        self.train = _Train()
        self.last_command: Command | None = None

    # -- inputs --------------------------------------------------------------------

    def command(self, cmd: Command, now: float) -> Decision:
        """Apply one command; refused commands leave the outputs as they were."""
        self.last_command = cmd
        before = self.outputs
        if cmd.action is Action.CUTOFF or (cmd.action is Action.POWER and not cmd.on):
            self._set(SAFE)
            self.train.ignition_failures = 0
            return self._decision(before, message="cut-off" if cmd.action is Action.CUTOFF else "power off")
        if not cmd.on:
            return self._switch_off(cmd.action, before)
        if cmd.age_s > self.limits.max_command_age_s:
            return self._refuse(Refusal.STALE_COMMAND, f"{cmd.action.value} on arrived {cmd.age_s:.1f} s late")
        if cmd.action is Action.POWER:
            self._set(replace(self.outputs, power_on=True))
            return self._decision(before, message="power on")
        if cmd.action is Action.VALVE:
            return self._open_valve(cmd, now, before)
        if cmd.action is Action.SPARK:
            return self._spark(now, before)
        return self._renew(cmd, now, before)

    def on_temperature(self, read_at: float) -> None:
        """A temperature reading taken at ``read_at``: the valve may stay open."""
        train = self.train
        if train.temperature_at is None or read_at > train.temperature_at:
            train.temperature_at = read_at

    def on_detector(self, decided_at: float) -> None:
        """DisasterDetector has decided the readings taken up to ``decided_at``."""
        train = self.train
        if train.detector_at is None or decided_at > train.detector_at:
            train.detector_at = decided_at

    def on_flame(self, present: bool, read_at: float) -> None:
        """A flame reading; a flame seen after the valve opened proves ignition."""
        train = self.train
        if train.flame_at is not None and read_at < train.flame_at:
            return
        train.flame, train.flame_at = present, read_at
        if (
            present
            and self.outputs.gas_valve_open
            and train.ignition_at is None
            and train.valve_opened_at is not None
            and read_at >= train.valve_opened_at
        ):
            train.ignition_at = read_at
            train.ignition_failures = 0

    def tick(self, now: float) -> Decision:
        """Enforce the time bounds: lease, data freshness, ignition safety time, spark."""
        before = self.outputs
        events: list[SafetyEvent] = []
        train, limits = self.train, self.limits
        if self.outputs.gas_valve_open:
            closing = self._valve_closing_reason(now)
            if closing is not None:
                code, message = closing
                if code == "ignition-failed":
                    train.ignition_failures += 1
                    if train.ignition_failures >= limits.max_ignition_failures:
                        message += f"; valve locked out after {train.ignition_failures} failures"
                events.append(SafetyEvent(code, "CRITICAL", message))
                self._close_valve()
        if self.outputs.spark_on and train.spark_on_at is not None and now - train.spark_on_at > limits.max_spark_s:
            events.append(SafetyEvent("spark-timeout", "WARNING", f"spark on longer than {limits.max_spark_s:.0f} s"))
            self._set(replace(self.outputs, spark_on=False))
        return self._decision(before, events=tuple(events))

    def force_safe(self) -> Decision:
        """The board is (or must be) safe whatever was asked: forget the lease and the spark."""
        before = self.outputs
        self._set(SAFE)
        return self._decision(before, message="forced safe")

    # -- views ---------------------------------------------------------------------

    def lease_state(self, now: float) -> dict[str, Any]:
        """Lease, freshness and ignition as seconds relative to ``now`` (for ``/relays``)."""
        train = self.train

        def since(at: float | None) -> float | None:
            return None if at is None else round(now - at, 3)

        return {
            "valve_open": self.outputs.gas_valve_open,
            "lease_remaining_s": None if train.lease_until is None else round(train.lease_until - now, 3),
            "temperature_age_s": since(train.temperature_at),
            "stale_after_s": self.limits.stale_after_s,
            "detector_age_s": since(train.detector_at),
            "detector_silent_after_s": self.limits.detector_silent_after_s,
            "valve_open_for_s": since(train.valve_opened_at),
            "ignition_proven": train.ignition_at is not None,
            "flame": train.flame,
            "spark_on_for_s": since(train.spark_on_at),
            "ignition_failures": train.ignition_failures,
        }

    # -- rules ---------------------------------------------------------------------

    def _valve_closing_reason(self, now: float) -> tuple[str, str] | None:
        train, limits = self.train, self.limits
        if train.lease_until is None or now >= train.lease_until:
            return "lease-expired", "valve lease not renewed: gas valve closed"
        if not self._fresh(now):
            return "stale-data", f"no temperature reading for more than {limits.stale_after_s:.1f} s: gas valve closed"
        if not self._detector_watching(now):
            return "detector-silent", (
                f"DisasterDetector has not decided a reading for more than {limits.detector_silent_after_s:.1f} s: gas valve closed"
            )
        if train.ignition_at is None:
            opened = train.valve_opened_at if train.valve_opened_at is not None else now
            if now - opened > limits.ignition_safety_s:
                return "ignition-failed", f"no flame within {limits.ignition_safety_s:.0f} s of opening: gas valve closed"
        elif train.flame is False and train.flame_at is not None and train.flame_at > train.ignition_at:
            return "flame-failure", "flame lost after ignition: gas valve closed"
        return None

    def waits_for_inputs(self, cmd: Command, now: float) -> bool:
        """True if ``cmd`` opens the valve on readings or detector beats that are not current now:
        its caller takes the ones published before the command first (they come in batches)."""
        return cmd.action is Action.VALVE and cmd.on and not (self._fresh(now) and self._detector_watching(now))

    def _fresh(self, now: float) -> bool:
        at = self.train.temperature_at
        return at is not None and now - at <= self.limits.stale_after_s

    def _detector_watching(self, now: float) -> bool:
        at = self.train.detector_at
        return at is not None and now - at <= self.limits.detector_silent_after_s

    def _open_valve(self, cmd: Command, now: float, before: Relays) -> Decision:
        if not self.outputs.power_on:
            return self._refuse(Refusal.POWER_CUT, "valve open with the power cut")
        if not self._fresh(now):
            return self._refuse(Refusal.STALE_DATA, "valve open without fresh temperature data")
        if not self._detector_watching(now):
            return self._refuse(Refusal.DETECTOR_SILENT, "valve open while DisasterDetector is not deciding current readings")
        if self.train.ignition_failures >= self.limits.max_ignition_failures:
            return self._refuse(Refusal.LOCKOUT, "valve locked out after failed ignitions; switch the power off first")
        if not self.outputs.gas_valve_open:
            self.train.valve_opened_at = now
            self.train.ignition_at = None
        self.train.lease_until = now + self._lease(cmd.lease_s)
        self._set(replace(self.outputs, gas_valve_open=True))
        return self._decision(before, message="valve open")

    def _spark(self, now: float, before: Relays) -> Decision:
        if not self.outputs.power_on:
            return self._refuse(Refusal.POWER_CUT, "spark with the power cut")
        if not self.outputs.gas_valve_open:
            return self._refuse(Refusal.VALVE_CLOSED, "spark without an open valve")
        if not self.outputs.spark_on:
            self.train.spark_on_at = now
        self._set(replace(self.outputs, spark_on=True))
        return self._decision(before, message="spark on")

    def _renew(self, cmd: Command, now: float, before: Relays) -> Decision:
        if not self.outputs.gas_valve_open:
            return self._refuse(Refusal.VALVE_CLOSED, "lease renewal for a closed valve (reopening needs a valve command)")
        self.train.lease_until = now + self._lease(cmd.lease_s)
        return self._decision(before, message="lease renewed")

    def _switch_off(self, action: Action, before: Relays) -> Decision:
        if action in (Action.VALVE, Action.LEASE):
            self._close_valve()
            return self._decision(before, message="valve closed")
        self._set(replace(self.outputs, spark_on=False))
        return self._decision(before, message="spark off")

    def _lease(self, requested: float) -> float:
        lease = requested if requested > 0 else self.limits.default_lease_s
        return min(lease, self.limits.max_lease_s)

    def _close_valve(self) -> None:
        self._set(replace(self.outputs, gas_valve_open=False, spark_on=False))

    def _set(self, outputs: Relays) -> None:
        """Change the outputs and keep the timing state consistent with them."""
        train = self.train
        if not outputs.power_on:
            outputs = SAFE
        if not outputs.gas_valve_open:
            outputs = replace(outputs, spark_on=False)
            train.lease_until = train.valve_opened_at = train.ignition_at = None
        if not outputs.spark_on:
            train.spark_on_at = None
        self.outputs = outputs

    def _refuse(self, reason: Refusal, message: str) -> Decision:
        return Decision(outputs=self.outputs, changed=False, accepted=False, refusal=reason, message=message)

    def _decision(self, before: Relays, message: str = "", events: tuple[SafetyEvent, ...] = ()) -> Decision:
        return Decision(outputs=self.outputs, changed=self.outputs != before, message=message, events=events)


__all__ = ["Action", "Command", "Decision", "Limits", "Refusal", "RelayController", "SafetyEvent"]
