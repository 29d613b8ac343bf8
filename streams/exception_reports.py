"""Every service forwards its unhandled exceptions to ``exceptions`` (read by ExceptionsServer).

A logging handler on the root logger turns each ERROR/CRITICAL record that carries an
exception into an :class:`~streams.records.ExceptionReport`; asyncio's loop exception
handler (a task's exception nobody retrieved, a failing callback) and uncaught exceptions
in threads are caught too. The handler is safe to have in a safety-critical process:

* it never blocks: a record becomes a report and goes into a bounded queue; a task on the
  event loop sends the queue; a full queue drops the report, counted in
  ``heater_exception_reports_dropped_total`` and said in the log (WARNING, not forwarded);
* it never recurses: records of this module and of the Kafka clients the reports travel
  on are never forwarded (a report about the path cannot take the path), and anything
  logged while a report is being built or sent is ignored;
* it is bounded: messages and stacks are truncated before they are queued.

A report that the broker refuses is counted as dropped, not sent again: exceptions are
diagnostics, and a crash loop of resends is worse than a missing report.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
import time
import traceback
import uuid
from types import TracebackType
from typing import Any, Awaitable, Callable, Optional

from prometheus_client import Counter

from streams import topics
from streams.heartbeats import instance_name
from streams.records import ExceptionReport

log = logging.getLogger(__name__)

#: Reports waiting to be sent; more are dropped (and counted).
QUEUE_CAP = 200
MAX_MESSAGE_CHARS = 1_000
MAX_STACK_CHARS = 6_000
#: Time a report's send may take before it counts as dropped, and the final flush at shutdown.
SEND_TIMEOUT_S = 5.0
FLUSH_TIMEOUT_S = 3.0
#: A dropped report is logged at most this often (the counter has every one).
DROP_LOG_EVERY_S = 10.0
#: Loggers whose records are never forwarded: this module, and the clients reports ride on.
SILENT_LOGGERS = (__name__, "aiokafka", "kafka", "faust.transport", "faust.producer")

#: Marks an exception object once it is reported.
REPORTED = "_heater_exception_reported"

FORWARDED = Counter("heater_exception_reports_sent_total", "Exception reports sent on the exceptions topic", ["service"])
DROPPED = Counter(
    "heater_exception_reports_dropped_total",
    "Exception reports not sent: queue full, or the broker refused or did not answer",
    ["service", "reason"],
)

Send = Callable[[str, bytes, bytes], Awaitable[Any]]
ExcInfo = tuple[type[BaseException], BaseException, Optional[TracebackType]]

#: Set while this module builds or sends a report: anything logged meanwhile is not forwarded.
_busy: contextvars.ContextVar[bool] = contextvars.ContextVar("exception_reports_busy", default=False)


def truncate(text: str, limit: int) -> str:
    """Keep the head and the tail (a stack's innermost frames are at its end)."""
    if len(text) <= limit:
        return text
    marker = f"\n... [{len(text) - limit} characters cut] ...\n"
    keep = max(0, limit - len(marker))
    head = keep // 3
    return text[:head] + marker + text[len(text) - (keep - head):]


def silent(logger_name: str) -> bool:
    return any(logger_name == name or logger_name.startswith(name + ".") for name in SILENT_LOGGERS)


def not_a_fault(exc_type: type[BaseException]) -> bool:
    """Cancellation and interrupts are how tasks and processes stop, not faults to count."""
    return issubclass(exc_type, (asyncio.CancelledError, KeyboardInterrupt))


class ExceptionForwarder(logging.Handler):
    """The handler and its queue; :meth:`run` sends the queue from the service's event loop."""

    def __init__(self, service: str, identity: str | None = None, cap: int = QUEUE_CAP) -> None:
        super().__init__(level=logging.ERROR)
        self.service = service
        self.identity = identity or service
        self.instance = instance_name()
        self._queue: queue.Queue[ExceptionReport] = queue.Queue(maxsize=cap)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._last_drop_log = 0.0
        self._previous_thread_hook: Callable[[threading.ExceptHookArgs], Any] | None = None

    # -- capture (any thread, never blocks) ------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        exc_info = record.exc_info
        if not exc_info or exc_info[0] is None or _busy.get() or silent(record.name) or not_a_fault(exc_info[0]):
            return
        token = _busy.set(True)
        try:
            message = record.getMessage()
            self.capture(exc_info, context=f"{record.levelname} {record.name}: {message}")  # type: ignore[arg-type]
        except Exception:  # a report that cannot be built is dropped, never raised into the caller
            self._dropped("unbuildable")
        finally:
            _busy.reset(token)

    def capture(self, exc_info: ExcInfo, context: str = "") -> None:
        """Queue a report of one exception (no I/O; a full queue drops it).

        An exception is reported once, however many places log it on its way up (a failed
        self-check is logged by the service, then by Faust's worker as its crash reason).
        """
        exc_type, exc, tb = exc_info
        if exc is not None:
            if getattr(exc, REPORTED, False):
                return
            try:
                setattr(exc, REPORTED, True)
            except (AttributeError, TypeError):
                pass  # an exception type without attributes is reported each time it is logged
        stack = "".join(traceback.format_exception(exc_type, exc, tb))
        if context:
            stack = f"{context}\n{stack}"
        report = ExceptionReport(
            service=self.service, instance=self.instance, identity=self.identity,
            exc_type=f"{exc_type.__module__}.{exc_type.__qualname__}" if exc_type.__module__ != "builtins" else exc_type.__qualname__,
            message=truncate(str(exc), MAX_MESSAGE_CHARS), traceback=truncate(stack, MAX_STACK_CHARS),
            at=time.time(), trace_id="", report_id=uuid.uuid4().hex,
        )
        try:
            self._queue.put_nowait(report)
        except queue.Full:
            self._dropped("queue-full")
            return
        self._signal()

    def _signal(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return  # picked up once the sender runs
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
            return
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:
            pass  # the loop closed meanwhile: the process is on its way out

    def _dropped(self, reason: str) -> None:
        DROPPED.labels(self.service, reason).inc()
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_EVERY_S:
            self._last_drop_log = now
            token = _busy.set(True)
            try:
                log.warning("%s: exception report dropped (%s); heater_exception_reports_dropped_total counts every one",
                            self.service, reason)
            finally:
                _busy.reset(token)

    # -- asyncio's and threading's own last resorts --------------------------------

    def on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Loop exception handler: report the exception, then let asyncio log it as it always does."""
        exc = context.get("exception")
        if isinstance(exc, BaseException) and not _busy.get() and not not_a_fault(type(exc)):
            token = _busy.set(True)
            try:
                self.capture((type(exc), exc, exc.__traceback__), context=f"asyncio: {context.get('message', '')}")
            except Exception:
                self._dropped("unbuildable")
            finally:
                _busy.reset(token)
        token = _busy.set(True)  # the default handler logs it at ERROR: already reported
        try:
            loop.default_exception_handler(context)
        finally:
            _busy.reset(token)

    def on_thread_exception(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and not _busy.get():
            token = _busy.set(True)
            try:
                self.capture((args.exc_type, args.exc_value, args.exc_traceback),
                             context=f"thread {getattr(args.thread, 'name', '?')}")
            except Exception:
                self._dropped("unbuildable")
            finally:
                _busy.reset(token)
        if self._previous_thread_hook is not None:
            self._previous_thread_hook(args)

    # -- wiring --------------------------------------------------------------------

    def attach(self) -> None:
        """On the root logger (again, if logging was set up afresh since) and as the thread hook."""
        root = logging.getLogger()
        if self not in root.handlers:
            root.addHandler(self)
        if threading.excepthook != self.on_thread_exception:
            self._previous_thread_hook = threading.excepthook
            threading.excepthook = self.on_thread_exception

    async def run(self, send: Send) -> None:
        """Send queued reports from this event loop until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.attach()
        self._loop.set_exception_handler(self.on_loop_exception)
        while True:
            await self.send_queued(send)
            await self._wake.wait()
            self._wake.clear()

    async def send_queued(self, send: Send) -> None:
        """Send what is queued now, one report at a time; a failed send counts as dropped."""
        while True:
            try:
                report = self._queue.get_nowait()
            except queue.Empty:
                return
            token = _busy.set(True)
            try:
                delivered = await send(topics.EXCEPTIONS.name, report.service.encode(), report.dumps())
                if isinstance(delivered, asyncio.Future):
                    await asyncio.wait_for(delivered, SEND_TIMEOUT_S)
                FORWARDED.labels(self.service).inc()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._dropped(f"send-failed: {type(exc).__name__}")
            finally:
                _busy.reset(token)

    async def flush_reports(self, send: Send, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Send what is queued before the process leaves (a crash's own report above all)."""
        try:
            await asyncio.wait_for(self.send_queued(send), timeout)
        except asyncio.TimeoutError:
            self._dropped("shutdown")

    @property
    def pending(self) -> int:
        return self._queue.qsize()


def forward_from_faust(app: Any, service: str, identity: Callable[[], str | None]) -> ExceptionForwarder:
    """Install in a Faust service: sent with the app's producer, flushed before it stops."""
    forwarder = ExceptionForwarder(service)
    forwarder.attach()

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        return await app.send(topic, key=key, value=value, key_serializer="raw", value_serializer="raw")

    async def run() -> None:
        forwarder.identity = identity() or service
        await forwarder.run(send)

    async def flush(*_: Any, **__: Any) -> None:
        await forwarder.flush_reports(send)

    app.task(run)
    app.on_before_shutdown.connect(flush)
    return forwarder


def forward_from_edge(service: str, identity: str | None, producer: Any) -> "asyncio.Task[None]":
    """Install in an edge adapter (from its running loop, once its aiokafka producer is started).

    Reports already handed to the producer are flushed by its ``stop()``, as the adapter
    stops it on the way out.
    """
    forwarder = ExceptionForwarder(service, identity)

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        return await producer.send(topic, value, key=key)

    task = asyncio.ensure_future(forwarder.run(send))
    _SENDERS.add(task)  # the loop keeps only weak references to its tasks
    task.add_done_callback(_SENDERS.discard)
    return task


_SENDERS: set["asyncio.Task[None]"] = set()


__all__ = ["DROPPED", "FORWARDED", "ExceptionForwarder", "forward_from_edge", "forward_from_faust", "truncate"]
