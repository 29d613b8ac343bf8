"""The Pico's I2C port: a loopback TCP server speaking the SimulatedSMBus line protocol.

One request line, one reply line (see :mod:`adapters.i2c.simbus`).  The server
also owns the watchdog timer: after every transaction it re-arms an event-loop
timer for the Pico's current deadline, so expiry happens on time even when
nobody talks to the board.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .pico import Nack, Pico

log = logging.getLogger(__name__)

MAX_LINE = 64


class PicoServer:
    """Serves one :class:`Pico` on ``host:port``."""

    def __init__(self, pico: Pico, host: str, port: int, on_transaction: Callable[[], None] | None = None) -> None:
        self.pico = pico
        #: Called after every transaction and watchdog expiry (the Pico's process tells its contacts).
        self.on_transaction = on_transaction
        self.host = host
        self.requested_port = port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.requested_port, limit=MAX_LINE * 4
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("Pico listening on %s:%d", self.host, self.port)
        return self.port

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=1.0)
            await self._server.wait_closed()
            self._server = None

    def handle(self, line: str) -> str:
        """One transaction: request line in, reply line out."""
        parts = line.split()
        try:
            if len(parts) == 3 and parts[0] == "R":
                value = self.pico.read(int(parts[1], 16), int(parts[2], 16))
                return f"OK {value:02x}"
            if len(parts) == 4 and parts[0] == "W":
                self.pico.write(int(parts[1], 16), int(parts[2], 16), int(parts[3], 16))
                return "OK"
            return "NACK"
        except Nack:
            return "NACK"
        except ValueError:
            return "NACK"
        finally:
            self._rearm()
            self._changed()

    def _changed(self) -> None:
        if self.on_transaction is not None:
            self.on_transaction()

    def _rearm(self) -> None:
        """Schedule the watchdog check for the Pico's current deadline."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.pico.wdt_deadline
        if deadline is not None:
            delay = max(0.0, deadline - self.pico.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self.pico.check_watchdog():
            self._rearm()
        self._changed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while True:
                try:
                    raw = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    break
                if not raw:
                    break
                writer.write((self.handle(raw.decode("ascii", "replace")) + "\n").encode("ascii"))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._handlers.discard(task)
            writer.close()
