"""One Faust app per service, with the platform's common parts attached.

``HeaterService`` builds the service's ``faust.App`` (own id, own web port), gives it
health/readiness/metrics/status views, decodes raw topic bytes into records with a
dead-letter path, and runs the startup self-check before reporting ready. Building it
does no I/O: the broker, store and ports are filled in from :mod:`streams.settings`
when Faust first reads its configuration (``on_configured``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import faust
from faust.utils import venusian as faust_venusian
from opentelemetry.trace import Tracer

from streams import auth, metrics, topics, tracing
from streams.alarm_client import AlarmClient
from streams.batching import take_batches
from streams.codec import DecodeError, decode
from streams.consistency import Ledger, on_partition_zero
from streams.delivery import deliver
from streams.exception_reports import forward_from_faust
from streams.health import Handler, health_handlers
from streams.heater_config import HeaterLimits
from streams.heartbeats import beat_forever
from streams.lifecycle import Phase, ServiceKind, ServiceSpec, ServiceStatus
from streams.latch import LatchView
from streams.log_identity import LogIdentity
from streams.platform_watch import PlatformWatch
from streams.records import RECORD_FOR_TOPIC, HeaterRecord
from streams.resilience import VAULT, Dependency
from streams.settings import Settings, faust_options
from streams.transport import register as register_transport
from streams.web_driver import register as register_web_driver

log = logging.getLogger(__name__)


def _skip_scan_registration(*args: Any, **kwargs: Any) -> None:
    """Stands in for the registration Faust's decorators (agent, timer, page) make for a
    venusian module scan. These apps never scan (``autodiscover=False``), and the
    registration's frame inspection resolves the path of every module loaded so far: about
    50 ms of CPU in each worker's start (measured), paid again on every restart after a FATAL."""


faust_venusian.attach = _skip_scan_registration

StartupCheck = Callable[[], Awaitable[None]]
#: Decides, per raw message, whether it is new input (see :meth:`HeaterService.records`).
Admit = Callable[[Any], Awaitable[bool]]
#: :meth:`HeaterService.record_batches`: records per batch at most, and the longest a batch waits for more.
#: Measured (bench/bank_throughput.py): 2 ms gives 0.15 ms of bank CPU per reading, 0 (no wait: what is
#: already queued) 0.28 ms. A batch waits only while readings keep coming (a lone one goes at once).
BATCH_MAX_RECORDS = 500
BATCH_WITHIN_S = 0.002
#: New traces a second per topic that :meth:`HeaterService.records` starts for records that come
#: without one: as many as the CAN adapter starts for one sensor (all of them at rest).
NEW_TRACES_PER_S = 50.0


