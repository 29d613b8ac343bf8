"""The runtime of a thin edge adapter: producer, platform watch, alarm client, health views.

Adapters are plain asyncio programs (no Faust): they translate between a wire and Kafka
and nothing else. This module gives each the same lifecycle as a Faust service:

* start-up: connect the producer and the platform watch (fail fast with a clear error
  and ``DEPENDENCY_MISSING`` when the broker is away), clear its own non-FATAL alarms,
  serve ``/healthz`` ``/readyz`` ``/status`` ``/metrics``; the adapter's body marks it
  ready once its own device checks pass;
* FATAL (rule 2): stop acting at once, run the adapter's ``on_fatal`` hooks (the I2C
  adapter cuts power first), then leave with ``STAY_DOWN``;
* started while latched: run the adapter's ``halted`` body if it has one (the I2C
  adapter must still verify operator resets), else do nothing; serve health as
  not ready; exit ``RELEASED`` once the latch is released.

A display service on this runtime (the SecretsRotator) neither halts nor stops on a FATAL:
the platform's certificates and credentials must stay valid while an operator resets it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Awaitable, Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams import exitcodes, kafka_clients, tls, tracing
from streams.alarm_client import AlarmClient
from streams.exception_reports import forward_from_edge
from streams.health import web_app
from streams.heartbeats import beat_forever
from streams.latch import LatchView
from streams.metrics import MESSAGES_SENT, REFUSALS
from streams.lifecycle import Phase, ServiceKind, ServiceSpec, ServiceStatus
from streams.platform_watch import PlatformWatch
from streams.resilience import VAULT, Dependency
from streams.settings import WATCH_FETCH_WAIT_MS, Settings

log = logging.getLogger(__name__)

#: Resends of a refused message before the service stops, and the first pause (doubling).
RESEND_ATTEMPTS = 5
RESEND_BACKOFF_S = 0.05
#: aiokafka's default batch limit per partition (16 KiB): plenty for commands and alarms.
PRODUCER_BATCH_BYTES = 16 * 1024

Body = Callable[["EdgeService"], Awaitable[None]]
FatalHook = Callable[[LatchView], Awaitable[None]]


class EdgeService:
    """Lifecycle and plumbing shared by the CAN and I2C adapters."""

    def __init__(self, spec: ServiceSpec, settings: Settings | None = None, max_batch_bytes: int = PRODUCER_BATCH_BYTES,
                 watch_fetch_wait_ms: int = WATCH_FETCH_WAIT_MS) -> None:
        self.spec = spec
        self.settings = settings or Settings.from_env()
        self.status = ServiceStatus()
        self.web = web_app(spec, lambda: self.status)
        self.on_fatal: list[FatalHook] = []
        #: This service's spans (:mod:`streams.tracing`); a tracing setting that cannot work stops it here.
        self.tracer = tracing.tracer(spec.name, self.settings)
        #: The producer's batch limit per partition: what one request can carry for it.
        self.max_batch_bytes = max_batch_bytes
        #: The platform watch's fetch wait: short only where the FATAL trip follows the watch.
        self.watch_fetch_wait_ms = watch_fetch_wait_ms
        self.producer: AIOKafkaProducer | None = None
        self.watch: PlatformWatch | None = None
        self.alarms: AlarmClient | None = None
        #: Vault at run time: every call through timeout, backoff and breaker, with its outage alarm.
        self.vault = Dependency(VAULT, lambda: self.alarms)
        self.exit_code = exitcodes.DONE
        self._reserved_exit: int | None = None
        self._stop: asyncio.Event | None = None

    # -- plumbing for adapters -----------------------------------------------------

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Queue one message (sent at once, or with the next request if one is on its way; awaited only for buffer space).

        On a traced topic the send is a span of its own (a heating job's command starts its
        trace here), and the message carries its ``traceparent``. The broker's answer arrives
        later: a refused message is counted and sent again, and after :data:`RESEND_ATTEMPTS`
        refusals the service stops with a crash code — a reading or a command is never
        dropped with only a log line.
        """
        with tracing.sending(self.tracer, topic) as headers:
            await self._send(topic, key, value, headers, 0)

    async def _send(self, topic: str, key: bytes, value: bytes, headers: tracing.Headers, attempt: int) -> None:
        assert self.producer is not None, "send before start"
        future = await self.producer.send(topic, value, key=key, headers=headers or None)
        future.add_done_callback(lambda done: self._on_sent(done, topic, key, value, headers, attempt))

    def _on_sent(self, done: "asyncio.Future[object]", topic: str, key: bytes, value: bytes,
                 headers: tracing.Headers, attempt: int) -> None:
        if done.cancelled():
            return
        if done.exception() is None:
            MESSAGES_SENT.labels(self.spec.name, topic).inc()
            return
        REFUSALS.labels(self.spec.name, topic).inc()
        if attempt >= RESEND_ATTEMPTS:
            log.critical("%s: a message on %s refused %d times (%r): stopping", self.spec.name, topic, attempt + 1,
                         done.exception())
            self.stop(exitcodes.UNDELIVERED)
            return
        log.error("%s: a message on %s refused (%r): sending it again", self.spec.name, topic, done.exception())
        asyncio.get_running_loop().call_later(
            RESEND_BACKOFF_S * 2**attempt,
            lambda: asyncio.ensure_future(self._send(topic, key, value, headers, attempt + 1)),
        )

    @property
    def acting(self) -> bool:
        return self.status.phase is Phase.READY

    def mark_ready(self) -> None:
        self.status.mark_ready(self.spec.name)

    def stop(self, code: int = exitcodes.DONE) -> None:
        """Stop the service; it exits with ``code`` unless an exit code was reserved."""
        self.exit_code = code if self._reserved_exit is None else self._reserved_exit
        if self._stop is not None:
            self._stop.set()

    def reserve_exit(self, code: int) -> None:
        """Fix the exit code before an action that will stop the service for another reason.

        A heating job that locks out raises a FATAL alarm itself; the platform watch then
        stops it as it stops every control service, but the job's outcome is still the
        lock-out (exit 1 in the exit-code table), not a FATAL from elsewhere.
        """
        self._reserved_exit = code

    # -- lifecycle -----------------------------------------------------------------

    def run(self, body: Body, halted: Body | None = None) -> int:
        """Run the adapter until it stops; return the process exit code."""
        return asyncio.run(self._run(body, halted))

    async def _run(self, body: Body, halted: Body | None) -> int:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            await self._connect()
        except (OSError, asyncio.TimeoutError, KafkaError) as exc:
            log.error("%s: broker %s unreachable at start-up: %s", self.spec.name, self.settings.broker_bootstrap, exc)
            await self._close()
            return exitcodes.DEPENDENCY_MISSING
        runner = await tls.serve(self.web, self.settings, self.spec.name)
        assert self.watch is not None and self.alarms is not None
        assert self.producer is not None
        forward_from_edge(self.spec.name, self.settings.service_identity, self.producer)
        control = self.spec.kind is ServiceKind.CONTROL
        latched_at_start = control and self.watch.latch.latched
        if latched_at_start:
            self.status.halt(self.spec.name, self.watch.latch.reason)
            self.watch.on_change.append(self._on_release)
            task = asyncio.ensure_future(halted(self) if halted else asyncio.Event().wait())
        else:
            if control:
                self.watch.on_change.append(self._on_latch)
            await self.alarms.clear_own_on_startup()
            task = asyncio.ensure_future(body(self))
        self.watch.run_in_background()
        beats = asyncio.ensure_future(self._beat())
        stopper = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        if task in done and task.exception() is not None:
            log.error("%s crashed", self.spec.name, exc_info=task.exception())
            self.exit_code = 70
        for pending in (task, stopper, beats):
            pending.cancel()
        await asyncio.gather(task, stopper, beats, return_exceptions=True)
        await runner.cleanup()
        await self._close()
        return self.exit_code

    async def _beat(self) -> None:
        """Heartbeats on ``heartbeats`` while the adapter runs (:mod:`streams.heartbeats`)."""
        async def send(topic: str, key: bytes, value: bytes) -> object:
            assert self.producer is not None
            return await self.producer.send(topic, value, key=key)

        await beat_forever(send, self.spec.name, lambda: self.status.phase, lambda: 0.0, self.settings.service_identity)

    async def _connect(self) -> None:
        bootstrap = self.settings.broker_bootstrap
        self.producer = kafka_clients.producer(bootstrap, settings=self.settings, linger_ms=0,
                                               max_batch_size=self.max_batch_bytes, request_timeout_ms=10_000)
        await asyncio.wait_for(self.producer.start(), 15)
        self.watch = PlatformWatch(bootstrap, self.spec.name, self.watch_fetch_wait_ms)
        await self.watch.start()
        self.alarms = AlarmClient(self.spec.name, self._send_and_wait, self.watch)

    async def _send_and_wait(self, topic: str, key: bytes, value: bytes) -> None:
        assert self.producer is not None
        with tracing.sending(self.tracer, topic) as headers:
            await self.producer.send_and_wait(topic, value, key=key, headers=headers or None)

    async def _on_latch(self, latch: LatchView) -> None:
        if not latch.latched:
            return
        self.status.halt(self.spec.name, latch.reason)
        for hook in self.on_fatal:
            try:
                await hook(latch)
            except Exception:  # every hook runs; a failing one is logged, never skips the next
                log.exception("%s: FATAL hook failed", self.spec.name)
        self.stop(exitcodes.STAY_DOWN)

    async def _on_release(self, latch: LatchView) -> None:
        if not latch.latched:
            log.warning("%s: latch released by %s; restarting", self.spec.name, latch.released_by)
            self.stop(exitcodes.RELEASED)

    async def _close(self) -> None:
        if self.watch is not None:
            await self.watch.stop()
        if self.producer is not None:
            try:
                await asyncio.wait_for(self.producer.stop(), 5)
            except (asyncio.TimeoutError, KafkaError):
                log.warning("%s: producer did not flush on stop", self.spec.name)
