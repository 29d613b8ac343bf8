"""ConfigurationServer: the platform's configuration, validated, versioned, published live.

It does not start without a bootstrap configuration (:mod:`streams.config_file`). Each
version goes on the compacted ``config`` topic under its own key, so the topic is both the
state every service follows (through its platform watch) and the history; this service
keeps no other state. The first start publishes the bootstrap file as version 1; a later
start publishes the file again only if it was edited since and loosens no safety limit.
When the broker comes back without the topic (the local broker keeps it in memory), every
version is published again, so no service restarted then runs on built-in defaults.

``GET /config`` shows the version in force, ``GET /config/history`` every version;
``POST /config {"limits": {FIELD: VALUE, ...}, "by": NAME}`` changes the named limits over
the version in force. A change that is invalid (400) or loosens a safety limit (409,
:data:`streams.config_rules.STRICTER`) is refused with an alarm, and the version in force
stays; an accepted one is in force in every service within a poll of its platform watch.
Changes are serialised here, one writer, so versions never collide.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Mapping

import faust
from aiokafka import AIOKafkaConsumer
from prometheus_client import Counter

from streams import auth, kafka_clients, topics
from streams.auth import Role, requires
from streams.app import HeaterService, ServiceKind, ServiceSpec
from streams.config_file import read_bootstrap
from streams.config_rules import ConfigBook, key_for, loosened, parse_limits
from streams.heater_config import ConfigInvalid
from streams.readers import open_reader
from streams.records import ConfigDocument, Severity
from streams.settings import QUIET_INPUT, Settings

log = logging.getLogger(__name__)

SPEC = ServiceSpec("config", ServiceKind.CONTROL, description="ConfigurationServer: validated, versioned configuration",
                   input_fetch=QUIET_INPUT)
service = HeaterService(SPEC)
app = service.app

#: How long a publish waits to see its own version come back on ``config``.
VISIBLE_WITHIN_S = 5.0
#: How often the ``config`` log is checked for lost versions.
KEEP_EVERY_S = 1.0
#: ``issued_by`` of versions taken from the bootstrap file.
BOOTSTRAP = "bootstrap"
REFUSED = Counter("heater_config_refused_total", "Configuration changes refused, by reason", ["reason"])
_writer = asyncio.Lock()


def book() -> ConfigBook:
    assert service.watch is not None, "the platform watch is not started"
    return service.watch.config


class Refused(Exception):
    def __init__(self, status: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.reason, self.details = status, reason, details


async def publish(data: Mapping[str, Any], by: str) -> ConfigDocument:
    """The next version, on ``config``, confirmed by the broker and seen by this service's watch."""
    version = book().version + 1
    document = ConfigDocument(version=version, data=dict(data), issued_at=time.time(), issued_by=by)
    delivered = await app.send(topics.CONFIG.name, key=key_for(version), value=document.dumps(),
                               key_serializer="raw", value_serializer="raw")
    await delivered
    deadline = time.monotonic() + VISIBLE_WITHIN_S
    while book().version < version and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    log.warning("configuration version %d published by %s", version, by)
    return document


async def change(changes: Mapping[str, Any], by: str) -> ConfigDocument:
    """Validate ``changes`` over the version in force; publish them, or raise :class:`Refused`."""
    async with _writer:
        current = book().current
        base: dict[str, Any] = dict(current.data.get("limits", {})) if current else {}
        proposed_data = {"limits": {**base, **dict(changes)}}
        try:
            proposed = parse_limits(proposed_data)
        except ConfigInvalid as exc:
            raise Refused(400, "invalid", f"configuration refused: {exc}") from None
        in_force = book().limits(parse_limits({"limits": base}))
        lenient = loosened(in_force, proposed)
        if lenient:
            raise Refused(409, "loosens", "configuration refused: at run time a safety limit may only become stricter "
                          f"({'; '.join(lenient)})", loosened=lenient)
        return await publish(proposed_data, by)


async def refuse(refused: Refused, by: str) -> None:
    REFUSED.labels(refused.reason).inc()
    log.error("%s (from %s)", refused, by or "?")
    if service.alarms is not None:
        await service.alarms.raise_alarm("config-refused", Severity.WARNING, f"{refused} (from {by or '?'})",
                                         subject=refused.reason)


config_log = service.raw_topic(topics.CONFIG)


