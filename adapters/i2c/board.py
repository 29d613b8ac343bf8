"""The Pico relay board as a small device interface over any ``smbus2.SMBus``.

One interface, two backends, as python-can does it: the real ``smbus2.SMBus(n)`` on
the Pi (``/dev/i2c-n``) and :class:`~adapters.i2c.simbus.SimulatedSMBus` against the
simulator (``sim://127.0.0.1:PORT``), chosen by the bus name in the settings.  The
board code cannot tell them apart: both raise ``OSError(121)`` for a device that does
not answer, which surfaces here as :class:`BoardError` naming the operation.

Every method is one or a few blocking byte transactions (well under a millisecond on
either backend); callers on an event loop run them in a worker thread.  Nothing here
retries: a repeated write can repeat a side effect, so retrying is the caller's
decision.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Iterable

from smbus2 import SMBus

from adapters.i2c import registers as r

log = logging.getLogger(__name__)

#: Backend name → (module, class), imported only when chosen.
BACKENDS: dict[str, tuple[str, str]] = {
    "smbus": ("smbus2", "SMBus"),
    "sim": ("adapters.i2c.simbus", "SimulatedSMBus"),
}


class BoardError(OSError):
    """An I2C transaction with the Pico failed (NACK, missing device, timeout)."""

    def __init__(self, operation: str, cause: OSError | None = None, detail: str = "") -> None:
        errno_ = cause.errno if cause is not None and cause.errno is not None else 121
        super().__init__(errno_, f"{operation}: {detail or (cause.strerror if cause else 'failed')}")
        self.operation = operation


class WrongDevice(BoardError):
    """Something answers at the Pico's address but its ID register is not the Pico's."""


def backend_for(bus: str) -> tuple[str, int | str]:
    """``(backend name, argument)`` for a bus setting: ``"1"``, ``"/dev/i2c-1"`` or ``"sim://127.0.0.1:PORT"``."""
    text = str(bus).strip()
    if text.startswith("sim://"):
        return "sim", text
    if text.isdigit():
        return "smbus", int(text)
    if text.startswith("/dev/i2c-"):
        return "smbus", text
    raise ValueError(f"I2C bus {bus!r}: expected a bus number, /dev/i2c-N or sim://127.0.0.1:PORT")


def open_bus(bus: str) -> SMBus:
    """Open the SMBus backend the setting names (raises ``OSError`` if the device node is missing,
    ``PermissionError`` naming the device's group if this process may not open it)."""
    name, argument = backend_for(bus)
    module, cls = BACKENDS[name]
    try:
        return getattr(importlib.import_module(module), cls)(argument)
    except PermissionError as exc:
        path = argument if isinstance(argument, str) else f"/dev/i2c-{argument}"
        raise PermissionError(exc.errno, group_hint(path, os.stat(path).st_gid, {os.getegid(), *os.getgroups()})) from exc


def group_hint(path: str, device_gid: int, groups: Iterable[int]) -> str:
    """Why the device cannot be opened, with the gid the pod needs: the group number differs between OS images."""
    have = sorted(set(groups))
    if device_gid in have:
        return f"permission denied on {path} although this process has its group {device_gid}: check its mode (ls -l {path})"
    return (f"permission denied on {path}: it belongs to group {device_gid}, this process has groups {have}; "
            f"put {device_gid} in the I2C adapter's supplementalGroups (deploy/overlays/pi/i2c.yaml)")


@dataclass(frozen=True, slots=True)
class Readback:
    """What the board says after a write: accepted command, actual contacts, status."""

    command: r.Relays
    contacts: r.Relays
    status: r.Status
    read_at: float

    def confirms(self, desired: r.Relays) -> bool:
        """True when the board accepted exactly ``desired`` and the contacts follow it."""
        return self.command == desired and self.contacts == desired

    def as_dict(self) -> dict[str, object]:
        return {
            "command": _relays_dict(self.command),
            "contacts": _relays_dict(self.contacts),
            "status": {
                "wdt_expired": self.status.wdt_expired,
                "trip_latched": self.status.trip_latched,
                "cmd_rejected": self.status.cmd_rejected,
                "valve_stuck": self.status.valve_stuck,
                "wdt_armed": self.status.wdt_armed,
            },
            "read_at": self.read_at,
        }


def _relays_dict(relays: r.Relays) -> dict[str, bool]:
    return {"power_on": relays.power_on, "gas_valve_open": relays.gas_valve_open, "spark_on": relays.spark_on}


class RelayBoard:
    """Register-level operations on the Pico (see :mod:`adapters.i2c.registers`)."""

    def __init__(self, bus: SMBus, address: int = r.PICO_ADDRESS) -> None:
        self.bus = bus
        self.address = address

    @classmethod
    def open(cls, bus: str) -> "RelayBoard":
        """The board behind the bus named in the settings."""
        return cls(open_bus(bus))

    # -- transactions --------------------------------------------------------------

    def _read(self, register: int, operation: str) -> int:
        try:
            return self.bus.read_byte_data(self.address, register)
        except OSError as exc:
            raise BoardError(operation, exc) from None

    def _write(self, register: int, value: int, operation: str) -> None:
        try:
            self.bus.write_byte_data(self.address, register, value)
        except OSError as exc:
            raise BoardError(operation, exc) from None

    # -- reads ---------------------------------------------------------------------

    def identify(self) -> int:
        """The ID register; raises :class:`WrongDevice` unless it is the Pico's."""
        value = self._read(r.REG_ID, "read ID")
        if value != r.PICO_ID:
            raise WrongDevice("read ID", detail=f"ID 0x{value:02X} is not the Pico's 0x{r.PICO_ID:02X}")
        return value

    def read_status(self) -> r.Status:
        return r.decode_status(self._read(r.REG_STATUS, "read STATUS"))

    def read_command(self) -> r.Relays:
        """The last command the board accepted."""
        return r.decode_relays(self._read(r.REG_RELAY_CMD, "read RELAY_CMD"))

    def read_contacts(self) -> r.Relays:
        """The actual relay contacts (a welded valve shows here)."""
        return r.decode_relays(self._read(r.REG_RELAY_STATE, "read RELAY_STATE"))

    def read_back(self) -> Readback:
        """Command, contacts and status in one go (three reads)."""
        command = self.read_command()
        contacts = self.read_contacts()
        status = self.read_status()
        return Readback(command=command, contacts=contacts, status=status, read_at=time.time())

    def watchdog_window_ms(self) -> int:
        return r.decode_wdt_window(self._read(r.REG_WDT_WINDOW, "read WDT_WINDOW"))

    def bad_kicks(self) -> int:
        return self._read(r.REG_BAD_KICKS, "read BAD_KICKS")

    def trip_count(self) -> int:
        """The Pico's count of trips (modulo 256)."""
        return self._read(r.REG_TRIP_COUNT, "read TRIP_COUNT")

    # -- writes --------------------------------------------------------------------

    def write_relays(self, relays: r.Relays) -> None:
        """Ask for ``relays``; the board may refuse (and then drives everything safe)."""
        self._write(r.REG_RELAY_CMD, r.encode_relays(relays), "write RELAY_CMD")

    def kick(self) -> None:
        """Feed the hardware watchdog (the first kick after boot arms it)."""
        self._write(r.REG_WATCHDOG_KICK, r.KICK_MAGIC, "kick")

    def trip(self) -> None:
        """Power cut, valve closed, spark off, latched in the board's non-volatile memory."""
        self._write(r.REG_TRIP, r.TRIP_MAGIC, "TRIP")

    def clear_faults(self) -> None:
        """Clear WDT_EXPIRED, CMD_REJECTED and BAD_KICKS (never the trip latch)."""
        self._write(r.REG_CLEAR_FAULTS, r.CLEAR_FAULTS_MAGIC, "CLEAR_FAULTS")

    def reset_latch(self) -> None:
        """The two-step reset sequence that clears the trip latch (only for a verified operator reset)."""
        self._write(r.REG_RESET, r.RESET_ARM, "RESET arm")
        self._write(r.REG_RESET, r.RESET_CONFIRM, "RESET confirm")

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        try:
            self.bus.close()
        except OSError:
            log.debug("closing the I2C bus failed", exc_info=True)

    def __enter__(self) -> "RelayBoard":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
