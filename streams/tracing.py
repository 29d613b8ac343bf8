"""OpenTelemetry traces carried in Kafka headers: one trace follows a CAN frame to a relay write.

Each process builds one tracer per service (:func:`tracer`; ``service.name`` is the
service's name). Finished spans go to a ``BatchSpanProcessor``: ending a span only appends
it to a bounded in-memory queue (a full queue drops the span), and a background thread
exports the batches. So a slow disk or an unreachable collector never blocks nor slows
the FATAL path, and an export failure is logged, never raised into a service.

The context travels as the W3C ``traceparent`` header of each record (:func:`headers`,
:func:`extract`), put on and read off in the few places records are produced and consumed
(:mod:`streams.edge`, :mod:`streams.consistency`, :mod:`streams.app`, the adapters).
A record without it (or with a garbage one) starts a new trace.

Exporters (``HEATER_TRACE_EXPORTER``): ``file`` (default) writes each finished span as
one JSON line to ``RUN_DIR/traces/SERVICE.jsonl`` (``heater trace`` reads them);
``otlp`` sends them to a collector (``OTEL_EXPORTER_OTLP_*`` variables) and needs the
``opentelemetry-exporter-otlp-proto-http`` package; ``none`` records nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from streams import topics
from streams.settings import TRACE_EXPORTERS, Settings, SettingsError

__all__ = [
    "EXPORTERS", "TRACED_TOPICS", "TRACEPARENT", "Headers", "JsonLinesExporter", "TracingUnavailable",
    "annotate", "attributes_of", "consumed", "emitted", "extract", "flush", "headers", "rooted", "sending", "span_record", "traceparent", "tracer", "with_parent",
]

log = logging.getLogger(__name__)

EXPORTERS = TRACE_EXPORTERS
#: Topics whose records get a span per hop: the data, alarm and command paths. Heartbeats,
#: relay readbacks and changelogs stay untraced (they would only add noise).
TRACED_TOPICS = frozenset(
    t.name for t in (topics.SENSOR_DATA, topics.CREATE_ALARM, topics.DELETE_ALARM, topics.I2C_HEATING,
                     topics.DISASTER_DETECTED, topics.PLATFORM_LATCH)
)
#: Record fields worth a span attribute (``heater.FIELD``), whichever record carries them.
ATTRIBUTE_FIELDS = ("alarm_id", "severity", "occurrence", "sensor", "value", "action", "on", "command_id", "rule")
#: Finished spans waiting for export; beyond this a burst's spans are dropped, never waited for.
QUEUE_SPANS = 8192
#: How often the background thread exports (a span reaches the file within about this).
EXPORT_EVERY_MS = 500
#: A span file grows to this, then becomes ``SERVICE.jsonl.1`` (the previous one is dropped).
FILE_MAX_BYTES = 32 * 1024 * 1024

#: The W3C Trace Context header that carries a record's trace.
TRACEPARENT = "traceparent"
#: Kafka record headers as aiokafka takes them; Faust events hand them over as a dict.
Headers = list[tuple[str, bytes]]

_propagator = TraceContextTextMapPropagator()
_tracers: dict[str, Tracer] = {}
_providers: list[TracerProvider] = []
_lock = threading.Lock()


class TracingUnavailable(SettingsError):
    """The configured exporter cannot be built (e.g. OTLP without its package)."""


def tracer(service: str, settings: Settings | None = None) -> Tracer:
    """This process's tracer for ``service`` (built once; spans carry ``service.name``)."""
    with _lock:
        if service not in _tracers:
            settings = settings or Settings.from_env()
            if settings.trace_exporter == "none":  # spans cost nothing and carry no context
                _tracers[service] = trace.NoOpTracer()
            else:
                _tracers[service] = _provider(service, settings).get_tracer("heater")
        return _tracers[service]


def flush(timeout_s: float = 5.0) -> None:
    """Export the spans still queued (the processors also do so at exit)."""
    for provider in list(_providers):
        provider.force_flush(int(timeout_s * 1000))


def _provider(service: str, settings: Settings) -> TracerProvider:
    exporter = _exporter(service, settings)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(
        exporter, max_queue_size=QUEUE_SPANS, schedule_delay_millis=EXPORT_EVERY_MS, export_timeout_millis=5000,
    ))
    _providers.append(provider)
    return provider