@app.agent(config_log)
async def audit(stream: faust.StreamT) -> None:
    """Every document on ``config`` is checked again: one that is not valid (written around this
    service) is dead-lettered or raises an alarm — the services' watches ignore it, the version
    in force stays."""
    async for record in service.records(stream, ConfigDocument):
        assert isinstance(record, ConfigDocument)
        try:
            parse_limits(record.data)
        except ConfigInvalid as exc:
            await refuse(Refused(400, "invalid", f"invalid configuration version {record.version} on the topic: {exc}"),
                         record.issued_by)


@service.add_startup_check
async def publish_bootstrap() -> None:
    """No bootstrap, no start (a ConfigInvalid names what is missing); the first start publishes it."""
    data = read_bootstrap(Settings.from_env())
    current = book().current
    from_file = [d for _, d in sorted(book().versions.items()) if d.issued_by == BOOTSTRAP]
    if current is None:
        await publish(data, BOOTSTRAP)
    elif from_file and from_file[-1].data != data:
        try:
            await change(data.get("limits", {}), BOOTSTRAP)
        except Refused as refused:
            await refuse(refused, "bootstrap file")
            log.error("the bootstrap file changed but is not applied; version %d stays in force", current.version)
    log.info("configuration version %d in force", book().version)


class LogKeeper:
    """Puts every version back on ``config`` when the log lost them (the local broker keeps topics in
    memory: after it restarts, a service started then would otherwise run on built-in defaults)."""

    def __init__(self) -> None:
        self._reader: AIOKafkaConsumer | None = None

    async def log_length(self) -> int:
        if self._reader is None:
            self._reader = await open_reader(Settings.from_env().broker_bootstrap, [topics.CONFIG.name],
                                             fetch_wait_ms=100, from_end=True)
            # It only asks where the log ends: paused, it does not poll the topic ten times a second.
            self._reader.pause(*self._reader.assignment())
        partitions = list(self._reader.assignment())
        ends = await kafka_clients.log_ends(self._reader, partitions, follow=False)
        return sum(ends.values())

    async def keep(self) -> None:
        versions = book().versions
        if not versions or not service.acting:
            return
        if await self.log_length() >= len(versions):
            return
        async with _writer:
            log.warning("the config log lost versions (a new broker log): publishing versions 1..%d again", book().version)
            for version, document in sorted(versions.items()):
                delivered = await app.send(topics.CONFIG.name, key=key_for(version), value=document.dumps(),
                                           key_serializer="raw", value_serializer="raw")
                await delivered


keeper = LogKeeper()


@app.timer(interval=KEEP_EVERY_S)
async def keep_published() -> None:
    try:
        await keeper.keep()
    except Exception as exc:  # the broker is away: the next round looks again
        log.warning("config log not checked: %r", exc)


def _document_view(document: ConfigDocument) -> dict[str, Any]:
    return {"version": document.version, "data": document.data, "issued_at": document.issued_at,
            "issued_by": document.issued_by}


CHANGE_BODY = '{"limits": {FIELD: NUMBER, ...}}'


@app.page("/config")
@requires(get=Role.VIEWER, post=Role.ADMIN)
class Config(faust.web.View):
    """``GET``: the version in force. ``POST``: change limits (stricter only at run time)."""

    async def get(self, request: Any) -> Any:
        current = book().current if service.watch is not None else None
        if current is None:
            return self.json({"error": "no configuration published yet"}, status=503)
        return self.json(_document_view(current))

    async def post(self, request: Any) -> Any:
        try:
            body = json.loads(await request.read() or b"{}")
            changes, by = body["limits"], auth.principal(request).name  # who changes it: the caller
            if not isinstance(changes, dict):
                raise TypeError("limits")
            by.encode()
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return self.json({"error": f"expected JSON {CHANGE_BODY}"}, status=400)
        if not service.acting:
            return self.json({"error": f"not accepting changes while {service.status.phase.value}"}, status=503)
        try:
            document = await change(changes, by)
        except Refused as refused:
            await refuse(refused, by)
            current = book().current
            return self.json({"error": str(refused), **refused.details, "version": current.version if current else 0},
                             status=refused.status)
        if service.alarms is not None:
            for reason in ("invalid", "loosens"):
                await service.alarms.clear_alarm("config-refused", subject=reason, reason=f"version {document.version} accepted")
        return self.json(_document_view(document))


@app.page("/config/history")
@requires(Role.VIEWER)
async def history_view(web: Any, request: Any) -> Any:
    """Every version, oldest first."""
    versions = book().versions if service.watch is not None else {}
    return web.json({"versions": [_document_view(d) for _, d in sorted(versions.items())]})
