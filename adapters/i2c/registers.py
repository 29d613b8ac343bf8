"""Register map of the Pico relay board (I2C address 0x42).

The Pico is independent hardware between the Pi and the relays: it owns the
hardware watchdog and the non-volatile trip latch, and refuses commands that
would be unsafe whatever the software above it believes.  The I2C adapter and
the simulator both use this module, so it is the single definition of the map.

Safe state: POWER_ON=0 (power cut-off open), gas valve closed, spark off.

======  ==============  ====  =========================================================
reg     name            mode  meaning
======  ==============  ====  =========================================================
0x00    ID              R     always 0x50
0x01    RELAY_CMD       R/W   bit0 POWER_ON, bit1 GAS_VALVE_OPEN, bit2 SPARK_ON;
                              reads back the last *accepted* command
0x02    RELAY_STATE     R     actual relay contacts (same bits); a welded valve shows
                              here even when RELAY_CMD says closed
0x03    WATCHDOG_KICK   W     write 0xA5 to kick; any other value is ignored and
                              counted in BAD_KICKS
0x04    STATUS          R     bit0 WDT_EXPIRED (sticky), bit1 TRIP_LATCHED,
                              bit2 CMD_REJECTED (sticky), bit3 VALVE_STUCK,
                              bit4 WDT_ARMED
0x05    TRIP            W     write 0xDE: power cut, valve closed, spark off, and the
                              trip is latched in non-volatile memory
0x06    RESET           W     write 0xA1 then 0x5E within 1 s: clears the trip latch
0x07    CLEAR_FAULTS    W     write 0xCF: clears WDT_EXPIRED, CMD_REJECTED, BAD_KICKS
0x08    WDT_WINDOW      R     watchdog window in units of 10 ms (500 ms reads 50)
0x09    BAD_KICKS       R     invalid kick writes since the last CLEAR_FAULTS (max 255)
0x0A    TRIP_COUNT      R     trips since manufacture, modulo 256 (non-volatile): an
                              operator reset is issued for one trip and refused after
                              another
======  ==============  ====  =========================================================

Rules the board enforces:

* The watchdog arms on the first valid kick after boot; until then the relays
  are simply safe.  No valid kick within the window: every relay goes safe,
  WDT_EXPIRED is set and the watchdog disarms until the next kick.
* A RELAY_CMD that energises anything is accepted only when the trip is not
  latched, the watchdog is armed and WDT_EXPIRED is clear, and only in a safe
  combination (valve or spark need POWER_ON; no undefined bits).  A refused
  command sets CMD_REJECTED and drives every relay safe.  Writing 0 (all safe)
  is always accepted.
* Wrong magic values on TRIP, RESET or CLEAR_FAULTS set CMD_REJECTED and change
  nothing else.
* A register not in the table, a read of a write-only register or a write to a
  read-only one is NACKed (the master sees ``OSError(121)``), as is every
  transaction to another address.
"""

from __future__ import annotations

from dataclasses import dataclass

PICO_ADDRESS = 0x42
PICO_ID = 0x50

REG_ID = 0x00
REG_RELAY_CMD = 0x01
REG_RELAY_STATE = 0x02
REG_WATCHDOG_KICK = 0x03
REG_STATUS = 0x04
REG_TRIP = 0x05
REG_RESET = 0x06
REG_CLEAR_FAULTS = 0x07
REG_WDT_WINDOW = 0x08
REG_BAD_KICKS = 0x09
REG_TRIP_COUNT = 0x0A

READABLE = frozenset({REG_ID, REG_RELAY_CMD, REG_RELAY_STATE, REG_STATUS, REG_WDT_WINDOW, REG_BAD_KICKS, REG_TRIP_COUNT})
WRITABLE = frozenset({REG_RELAY_CMD, REG_WATCHDOG_KICK, REG_TRIP, REG_RESET, REG_CLEAR_FAULTS})