def _exporter(service: str, settings: Settings) -> SpanExporter:
    if settings.trace_exporter == "file":
        return JsonLinesExporter(settings.trace_dir / f"{service}.jsonl")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[import-not-found]
    except ImportError:
        raise TracingUnavailable(
            "HEATER_TRACE_EXPORTER=otlp needs the opentelemetry-exporter-otlp-proto-http package, which is not "
            "installed; install it or choose HEATER_TRACE_EXPORTER=file (or none)"
        ) from None
    return OTLPSpanExporter()  # type: ignore[no-any-return]


class JsonLinesExporter(SpanExporter):
    """Finished spans as JSON lines in one file per service, for people and ``heater trace``."""

    def __init__(self, path: Path, max_bytes: int = FILE_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Append the batch (runs on the processor's thread; a failure is logged once, not raised)."""
        try:
            text = "".join(json.dumps(span_record(span), separators=(",", ":")) + "\n" for span in spans)
            if not self.path.parent.is_dir():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                if self.path.stat().st_size > self.max_bytes:
                    self.path.replace(self.path.with_name(self.path.name + ".1"))
            with self.path.open("a", encoding="utf-8") as out:
                out.write(text)
        except (OSError, TypeError, ValueError) as exc:
            if not self._failing:
                log.warning("spans not written to %s (%s); tracing carries on without them", self.path, exc)
            self._failing = True
            return SpanExportResult.FAILURE
        self._failing = False
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as the JSON object of a span file."""
    ctx = span.context
    parent = span.parent
    return {
        "trace_id": format(ctx.trace_id, "032x") if ctx else "",
        "span_id": format(ctx.span_id, "016x") if ctx else "",
        "parent_id": format(parent.span_id, "016x") if parent else None,
        "service": str(span.resource.attributes.get("service.name", "")),
        "name": span.name,
        "kind": span.kind.name.lower(),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name.lower(),
        "attributes": dict(span.attributes or {}),
    }


# -- propagation --------------------------------------------------------------------


def headers(ctx: otel_context.Context | None = None) -> Headers:
    """The ``traceparent`` (and ``tracestate``) of ``ctx`` (default: the current one); [] without a span."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=ctx)
    return [(key, value.encode()) for key, value in carrier.items()]


def traceparent() -> str:
    """The current context's ``traceparent`` ("" without a span), for a record sent later."""
    for key, value in headers():
        if key == TRACEPARENT:
            return value.decode()
    return ""


class _HeaderGetter(DefaultGetter):
    """Reads a carrier of header bytes; undecodable values count as absent."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:  # type: ignore[override]
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("ascii", errors="replace")
        return [str(value)]


_getter = _HeaderGetter()


def extract(raw: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> otel_context.Context | None:
    """The context a record's headers carry (aiokafka's pairs or Faust's dict); None when they carry none.

    A missing or malformed ``traceparent`` gives None (a new trace starts), never an error.
    """
    if not raw:
        return None
    try:
        carrier = dict(raw.items() if isinstance(raw, Mapping) else raw)
        ctx = _propagator.extract({k.lower(): v for k, v in carrier.items() if isinstance(k, str)}, getter=_getter)
    except (TypeError, ValueError):
        return None
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def attributes_of(record: Any) -> dict[str, Any]:
    """Span attributes from a decoded record: its alarm id, severity, sensor, value, action..."""
    found: dict[str, Any] = {}
    for name in ATTRIBUTE_FIELDS:
        value = getattr(record, name, None)
        if value is None or value == "":
            continue
        value = getattr(value, "value", value)  # enums
        found[f"heater.{name}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return found


def message_attributes(message: Any) -> dict[str, Any]:
    """Topic, partition and offset of a consumed record (aiokafka's or Faust's)."""
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": str(message.topic),
        "messaging.kafka.partition": int(message.partition),
        "messaging.kafka.offset": int(message.offset),
    }


@contextlib.contextmanager
def consumed(tracer: Tracer, message: Any, name: str | None = None, new_traces: TraceBudget | None = None,
             **attributes: Any) -> Iterator[Span]:
    """A CONSUMER span for handling ``message``, child of the context in its headers, current inside.

    Untraced topics get a non-recording span (no cost beyond the check). A record without
    a trace starts a new one — within ``new_traces`` (per topic), when given: the CAN
    adapter sends a flooding sensor's readings past its own budget without a trace, and a
    consumer that started one for each of them spent a third of its time on spans.
    """
    if message.topic not in TRACED_TOPICS:
        yield trace.INVALID_SPAN
        return
    parent = extract(getattr(message, "headers", None))
    if parent is None and new_traces is not None and not new_traces.take(message.topic, time.monotonic()):
        token = otel_context.attach(otel_context.Context())  # what it causes starts a trace of its own
        try:
            yield trace.INVALID_SPAN
        finally:
            otel_context.detach(token)
        return
    # No traceparent: a new trace, whatever else is current (a task may have inherited a context).
    with tracer.start_as_current_span(
        name or f"{message.topic} process", context=parent or otel_context.Context(), kind=SpanKind.CONSUMER,
        attributes={**message_attributes(message), **attributes},
    ) as span:
        yield span


@contextlib.contextmanager
def batch_span(tracer: Tracer, first: Any, last: Any, count: int) -> Iterator[Span]:
    """A CONSUMER span for handling a batch of consumed messages, ``first`` to ``last``; a new trace.

    The messages' own contexts are not read (that per-message cost is what batching saves);
    a message whose handling sends something gets its own :func:`consumed` span inside.
    """
    if first.topic not in TRACED_TOPICS:
        yield trace.INVALID_SPAN
        return
    with tracer.start_as_current_span(
        f"{first.topic} process batch", context=otel_context.Context(), kind=SpanKind.CONSUMER,
        attributes={**message_attributes(first), "messaging.batch.message_count": count,
                    "heater.last_offset": getattr(last, "offset", -1)},
    ) as span:
        yield span


@contextlib.contextmanager
def sending(tracer: Tracer, topic: str, **attributes: Any) -> Iterator[Headers]:
    """Headers for a record sent on ``topic``: a PRODUCER span's on traced topics, else the current context's."""
    if topic not in TRACED_TOPICS:
        yield headers()
        return
    with tracer.start_as_current_span(
        f"{topic} send", kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "kafka", "messaging.destination.name": topic, **attributes},
    ):
        yield headers()


class TraceBudget:
    """At most ``per_s`` new traces a second for each key (a sensor), in bursts of up to ``per_s``.

    A trace per reading lets one follow any reading through the platform, and at rest every
    reading gets one (each sensor sends ten a second). A sensor flooding the bus would spend
    the adapter's CPU on spans instead: at 9,000 frames/s the span and its export were half of
    the CAN adapter's busy time (py-spy), on the core the bank needs and beside the reader
    thread that judges the FATAL limit. Past its budget a reading goes out without a trace, and
    what it causes downstream starts a trace of its own.
    """

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self._left: dict[str, tuple[float, float]] = {}  # key → (traces left, when counted)

    def take(self, key: str, now: float) -> bool:
        """True (and one trace spent) if ``key`` may start a trace at ``now`` (seconds, any steady clock)."""
        left, at = self._left.get(key, (self.per_s, now))
        left = min(self.per_s, left + max(0.0, now - at) * self.per_s)
        if left >= 1.0:
            self._left[key] = (left - 1.0, now)
            return True
        self._left[key] = (left, now)
        return False


def emitted(tracer: Tracer, topic: str, started_at: float, attributes: Mapping[str, Any]) -> Headers:
    """A finished PRODUCER span, the root of a new trace, from ``started_at`` (wall-clock seconds) to now; its headers.

    For records handed to a batch rather than sent one by one (the CAN adapter's readings).
    """
    span = tracer.start_span(
        f"{topic} send", context=otel_context.Context(), kind=SpanKind.PRODUCER, start_time=_start_ns(started_at),
        attributes={"messaging.system": "kafka", "messaging.destination.name": topic, **attributes},
    )
    span.end()
    return headers(trace.set_span_in_context(span))


@contextlib.contextmanager
def rooted(tracer: Tracer, name: str, started_at: float, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A span that starts a new trace at ``started_at`` (wall-clock seconds), current inside: what is sent there continues it.

    For work that begins before the code that does it runs (the CAN adapter's FATAL limit: the frame's arrival).
    """
    with tracer.start_as_current_span(name, context=otel_context.Context(), start_time=_start_ns(started_at),
                                      attributes=dict(attributes)) as span:
        yield span


def _start_ns(started_at: float) -> int | None:
    """Nanoseconds for a span's start; None (now) for a clock gone wrong, which must not break the work."""
    return int(started_at * 1e9) if 0 < started_at < 1e11 else None


def annotate(attributes: Mapping[str, Any]) -> None:
    """Add attributes to the current span (none: nothing happens)."""
    trace.get_current_span().set_attributes(dict(attributes))


@contextlib.contextmanager
def with_parent(ctx: otel_context.Context | None) -> Iterator[None]:
    """Make ``ctx`` current inside the block (spans started there are its children); None: no change."""
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)
