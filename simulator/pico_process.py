"""The Pico in a process of its own, as the real board is a microcontroller of its own.

A real Pico answers an I2C transaction in microseconds whatever the CAN bus carries. In the
simulator's process it shared the event loop and the CPU share with the bus flood it
generates: a TRIP on a saturated bus waited for the flood's turn (round trip p99 6–7 ms,
p90 2 ms, against p99 2–3 ms, p90 0.6 ms alone, on the same loaded machine). Here it keeps
its own loop and is scheduled as the quiet process it is.

The simulator speaks to it over the child's standard streams, one line each way:

- to the Pico: ``S`` (answer ``J <snapshot JSON>``), ``V 0|1`` (weld or free the valve),
  ``N 0|1`` (NACK every transaction or none);
- from the Pico: ``READY <port>`` once its I2C port listens, ``P <contacts>`` whenever its
  actual relay contacts change (what the tank's physics heats with), ``J ...`` answers.

The child ends when its standard input closes: the simulator stopped or was killed, so
no board is left answering on the port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapters.i2c import registers as r

from .i2c_server import PicoServer
from .nvram import Nvram
from .pico import Pico

log = logging.getLogger(__name__)

#: How long the simulator waits for the Pico's port to listen.
START_TIMEOUT_S = 10.0
#: How long a stopping simulator waits for the Pico to end before killing it.
STOP_TIMEOUT_S = 2.0
#: Longest line the simulator reads from the Pico: a snapshot with its 256 transitions is ~21 KB
#: (asyncio's default limit, 64 KiB, leaves too little room: a longer line ends the link).
LINE_LIMIT = 1 << 20


# ------------------------------------------------------------------- the child


def answer(pico: Pico, line: str) -> str | None:
    """One request from the simulator: the answer line, or None when it needs none."""
    parts = line.split()
    if parts == ["S"]:
        return "J " + json.dumps(pico.snapshot())
    if len(parts) == 2 and parts[0] in ("V", "N") and parts[1] in ("0", "1"):
        if parts[0] == "V":
            pico.set_valve_stuck(parts[1] == "1")
        else:
            pico.nack_all = parts[1] == "1"
        return None
    log.error("Pico process: request %r not understood", line)
    return None


async def serve(run_dir: Path, host: str, port: int, window_ms: int) -> int:
    """Serve the Pico until standard input closes."""
    loop = asyncio.get_running_loop()
    pico = Pico(Nvram(run_dir), window_ms=window_ms)
    told: list[int] = []

    def emit(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def contacts_changed() -> None:
        contacts = pico.contacts()
        if told != [contacts]:
            told[:] = [contacts]
            emit(f"P {contacts}")

    server = PicoServer(pico, host, port, on_transaction=contacts_changed)
    emit(f"READY {await server.start()}")
    contacts_changed()
    requests = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(requests), sys.stdin)
    try:
        while raw := await requests.readline():
            reply = answer(pico, raw.decode("ascii", "replace"))
            contacts_changed()
            if reply is not None:
                emit(reply)
    finally:
        await server.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.pico_process")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--watchdog-ms", type=int, default=r.DEFAULT_WDT_WINDOW_MS)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ctrl-C on a terminal's simulator reaches its whole process group: the simulator stops,
    # and the Pico with it when its standard input closes, as after any stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return asyncio.run(serve(args.run_dir, args.host, args.port, args.watchdog_ms))
    except OSError as exc:
        log.error("Pico cannot start: %s", exc)
        return 2


# ------------------------------------------------------------------ the parent


class PicoProcess:
    """The simulator's side: the Pico's child process, seen as the board (:class:`simulator.board.Board`).

    The relay contacts arrive as the Pico changes them; the whole snapshot is asked for
    (:meth:`refresh`) by whoever shows it. A fault is in force once a later refresh returned.
    """

    def __init__(self, run_dir: Path, host: str, port: int, window_ms: int, log_level: str = "INFO") -> None:
        self.run_dir = run_dir
        self.host = host
        self.requested_port = port
        self.window_ms = window_ms
        self.log_level = log_level
        self.port = 0
        self._contacts = r.RELAYS_SAFE
        self._snapshot: dict[str, Any] = {}
        self._valve_stuck = False
        self._nack_all = False
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._ask = asyncio.Lock()
        self._closing = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def ended(self) -> None:
        """Return when the Pico's process has ended (the board is gone: the simulator stops)."""
        if self._reader is not None:
            await asyncio.shield(self._reader)

    async def start(self) -> int:
        """Start the Pico and wait for its port; raises OSError when it does not come up."""
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simulator.pico_process", "--run-dir", str(self.run_dir),
            "--host", self.host, "--port", str(self.requested_port), "--watchdog-ms", str(self.window_ms),
            "--log-level", self.log_level, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT)
        assert self._process.stdout is not None
        try:
            first = await asyncio.wait_for(self._process.stdout.readline(), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            first = b""
        parts = first.decode("ascii", "replace").split()
        if len(parts) != 2 or parts[0] != "READY":
            await self.close()
            raise OSError(f"the Pico process did not come up (said {first!r})")
        self.port = int(parts[1])
        self._reader = asyncio.create_task(self._read(), name="pico-link")
        await self.refresh()
        return self.port

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while raw := await self._process.stdout.readline():
            kind, _, rest = raw.decode("ascii", "replace").rstrip("\n").partition(" ")
            if kind == "P":
                self._contacts = int(rest)
            elif kind == "J":
                self._snapshot = json.loads(rest)
                self._answers.put_nowait(self._snapshot)
        code = await self._process.wait()
        if not self._closing:
            log.error("the Pico process ended (exit %s)", code)

    def _tell(self, line: str) -> None:
        if self._process is not None and self._process.stdin is not None and not self._process.stdin.is_closing():
            self._process.stdin.write(line.encode("ascii") + b"\n")

    async def refresh(self) -> None:
        """Fetch the Pico's snapshot; everything told to it before is in force in it."""
        async with self._ask:
            while not self._answers.empty():  # a late answer to a request that timed out
                self._answers.get_nowait()
            self._tell("S")
            await asyncio.wait_for(self._answers.get(), START_TIMEOUT_S)

    # -- what the board asks of the Pico (as of the in-process :class:`simulator.pico.Pico`) --

    def check_watchdog(self) -> bool:
        """The Pico's own loop expires its watchdog at the deadline (:class:`PicoServer`)."""
        return False

    def relays(self) -> r.Relays:
        return r.decode_relays(self._contacts)

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot

    def set_valve_stuck(self, stuck: bool) -> None:
        if stuck != self._valve_stuck:
            self._valve_stuck = stuck
            self._tell(f"V {int(stuck)}")

    @property
    def nack_all(self) -> bool:
        return self._nack_all

    @nack_all.setter
    def nack_all(self, nack: bool) -> None:
        if nack != self._nack_all:
            self._nack_all = nack
            self._tell(f"N {int(nack)}")

    async def close(self) -> None:
        """End the Pico: its standard input closes, and it is killed if it does not go."""
        process = self._process
        if process is None:
            return
        self._closing = True
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


if __name__ == "__main__":
    sys.exit(main())
