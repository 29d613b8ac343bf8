"""StateRegistry: who runs on the platform, who is missing, who does not belong.

One agent follows ``heartbeats``, ``DisasterDetected`` and the registry's own
``registryEvents`` (discovery ticks and operators' watch requests) as one stream, so every
change to its tables happens in a ledger step (:mod:`streams.consistency`) with the alarms
it owes. The rules are in :mod:`streams.registry_rules`:

* a beat from a sender not on Vault's allowed list (:mod:`streams.allowlist`) is a FATAL
  alarm, once per sender;
* a service that discovery (:mod:`streams.discovery`) expects but that stopped beating is a
  CRITICAL alarm, cleared by its next beat — or when an operator stops watching it;
* ``DisasterDetected`` reports are kept for the platform view.

It is a display service (DESIGN rule 2): after a FATAL it stays up, read-only and not
ready, still showing every service — and judges nobody missing while control services are
down on purpose. Vault's allowed list is read at start (no list, no start: a clear error)
and again every :data:`ALLOWLIST_REFRESH_S` through the service's Vault dependency
(:mod:`streams.resilience`); when Vault does not answer, the last good list stays in force,
with a ``vault-unavailable`` alarm until Vault answers again.

``GET /registry`` shows the services, the platform's latch and the recent disasters;
``POST /registry/watch {"service": NAME, "watch": false}`` stops (or resumes) watching one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import faust
from prometheus_client import Counter, Gauge

from streams import auth, topics
from streams.auth import Role, requires
from streams.allowlist import load_allowlist, refreshed_allowlist
from streams.app import HeaterService, ServiceKind, ServiceSpec
from streams.consistency import Step
from streams.discovery import DiscoveryUnavailable, discovery_for
from streams.lifecycle import Phase
from streams.ids import alarm_id_for
from streams.records import DisasterEvent, Heartbeat, HeaterRecord, RegistryEvent, Severity
from streams.registry_rules import Registry, RegistryLimits, Verdict, stranger_key
from streams.settings import DISPLAY_INPUT, Settings
from streams.tables.registry import RegistryTables

log = logging.getLogger(__name__)

SPEC = ServiceSpec("registry", ServiceKind.DISPLAY, description="StateRegistry: heartbeats, discovery, allowed services",
                   input_fetch=DISPLAY_INPUT)
service = HeaterService(SPEC)
app = service.app

ledger = service.use_ledger()
tables = RegistryTables(app, ledger)
inputs = service.raw_topic(topics.HEARTBEATS, topics.DISASTER_DETECTED, topics.REGISTRY_EVENTS)
events_topic = app.topic(topics.REGISTRY_EVENTS.name, value_serializer="raw", key_serializer="raw")
ledger.run_settler()

TICK_INTERVAL_S = 1.0
ALLOWLIST_REFRESH_S = 10.0
#: A tick older than this when decided is from before a restart: moot, the next one judges.
TICK_REPLAY_S = 5.0

SERVICES = Gauge("heater_registry_services", "Services the registry knows, by state", ["state"])
VERDICTS = Counter("heater_registry_verdicts_total", "Registry verdicts, by kind", ["kind"])


class State:
    """The registry in memory (written through to the tables), the allowed list, discovery's health."""

    def __init__(self) -> None:
        self.registry: Registry | None = None
        self.allowed: dict[str, str] = {}
        self.discovery_error: str = ""
        self._started = asyncio.Event()

    async def check_allowlist(self) -> None:
        """Startup self-check: Vault says which services are allowed (a VaultUnavailable stops the service)."""
        self.allowed = await load_allowlist()
        log.info("allowed services: %s", ", ".join(sorted(self.allowed)))
        self.registry = tables.load(RegistryLimits())
        self._started.set()

    async def started(self) -> Registry:
        await self._started.wait()
        assert self.registry is not None
        return self.registry


state = State()
service.add_startup_check(state.check_allowlist)


@app.agent(inputs)
async def follow(stream: faust.StreamT) -> None:
    async for record in service.records(stream, admit=ledger.admit):
        registry = await state.started()
        async with ledger.step() as step:
            await decide(step, registry, record)


async def decide(step: Step, registry: Registry, record: HeaterRecord) -> None:
    now = time.time()
    if isinstance(record, Heartbeat):
        entry, verdicts = registry.on_beat(record, state.allowed, now)
        if entry is not None:
            tables.save_service(entry)
        if any(v.kind == "unauthorized" for v in verdicts):
            key = stranger_key(record.service, record.identity or record.service, record.instance)
            tables.save_stranger(key, registry.strangers[key])
        await act(step, verdicts)
    elif isinstance(record, DisasterEvent):
        tables.save_disaster(record)
        log.critical("disaster reported: %s (%s)", record.disaster_id, record.message)
    elif isinstance(record, RegistryEvent):
        if record.kind == "tick":
            if now - record.at > TICK_REPLAY_S:
                return
            resuming = registry.judging_since is None and service.acting
            changed, verdicts = registry.on_tick(record.expected, now, service.acting)
            for entry in changed:
                tables.save_service(entry)
            await act(step, verdicts + (left_over_alarms(registry, now) if resuming else []))
        else:
            entry, verdicts = registry.set_watched(record.service, record.kind == "watch", now)
            tables.save_service(entry)
            log.warning("%s %s watching %s", record.by or "an operator", "resumed" if entry.watched else "stopped", record.service)
            await act(step, verdicts)
    count_services(registry)


