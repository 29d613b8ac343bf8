"""An ``smbus2.SMBus`` whose wire is a TCP connection to the simulated Pico.

The I2C adapter is written against ``SMBus``; on a machine without
``/dev/i2c-*`` it gets this subclass instead and cannot tell the difference:
every failure (no simulator, NACK, timeout, garbled reply) surfaces as
``OSError(121, 'Remote I/O error')``, which is what the kernel driver raises
for a device that does not answer.

Wire protocol, one line each way per transaction (hex, no prefixes)::

    R <addr> <reg>\\n          ->  OK <value>\\n  |  NACK\\n
    W <addr> <reg> <value>\\n  ->  OK\\n          |  NACK\\n

A failed transaction is never retried here (a repeated write could repeat a
side effect); the connection is dropped and the next call reconnects.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
from urllib.parse import urlparse

from smbus2 import SMBus

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 0.1
HOST = "127.0.0.1"


def _remote_io_error() -> OSError:
    return OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))


def parse_target(target: int | str) -> int:
    """Port from ``5123``, ``"5123"`` or ``"sim://127.0.0.1:5123"`` (loopback only)."""
    if isinstance(target, int):
        return target
    if "://" not in target:
        return int(target)
    url = urlparse(target)
    if url.scheme != "sim" or url.hostname not in (HOST, "localhost") or url.port is None:
        raise ValueError(f"expected sim://127.0.0.1:PORT, got {target!r}")
    return url.port


class SimulatedSMBus(SMBus):
    """Byte-data SMBus transactions against the simulator's Pico."""

    def __init__(self, target: int | str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(bus=None)
        self.port = parse_target(target)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._rfile = None
        #: One transaction at a time, from any thread, as the kernel's I2C adapter lock does
        #: on a real bus (the FATAL trip is written from the event loop's thread).
        self._transaction = threading.Lock()

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        reply = self._transact(f"R {i2c_addr:02x} {register:02x}")
        try:
            value = int(reply.split()[1], 16)
        except (IndexError, ValueError):
            self._drop()
            raise _remote_io_error() from None
        return value & 0xFF

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        self._transact(f"W {i2c_addr:02x} {register:02x} {value & 0xFF:02x}")

    def close(self) -> None:
        self._drop()
        super().close()

    def _transact(self, request: str) -> str:
        with self._transaction:
            return self._transact_alone(request)

    def _transact_alone(self, request: str) -> str:
        try:
            sock = self._connection()
            sock.sendall(request.encode("ascii") + b"\n")
            reply = self._rfile.readline(64).decode("ascii", "replace").strip()
        except OSError as exc:
            log.debug("I2C transaction %r failed: %s", request, exc)
            self._drop()
            raise _remote_io_error() from None
        if not reply:
            self._drop()
            raise _remote_io_error()
        if not reply.startswith("OK"):
            raise _remote_io_error()
        return reply

    def _connection(self) -> socket.socket:
        """The open connection, or a fresh one if the old one went stale.

        A readable socket before a request means the peer closed it (the
        simulator restarted): reconnecting then cannot duplicate a request.
        """
        if self._sock is not None:
            readable, _, _ = select.select([self._sock], [], [], 0)
            if readable:
                self._drop()
        if self._sock is None:
            sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            self._rfile = sock.makefile("rb")
        return self._sock

    def _drop(self) -> None:
        if self._rfile is not None:
            self._rfile.close()
            self._rfile = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