class HeaterService:
    """A service of the platform: a Faust app plus health, readiness, metrics and dead letters."""

    def __init__(self, spec: ServiceSpec) -> None:
        register_transport()
        register_web_driver()
        self.spec = spec
        self.status = ServiceStatus()
        self._checks: list[StartupCheck] = []
        self.watch: PlatformWatch | None = None
        #: A watch this process read the history with before the worker started (stopped);
        #: the service's own watch goes on from it.
        self.watch_read: PlatformWatch | None = None
        self.alarms: AlarmClient | None = None
        #: Vault at run time: every call through timeout, backoff and breaker, with its outage alarm.
        self.vault = Dependency(VAULT, lambda: self.alarms)
        self.on_stay_down: Callable[[], None] | None = None
        #: True once a FATAL made this control service leave with the stay-down code.
        self.leaving = False
        self.ledger: Ledger | None = None
        self.watched_through: Callable[[], float] = lambda: 0.0
        """``received_at`` of the newest reading this service has decided, for its heartbeats."""
        self.new_traces = tracing.TraceBudget(NEW_TRACES_PER_S)
        self.app = faust.App(f"heater-{spec.name}", autodiscover=False, version=1)
        self.app.on_configured.connect(self._configure)
        self._dead_letters = self.app.topic(topics.DEAD_LETTER.name, value_serializer="raw", key_serializer="raw")
        self._add_views()
        metrics.LIVE.add(metrics.TABLE_KEYS, self._table_keys)
        metrics.LIVE.add(metrics.CONSUMER_LAG, self._consumer_lag)
        self.app.task(self._beat)
        self.exceptions = forward_from_faust(self.app, spec.name, lambda: Settings.from_env().service_identity)

    @property
    def tracer(self) -> Tracer:
        """This service's tracer (:mod:`streams.tracing`), built on first use, not at import."""
        return tracing.tracer(self.spec.name)

    # -- configuration -------------------------------------------------------------

    def _configure(self, app: faust.App, conf: Any, **_: Any) -> None:
        settings = Settings.from_env()
        for key, value in faust_options(settings, self.spec.name, self.spec.input_fetch).items():
            setattr(conf, key, value)

    def use_ledger(self, group_inputs: bool = False, quiet_runs: bool = False) -> Ledger:
        """Make this a stateful service: its tables, input position and effects go through one ledger.

        ``group_inputs``: commit a backlog's inputs that owe nothing in runs, and with
        ``quiet_runs`` a quiet input's too (see :meth:`streams.consistency.Ledger.step`);
        for services that follow ``sensorData``.
        """
        settings = Settings.from_env()
        identity = LogIdentity(settings.broker_bootstrap) if settings.profile == "local" else None
        self.ledger = Ledger(self.app, self.spec.name, log_identity=identity, group_inputs=group_inputs,
                             quiet_runs=quiet_runs)
        return self.ledger

    def raw_topic(self, *specs: topics.TopicSpec) -> faust.TopicT:
        """Topics whose values arrive as bytes, to be decoded by :meth:`records`."""
        return self.app.topic(*(s.name for s in specs), value_serializer="raw", key_serializer="raw")

    # -- decoding with a dead-letter path ---------------------------------------------

    async def records(
        self, stream: faust.StreamT, record_type: type[HeaterRecord] | None = None, admit: Admit | None = None
    ) -> AsyncIterator[HeaterRecord]:
        """Yield decoded records from a raw stream; bad messages go to the dead-letter topic.

        Without ``record_type`` each message is decoded as its topic's record, so one
        agent can follow several topics in their delivery order. ``admit``, when given,
        sees every message first and may pass over it (e.g. input the state already holds).
        """
        async for event in stream.events():
            message = event.message
            record = await self._admitted(event, record_type, admit)
            if record is None:
                continue
            metrics.MESSAGES_PROCESSED.labels(self.spec.name, message.topic).inc()
            started = time.perf_counter()
            # The hop's span, child of the record's traceparent: what the agent sends meanwhile continues the trace.
            with self.record_span(record, message):
                yield record  # the agent handles it before asking for the next one
            metrics.HANDLE_SECONDS.labels(self.spec.name, message.topic).observe(time.perf_counter() - started)

    def record_span(self, record: HeaterRecord, message: Any) -> contextlib.AbstractContextManager[Any]:
        """The hop's span for handling one record, child of its traceparent (new traces within the budget)."""
        return tracing.consumed(self.tracer, message, new_traces=self.new_traces, **tracing.attributes_of(record))

    async def _admitted(self, event: Any, record_type: type[HeaterRecord] | None, admit: Admit | None
                        ) -> HeaterRecord | None:
        """The event's record; None when ``admit`` passes over it or it does not decode (then dead-lettered)."""
        message = event.message
        if admit is not None and not await admit(message):
            return None
        try:
            return decode(event.value, record_type or RECORD_FOR_TOPIC[message.topic])
        except DecodeError as exc:
            await self.dead_letter(message.topic, message.partition, message.offset, event.value, exc)
            return None

    async def record_batches(
        self, stream: faust.StreamT, record_type: type[HeaterRecord] | None = None, admit: Admit | None = None,
        max_records: int | None = None, within_s: float | None = None, record_spans: bool = False,
    ) -> AsyncIterator[list[tuple[HeaterRecord, Any]]]:
        """:meth:`records` in batches: lists of (record, message), in delivery order, never empty.

        A batch is what arrived within ``within_s`` of its first record (at most
        ``max_records``; :func:`streams.batching.take_batches`): at a low rate one record
        at once, in a stream or a backlog many at once, which
        shares the per-record costs (the ledger's step, the lock, the state write) over
        the batch. ``within_s`` bounds the delay a batch adds to any record — a FATAL
        reading included — so keep it to a few milliseconds.

        One span per batch (:func:`streams.tracing.batch_span`), a trace of its own; the
        agent opens a record's own span (:meth:`record_span`) for a record whose handling
        sends something, so that record's trace goes on. An agent that opens one for every
        record (``record_spans``) gets no batch span: it would only double the spans.
        """
        max_records = max_records or BATCH_MAX_RECORDS
        within = BATCH_WITHIN_S if within_s is None else within_s
        async for events in take_batches(stream, max_records, within):
            batch: list[tuple[HeaterRecord, Any]] = []
            for event in events:
                record = await self._admitted(event, record_type, admit)
                if record is not None:
                    batch.append((record, event.message))
            if not batch:
                continue
            topic = batch[0][1].topic
            metrics.MESSAGES_PROCESSED.labels(self.spec.name, topic).inc(len(batch))
            metrics.BATCHES.labels(self.spec.name, topic).inc()
            started = time.perf_counter()
            with contextlib.nullcontext() if record_spans else \
                    tracing.batch_span(self.tracer, batch[0][1], batch[-1][1], len(batch)):
                yield batch  # the agent handles the whole batch before the next is taken
            per_record = (time.perf_counter() - started) / len(batch)
            metrics.HANDLE_SECONDS.labels(self.spec.name, topic).observe(per_record)

    async def dead_letter(
        self, topic: str, partition: int, offset: int, payload: bytes | None, error: DecodeError
    ) -> None:
        """Keep a refused message (counted, logged with its offset) so nothing is lost."""
        metrics.MESSAGES_REJECTED.labels(self.spec.name, topic, error.reason).inc()
        log.warning(
            "dead-lettered %s[%s]@%s: %s", topic, partition, offset, error
        )
        headers = {
            "source-topic": topic.encode(),
            "source-partition": str(partition).encode(),
            "source-offset": str(offset).encode(),
            "reason": error.reason.encode(),
            "detail": error.detail[:500].encode(),
            "service": self.spec.name.encode(),
        }
        await deliver(
            lambda: self._dead_letters.send(key=f"{topic}:{partition}:{offset}".encode(), value=payload or b"", headers=headers),
            f"dead letter of {topic}[{partition}]@{offset}", service=self.spec.name, topic=topics.DEAD_LETTER.name,
        )

    # -- lifecycle -----------------------------------------------------------------

    def add_startup_check(self, check: StartupCheck) -> StartupCheck:
        """Register a self-check that must pass before the service reports ready (rule 5)."""
        self._checks.append(check)
        return check

    async def start_platform_watch(self) -> None:
        """Follow the FATAL latch and the alarm book; then the alarm client can work."""
        settings = Settings.from_env()
        self.watch = PlatformWatch(settings.broker_bootstrap, self.spec.name, resume=self.watch_read)
        self.watch_read = None
        await self.watch.start()
        self.alarms = AlarmClient(self.spec.name, self._send_raw, self.watch)
        self.watch.on_change.append(self._on_latch_change)
        self.watch.run_in_background()
        if self.watch.latch.latched:
            await self._on_latch_change(self.watch.latch)

    async def _send_raw(self, topic: str, key: bytes, value: bytes) -> Awaitable[Any]:
        """Send a message outside any ledger step (start-up clears): confirmed by the broker, or resent."""
        metadata = await deliver(
            lambda: self.app.send(topic, key=key, value=value, key_serializer="raw", value_serializer="raw",
                                  headers=tracing.headers() or None),
            f"{self.spec.name} message on {topic}", service=self.spec.name, topic=topic,
        )
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(metadata)
        return done

    async def _beat(self) -> None:
        """Heartbeats on ``heartbeats`` for as long as the app runs (:mod:`streams.heartbeats`)."""
        async def send(topic: str, key: bytes, value: bytes) -> object:
            return await self.app.send(topic, key=key, value=value, key_serializer="raw", value_serializer="raw")

        identity = Settings.from_env().service_identity
        await beat_forever(send, self.spec.name, lambda: self.status.phase, lambda: self.watched_through(), identity)

    async def follow_limits(self, apply: Callable[[HeaterLimits], None], default: HeaterLimits) -> None:
        """Apply the limits in force now, then each new version as it is published (:meth:`PlatformWatch.follow_limits`).

        Call it from a startup check: the platform watch has read the ``config`` topic by then.
        """
        assert self.watch is not None, "follow_limits before the platform watch started"
        await self.watch.follow_limits(apply, default)

    async def _on_latch_change(self, latch: LatchView) -> None:
        """Rule 2: on FATAL, control services stop and stay down; display services go read-only."""
        if latch.latched:
            self.halt(latch.reason)
            if self.spec.kind is ServiceKind.CONTROL and self.on_stay_down is not None and not self.leaving:
                self.leaving = True
                self.on_stay_down()
        elif self.leaving:
            # On its way out with the stay-down code: ready again now, it would look settled to
            # `heater reset` and then exit, and nothing would start it. The reset starts it.
            log.warning("%s: latch released by %s; leaving anyway, the reset starts it again", self.spec.name,
                        latch.released_by)
        elif self.status.phase is Phase.HALTED:
            log.warning("%s: latch released by %s", self.spec.name, latch.released_by)
            self.mark_ready()

    async def run_startup_checks(self) -> None:
        """Called once the app has started and its tables are recovered."""
        try:
            await self.start_platform_watch()
            if self.ledger is not None:
                await self.ledger.recover()  # before anything reads the tables
            assert self.alarms is not None
            await self.alarms.clear_own_on_startup()
            for check in self._checks:
                await check()
        except Exception as exc:  # a failed self-check is reported, and the process stops
            self.status.reason = f"startup check failed: {exc}"
            log.exception("startup self-check failed")
            raise
        if self.status.phase is Phase.STARTING:
            self.mark_ready()

    def mark_ready(self) -> None:
        self.status.mark_ready(self.spec.name)

    def halt(self, reason: str) -> None:
        """Stop acting: alive, not ready, doing nothing until an operator reset."""
        self.status.halt(self.spec.name, reason)

    @property
    def acting(self) -> bool:
        """True while the service may issue commands or change state."""
        return self.status.phase is Phase.READY

    # -- metrics read at scrape time (streams.metrics.LIVE) -----------------------------

    def _table_keys(self) -> Iterator[tuple[tuple[str, ...], float]]:
        """Keys in each of this service's tables (the services' tables have one partition)."""
        with on_partition_zero():
            sizes = [(name, len(table)) for name, table in self.app.tables.items()]
        return (((self.spec.name, name), size) for name, size in sizes)

    def _consumer_lag(self) -> Iterator[tuple[tuple[str, ...], float]]:
        """Per input partition: the log's end as last fetched minus the next offset the agents get.

        Reads Faust's consumer only once it exists (never creates one) and leaves out the
        tables' changelogs and partitions nothing was read from yet.
        """
        consumer = self.app._consumer
        if consumer is None:
            return
        changelogs = self.app.tables.changelog_topics
        read_offsets = consumer._read_offset
        for tp in sorted(consumer.assignment()):
            if tp.topic in changelogs:
                continue
            end, last_read = consumer.highwater(tp), read_offsets.get(tp)
            if end is not None and last_read is not None:
                yield (self.spec.name, tp.topic, str(tp.partition)), max(0, end - (last_read + 1))

    # -- web views -----------------------------------------------------------------

    def _add_views(self) -> None:
        for path, handler in health_handlers(self.spec, lambda: self.status).items():
            self.app.page(path)(_faust_view(handler))


def _faust_view(handler: Handler) -> Callable[[Any, Any], Awaitable[Any]]:
    """A Faust page for an aiohttp handler, declaring the same access."""
    async def view(web: Any, request: Any) -> Any:
        return await handler(request)

    access = auth.access_of(handler)
    if access is not None:
        setattr(view, auth.ACCESS_ATTR, access)
    return view
