"""The Pico relay board: register semantics, hardware watchdog, trip latch.

Pure state machine (no sockets, no event loop): :mod:`simulator.i2c_server`
feeds it transactions and fires :meth:`Pico.check_watchdog` at the deadline.
It implements :mod:`adapters.i2c.registers` to the letter; see that module for
the map and the rules.  Every change of the *actual* relay contacts is
recorded with its wall-clock time so benches can measure reaction times from
the hardware's side.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from adapters.i2c import registers as r

from .nvram import Nvram, NvramState

log = logging.getLogger(__name__)

_RELAY_NAMES = (
    (r.RELAY_POWER_ON, "power", "power_on_at", "power_cut_at"),
    (r.RELAY_GAS_VALVE_OPEN, "valve", "valve_opened_at", "valve_closed_at"),
    (r.RELAY_SPARK_ON, "spark", "spark_on_at", "spark_off_at"),
)


class Nack(Exception):
    """The board did not acknowledge the transaction."""


class Pico:
    """Register-level model of the relay board."""

    def __init__(
        self,
        nvram: Nvram,
        window_ms: int = r.DEFAULT_WDT_WINDOW_MS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.window_ms = window_ms
        self._wdt_window_reg = r.encode_wdt_window(window_ms)
        self.clock = clock
        self.wall = wall
        self._nvram = nvram
        self._nv: NvramState = nvram.load()

        self.outputs = r.RELAYS_SAFE
        self.command = r.RELAYS_SAFE
        self.wdt_deadline: float | None = None
        self.wdt_expired = False
        self.cmd_rejected = False
        self.bad_kicks = 0
        self.last_kick_at: float | None = None
        self._reset_armed_at: float | None = None
        self.valve_stuck = False
        self.nack_all = False

        self.timestamps: dict[str, float | None] = {
            name: None
            for name in (
                "power_on_at", "power_cut_at", "valve_opened_at", "valve_closed_at",
                "spark_on_at", "spark_off_at", "safe_at", "wdt_expired_at", "tripped_at",
                "reset_at", "rejected_at",
            )
        }
        self.timestamps["tripped_at"] = self._nv.tripped_at
        self.transitions: deque[dict[str, Any]] = deque(maxlen=256)
        self.counters = {"reads": 0, "writes": 0, "nacks": 0, "rejected": 0}
        if self._nv.trip_latched:
            log.warning("Pico boots with the trip latched (from NVRAM)")

    # ------------------------------------------------------------------ state

    @property
    def trip_latched(self) -> bool:
        return self._nv.trip_latched

    @property
    def wdt_armed(self) -> bool:
        return self.wdt_deadline is not None

    def contacts(self) -> int:
        """Actual relay contacts: valve and spark are fed through the power relay."""
        if not self.outputs & r.RELAY_POWER_ON:
            return r.RELAYS_SAFE
        value = self.outputs
        if self.valve_stuck:
            value |= r.RELAY_GAS_VALVE_OPEN
        return value

    def relays(self) -> r.Relays:
        return r.decode_relays(self.contacts())

    def status(self) -> int:
        contacts = self.contacts()
        return r.encode_status(
            r.Status(
                wdt_expired=self.wdt_expired,
                trip_latched=self.trip_latched,
                cmd_rejected=self.cmd_rejected,
                valve_stuck=bool(contacts & r.RELAY_GAS_VALVE_OPEN)
                and not self.outputs & r.RELAY_GAS_VALVE_OPEN,
                wdt_armed=self.wdt_armed,
            )
        )

    # ------------------------------------------------------------ transactions

    def read(self, address: int, register: int) -> int:
        self._begin(address)
        self.counters["reads"] += 1
        if register not in r.READABLE:
            self._nack()
        if register == r.REG_ID:
            return r.PICO_ID
        if register == r.REG_RELAY_CMD:
            return self.command
        if register == r.REG_RELAY_STATE:
            return self.contacts()
        if register == r.REG_STATUS:
            return self.status()
        if register == r.REG_WDT_WINDOW:
            return self._wdt_window_reg
        if register == r.REG_TRIP_COUNT:
            return self._nv.trip_count & 0xFF
        return self.bad_kicks

    def write(self, address: int, register: int, value: int) -> None:
        self._begin(address)
        self.counters["writes"] += 1
        if register not in r.WRITABLE or not 0 <= value <= 0xFF:
            self._nack()
        if register == r.REG_WATCHDOG_KICK:
            self._kick(value)
        elif register == r.REG_RELAY_CMD:
            self._relay_command(value)
        elif register == r.REG_TRIP:
            if value == r.TRIP_MAGIC:
                self.trip("i2c")
            else:
                self._reject(f"TRIP with 0x{value:02X}")
        elif register == r.REG_RESET:
            self._reset_step(value)
        elif register == r.REG_CLEAR_FAULTS:
            if value == r.CLEAR_FAULTS_MAGIC:
                self.wdt_expired = False
                self.cmd_rejected = False
                self.bad_kicks = 0
                log.info("faults cleared")
            else:
                self._reject(f"CLEAR_FAULTS with 0x{value:02X}")

    def _begin(self, address: int) -> None:
        self.check_watchdog()
        if self.nack_all or address != r.PICO_ADDRESS:
            self._nack()

    def _nack(self) -> None:
        self.counters["nacks"] += 1
        raise Nack()

    # ------------------------------------------------------------- behaviour

    def check_watchdog(self) -> bool:
        """Expire the watchdog if its deadline has passed; True when it did."""
        if self.wdt_deadline is None or self.clock() < self.wdt_deadline:
            return False
        now = self.wall()
        self.wdt_deadline = None
        self.wdt_expired = True
        self.timestamps["wdt_expired_at"] = now
        self._drive(r.RELAYS_SAFE, "watchdog")
        log.warning("watchdog expired: relays safe (last kick %.3f, now %.3f)", self.last_kick_at or 0, now)
        return True

    def _kick(self, value: int) -> None:
        if value != r.KICK_MAGIC:
            self.bad_kicks = min(self.bad_kicks + 1, 0xFF)
            return
        if self.wdt_deadline is None:
            log.info("watchdog armed (window %d ms)", self.window_ms)
        self.wdt_deadline = self.clock() + self.window_ms / 1000.0
        self.last_kick_at = self.wall()

    def _relay_command(self, value: int) -> None:
        if value == r.RELAYS_SAFE:
            self.command = value
            self._drive(value, "command")
            return
        reason = None
        if self.trip_latched:
            reason = "trip latched"
        elif self.wdt_expired:
            reason = "watchdog expired (clear faults first)"
        elif not self.wdt_armed:
            reason = "watchdog not armed"
        elif not r.is_safe_combination(value):
            reason = "unsafe combination"
        if reason is not None:
            self._reject(f"RELAY_CMD 0x{value:02X}: {reason}")
            self._drive(r.RELAYS_SAFE, "rejected")
            return
        self.command = value
        self._drive(value, "command")

    def _reject(self, why: str) -> None:
        self.cmd_rejected = True
        self.counters["rejected"] += 1
        self.timestamps["rejected_at"] = self.wall()
        log.warning("command rejected: %s", why)

    def trip(self, cause: str) -> None:
        """Open the power cut-off and latch the trip in NVRAM."""
        self.command = r.RELAYS_SAFE
        self._drive(r.RELAYS_SAFE, f"trip:{cause}")
        now = self.wall()
        self.timestamps["tripped_at"] = now
        self._nv.trip_latched = True
        self._nv.tripped_at = now
        self._nv.trip_count += 1
        self._persist()
        log.warning("TRIP latched (%s)", cause)

    def _reset_step(self, value: int) -> None:
        now = self.clock()
        if value == r.RESET_ARM:
            self._reset_armed_at = now
            return
        armed_at, self._reset_armed_at = self._reset_armed_at, None
        if value != r.RESET_CONFIRM or armed_at is None or now - armed_at > r.RESET_WINDOW_S:
            self._reject(f"RESET sequence broken at 0x{value:02X}")
            return
        if self._nv.trip_latched:
            wall = self.wall()
            self._nv.trip_latched = False
            self._nv.reset_at = wall
            self.timestamps["reset_at"] = wall
            self._persist()
            log.warning("trip latch cleared by the reset sequence")

    def _persist(self) -> None:
        try:
            self._nvram.save(self._nv)
        except OSError:
            log.exception("NVRAM write failed; the latch holds in RAM only")

    # ----------------------------------------------------------- hardware faults

    def set_valve_stuck(self, stuck: bool) -> None:
        """Weld (or free) the gas valve: open whenever power is on."""
        before = self.contacts()
        self.valve_stuck = stuck
        self._record(before, "valve_stuck" if stuck else "valve_freed")

    def _drive(self, outputs: int, cause: str) -> None:
        before = self.contacts()
        self.outputs = outputs
        self._record(before, cause)

    def _record(self, before: int, cause: str) -> None:
        after = self.contacts()
        if before == after:
            return
        now = self.wall()
        for bit, name, on_key, off_key in _RELAY_NAMES:
            if (before ^ after) & bit:
                on = bool(after & bit)
                self.timestamps[on_key if on else off_key] = now
                self.transitions.append({"at": now, "relay": name, "on": on, "cause": cause})
        if after == r.RELAYS_SAFE:
            self.timestamps["safe_at"] = now

    def snapshot(self) -> dict[str, Any]:
        relays = self.relays()
        return {
            "relays": {
                "power_on": relays.power_on,
                "gas_valve_open": relays.gas_valve_open,
                "spark_on": relays.spark_on,
            },
            "relay_state": self.contacts(),
            "relay_cmd": self.command,
            "status": self.status(),
            "trip_latched": self.trip_latched,
            "trip_count": self._nv.trip_count,
            "cmd_rejected": self.cmd_rejected,
            "valve_stuck": self.valve_stuck,
            "watchdog": {
                "window_ms": self.window_ms,
                "armed": self.wdt_armed,
                "expired": self.wdt_expired,
                "last_kick_at": self.last_kick_at,
                "expired_at": self.timestamps["wdt_expired_at"],
                "bad_kicks": self.bad_kicks,
            },
            "timestamps": dict(self.timestamps),
            "transitions": list(self.transitions),
            "i2c": dict(self.counters, nack_injected=self.nack_all),
        }