RELAY_POWER_ON = 0x01
RELAY_GAS_VALVE_OPEN = 0x02
RELAY_SPARK_ON = 0x04
RELAY_MASK = RELAY_POWER_ON | RELAY_GAS_VALVE_OPEN | RELAY_SPARK_ON
RELAYS_SAFE = 0x00

STATUS_WDT_EXPIRED = 0x01
STATUS_TRIP_LATCHED = 0x02
STATUS_CMD_REJECTED = 0x04
STATUS_VALVE_STUCK = 0x08
STATUS_WDT_ARMED = 0x10

KICK_MAGIC = 0xA5
TRIP_MAGIC = 0xDE
RESET_ARM = 0xA1
RESET_CONFIRM = 0x5E
RESET_WINDOW_S = 1.0
CLEAR_FAULTS_MAGIC = 0xCF

WDT_WINDOW_UNIT_MS = 10
DEFAULT_WDT_WINDOW_MS = 500


@dataclass(frozen=True, slots=True)
class Relays:
    """Relay outputs as booleans; ``Relays()`` is the safe state."""

    power_on: bool = False
    gas_valve_open: bool = False
    spark_on: bool = False

    @property
    def is_safe(self) -> bool:
        return not (self.power_on or self.gas_valve_open or self.spark_on)


SAFE = Relays()


def encode_relays(relays: Relays) -> int:
    """Byte for RELAY_CMD / RELAY_STATE."""
    return (
        (RELAY_POWER_ON if relays.power_on else 0)
        | (RELAY_GAS_VALVE_OPEN if relays.gas_valve_open else 0)
        | (RELAY_SPARK_ON if relays.spark_on else 0)
    )


def decode_relays(value: int) -> Relays:
    """Relays from a RELAY_CMD / RELAY_STATE byte (undefined bits ignored)."""
    return Relays(
        power_on=bool(value & RELAY_POWER_ON),
        gas_valve_open=bool(value & RELAY_GAS_VALVE_OPEN),
        spark_on=bool(value & RELAY_SPARK_ON),
    )


def is_safe_combination(value: int) -> bool:
    """True when the board would accept ``value`` as a relay command shape.

    Valve and spark are fed through the power cut-off, so asking for either
    without POWER_ON means the master has lost track of the hardware.
    """
    if value & ~RELAY_MASK:
        return False
    if value & (RELAY_GAS_VALVE_OPEN | RELAY_SPARK_ON) and not value & RELAY_POWER_ON:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Status:
    """Decoded STATUS register."""

    wdt_expired: bool
    trip_latched: bool
    cmd_rejected: bool
    valve_stuck: bool
    wdt_armed: bool


def encode_status(status: Status) -> int:
    return (
        (STATUS_WDT_EXPIRED if status.wdt_expired else 0)
        | (STATUS_TRIP_LATCHED if status.trip_latched else 0)
        | (STATUS_CMD_REJECTED if status.cmd_rejected else 0)
        | (STATUS_VALVE_STUCK if status.valve_stuck else 0)
        | (STATUS_WDT_ARMED if status.wdt_armed else 0)
    )


def decode_status(value: int) -> Status:
    return Status(
        wdt_expired=bool(value & STATUS_WDT_EXPIRED),
        trip_latched=bool(value & STATUS_TRIP_LATCHED),
        cmd_rejected=bool(value & STATUS_CMD_REJECTED),
        valve_stuck=bool(value & STATUS_VALVE_STUCK),
        wdt_armed=bool(value & STATUS_WDT_ARMED),
    )


def encode_wdt_window(window_ms: int) -> int:
    """WDT_WINDOW register value for a window in milliseconds (10 ms units)."""
    if not WDT_WINDOW_UNIT_MS <= window_ms <= 255 * WDT_WINDOW_UNIT_MS:
        raise ValueError(f"watchdog window {window_ms} ms outside 10..2550 ms")
    return window_ms // WDT_WINDOW_UNIT_MS


def decode_wdt_window(value: int) -> int:
    """Watchdog window in milliseconds from the WDT_WINDOW register."""
    return value * WDT_WINDOW_UNIT_MS
