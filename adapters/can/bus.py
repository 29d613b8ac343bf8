"""The CAN bus backend: open a python-can bus from settings and receive from it on a thread.

The same code runs on the local simulation (``interface="remote"``, a websocket to the
simulator's bus) and on the Pi (``interface="socketcan"``, ``can0``).  Reception runs on a
dedicated thread rather than on the event loop: a saturated 1 Mbit/s bus delivers about
9,000 frames/s and SocketCAN's socket buffer holds only a few tens of milliseconds of
them, so the thread must keep draining while the loop is busy producing to Kafka.

The thread stamps each frame with the wall-clock time of reception and hands frames to
the loop in batches (one wake-up per batch, not per frame).  On the simulation it reads
every frame that has arrived at once (:mod:`adapters.can.remote`); SocketCAN is read a
frame per call.  A bus that fails under the reader is reported once as a
:class:`BusFailure` item, never as an exception in the loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Union

import can

from adapters.can.remote import receiver_for

log = logging.getLogger(__name__)

#: How long one ``recv`` may block, i.e. how quickly the reader notices it should stop.
RECV_TIMEOUT_S = 0.1
#: How long closing may take before the bus is abandoned to a daemon thread.
CLOSE_TIMEOUT_S = 2.0


class BusUnavailable(RuntimeError):
    """The bus could not be opened (no device, interface down, simulator not running)."""


@dataclass(frozen=True, slots=True)
class Received:
    """One frame and the wall-clock time (``time.time()``) the reader thread got it.

    ``screened``: what the reader's screen made of it on the reader thread (the CAN
    adapter's: the decoded frame, or why it does not decode), None without a screen.
    """

    message: can.Message
    received_at: float
    screened: object = None


@dataclass(frozen=True, slots=True)
class BusFailure:
    """The bus failed under the reader; the reader has stopped and the bus must be reopened."""

    reason: str
    at: float


Item = Union[Received, BusFailure]


def open_bus(interface: str, channel: str, **config: Any) -> can.BusABC:
    """Open a python-can bus; raises :class:`BusUnavailable` with the cause.

    Blocking (the remote interface connects a websocket); call it off the event loop.
    """
    try:
        return can.Bus(interface=interface, channel=channel, **config)
    except (can.CanError, OSError, ValueError, ImportError, AssertionError) as exc:
        # AssertionError: python-can-remote checks the websocket handshake with asserts.
        raise BusUnavailable(f"cannot open CAN bus {interface}:{channel}: {exc}") from exc


def close_bus(bus: can.BusABC, timeout: float = CLOSE_TIMEOUT_S) -> bool:
    """Shut a bus down within ``timeout``; False if it did not finish in time.

    A remote bus's shutdown waits for the server's close handshake, which never comes
    from a hung server; it runs on a daemon thread so it can never hold up an exit.
    """
    done = threading.Event()

    def shutdown() -> None:
        try:
            bus.shutdown()
        except Exception as exc:  # a bus that is already broken may fail to close; it is gone anyway
            log.debug("CAN bus shutdown: %s", exc)
            # Mark it shut down, or python-can retries the failing shutdown when it is collected.
            can.BusABC.shutdown(bus)
        finally:
            done.set()

    threading.Thread(target=shutdown, name="can-close", daemon=True).start()
    if not done.wait(timeout):
        log.warning("CAN bus did not shut down within %.1f s; abandoned", timeout)
        return False
    return True


class BusReader:
    """Receives from one bus on a thread and hands batches of :data:`Item` to the event loop.

    ``start`` must be called from the loop that will ``get_batch``.  The queue is
    unbounded on purpose: frames are never dropped here; :attr:`backlog` shows how far
    the loop is behind.
    """

    def __init__(self, bus: can.BusABC, recv_timeout: float = RECV_TIMEOUT_S,
                 screen: Callable[[can.Message, float], object] | None = None) -> None:
        self.bus = bus
        self.recv_timeout = recv_timeout
        #: Called on the reader thread for each frame as it arrives, ahead of the loop's queue.
        self.screen = screen
        self.screen_failures = 0
        self.received = 0
        self.max_backlog = 0
        self._items: deque[Item] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None

    @property
    def backlog(self) -> int:
        """Items received but not yet taken by the loop."""
        return len(self._items)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the reader thread; frames queue up until :meth:`get_batch` takes them."""
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="can-reader", daemon=True)
        self._thread.start()

    async def get_batch(self) -> list[Item]:
        """Wait for at least one item; return everything queued, oldest first."""
        assert self._ready is not None, "get_batch before start"
        while True:
            await self._ready.wait()
            self._ready.clear()
            if batch := self.take_queued():
                return batch

    def take_queued(self) -> list[Item]:
        """Everything queued now, oldest first, without waiting (empty if nothing is)."""
        with self._lock:
            self._wake_pending = False
            batch = list(self._items)
            self._items.clear()
        self.max_backlog = max(self.max_backlog, len(batch))
        return batch

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread (within one ``recv`` timeout); the bus stays open."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("CAN reader thread did not stop within %.1f s", timeout)

    def _run(self) -> None:
        receive, finish = receiver_for(self.bus)
        timeout = self.recv_timeout
        clock = time.time
        try:
            while not self._stop.is_set():
                if messages := receive(timeout):
                    self._put_received(messages, clock())
            if messages := finish():
                self._put_received(messages, clock())
        except Exception as exc:  # any backend error ends reception; the loop decides what next
            if not self._stop.is_set():
                log.error("CAN reception failed: %s: %s", type(exc).__name__, exc)
                self._put([BusFailure(f"{type(exc).__name__}: {exc}", clock())])

    def _put_received(self, messages: list[can.Message], received_at: float) -> None:
        """Frames of one read, stamped alike (they arrived together), screened in bus order."""
        self.received += len(messages)
        screen = self.screen
        self._put([Received(message, received_at, self._screen(screen, message, received_at) if screen else None)
                   for message in messages])

    def _screen(self, screen: Callable[[can.Message, float], object], message: can.Message, received_at: float) -> object:
        """The screen's verdict; a screen that fails leaves the frame to the loop and never ends reception."""
        try:
            return screen(message, received_at)
        except Exception:
            self.screen_failures += 1
            if self.screen_failures == 1:
                log.exception("CAN frame screen failed (logged once; the loop handles the frames unscreened)")
            return None

    def _put(self, items: list[Item]) -> None:
        with self._lock:
            self._items.extend(items)
            if self._wake_pending:
                return
            self._wake_pending = True
        assert self._loop is not None and self._ready is not None
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop closed under us: nobody is listening any more
            self._stop.set()