async def act(step: Step, verdicts: list[Verdict]) -> None:
    """Alarms for the verdicts, owed by the step; a registry that does not act only logs (the power is cut)."""
    for verdict in verdicts:
        VERDICTS.labels(verdict.kind).inc()
        if service.alarms is None:
            log.error("registry verdict %s on %s not acted on (starting): %s", verdict.kind, verdict.service, verdict.message)
            continue
        alarms = step.alarms(service.alarms)
        if verdict.kind == "unauthorized":
            # FATAL is raised even while latched: an intruder is news whatever else happened.
            await alarms.raise_alarm("unauthorized-service", Severity.FATAL, verdict.message, subject=verdict.service,
                                     at=verdict.at)
        elif not service.acting:
            log.warning("registry verdict %s on %s while %s: %s", verdict.kind, verdict.service,
                        service.status.phase.value, verdict.message)
        elif verdict.kind == "missing":
            await alarms.raise_alarm("service-missing", Severity.CRITICAL, verdict.message, subject=verdict.service,
                                     at=verdict.at)
        else:
            await alarms.clear_alarm("service-missing", subject=verdict.service, reason=verdict.message, at=verdict.at)


def left_over_alarms(registry: Registry, now: float) -> list[Verdict]:
    """``service-missing`` alarms still active for services that are not missing (one that came
    back while the platform was latched could not be cleared then)."""
    if service.watch is None:
        return []
    active = {e.alarm.alarm_id for e in service.watch.book.active_entries() if e.alarm.source == SPEC.name}
    return [
        Verdict("back", name, f"{name} is not missing", now)
        for name, entry in registry.services.items()
        if not entry.missing and alarm_id_for(SPEC.name, "service-missing", name) in active
    ]


def count_services(registry: Registry) -> None:
    entries = registry.services.values()
    SERVICES.labels("missing").set(sum(1 for e in entries if e.missing))
    SERVICES.labels("unwatched").set(sum(1 for e in entries if not e.watched))
    SERVICES.labels("known").set(len(registry.services))
    SERVICES.labels("strangers").set(len(registry.strangers))


@app.timer(interval=TICK_INTERVAL_S)
async def tick() -> None:
    """Discovery's view, as a tick the agent decides in order with the beats."""
    if state.registry is None or service.status.phase is Phase.STOPPING:
        return
    try:
        expected = await discovery_for(Settings.from_env()).expected()
    except DiscoveryUnavailable as exc:
        if state.discovery_error != str(exc):
            log.error("discovery: %s", exc)
        state.discovery_error = str(exc)
        return
    state.discovery_error = ""
    known = sorted(name for name in expected if name in state.allowed)
    await events_topic.send(key=b"tick", value=RegistryEvent(kind="tick", at=time.time(), expected=known).dumps())


@app.timer(interval=ALLOWLIST_REFRESH_S)
async def refresh_allowlist() -> None:
    """Vault's list again; while Vault does not answer, the last good list stays in force."""
    if state.registry is not None:
        state.allowed = await refreshed_allowlist(service.vault, state.allowed)


@app.page("/registry")
@requires(Role.VIEWER)
async def registry_view(web: Any, request: Any) -> Any:
    """Every service's last beat and state, the platform's latch, and the recent disasters."""
    registry = state.registry
    latch = service.watch.latch if service.watch is not None else None
    return web.json({
        "phase": service.status.phase.value,
        "services": registry.view(time.time()) if registry else {},
        "strangers": list(registry.strangers.values()) if registry else [],
        "platform": {
            "latched": bool(latch and latch.latched),
            "reason": latch.reason if latch else "",
            "disasters": tables.recent_disasters() if registry else [],
        },
        "discovery_error": state.discovery_error,
        "allowed": sorted(state.allowed),
    })


WATCH_BODY = '{"service": NAME, "watch": true|false}'


@app.page("/registry/watch")
@requires(Role.ADMIN)
class Watch(faust.web.View):
    """``POST`` to stop (or resume) watching a service; decided in order by the agent."""

    async def post(self, request: Any) -> Any:
        try:
            body = json.loads(await request.read() or b"{}")
            name, watch, by = str(body["service"]), body["watch"], auth.principal(request).name
            if not isinstance(watch, bool):
                raise TypeError("watch")
            name.encode(), by.encode()
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return self.json({"error": f"expected JSON {WATCH_BODY}"}, status=400)
        if name not in state.allowed:
            return self.json({"error": f"no service {name!r} on the allowed list"}, status=404)
        event = RegistryEvent(kind="watch" if watch else "unwatch", at=time.time(), service=name, by=by)
        await events_topic.send(key=name.encode(), value=event.dumps())
        return self.json({"service": name, "watch": watch}, status=202)
