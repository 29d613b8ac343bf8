"""ExceptionsServer: counts and keeps the exceptions every service forwards.

Every service forwards its unhandled exceptions to ``exceptions``
(:mod:`streams.exception_reports`). This service counts them per sender and per exception
type and keeps each sender's last 50 (:mod:`streams.tables.exceptions`); each report is
one step of the service's ledger (:mod:`streams.consistency`), so across a kill -9 no
report is counted twice or lost.

A report's sender is checked against the allowed list in Vault
(:mod:`streams.allowlist`): a report from an unknown service, or from a known one with
the wrong identity, raises a CRITICAL ``unknown-sender`` security alarm (owed by the same
step) and is kept, marked as from an unknown sender — never dropped. Malformed reports go
to the dead-letter topic. Without the allowed list at start-up the service does not start;
at run time it refreshes the list and keeps the last good one while Vault is away (with
a ``vault-unavailable`` alarm, cleared when Vault answers again).

Views: ``GET /exceptions`` (counts per sender and recent reports, paged) and
``GET /exceptions/count`` (the totals; the HomeKit feed carries the same, read from this
service's ``exceptions-senders`` changelog).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from prometheus_client import Counter

from streams import topics
from streams.auth import Role, requires
from streams.allowlist import is_allowed, load_allowlist, refreshed_allowlist
from streams.app import HeaterService, ServiceKind, ServiceSpec
from streams.consistency import Step
from streams.records import ExceptionReport, Severity
from streams.tables.exceptions import ExceptionTables, SenderStats, totals
from streams.settings import DISPLAY_INPUT
from streams.vault import VaultUnavailable

log = logging.getLogger(__name__)

SPEC = ServiceSpec("exceptions", ServiceKind.DISPLAY, description="exceptions forwarded by every service: counts, recent reports",
                   input_fetch=DISPLAY_INPUT)
service = HeaterService(SPEC)
app = service.app

ledger = service.use_ledger()
tables = ExceptionTables(app, ledger)
reports = service.raw_topic(topics.EXCEPTIONS)
ledger.run_settler()

#: How often the allowed list is read again from Vault.
ALLOWLIST_REFRESH_S = 10.0
UNKNOWN_SENDER = "unknown-sender"

COUNTED = Counter("heater_exceptions_counted_total", "Exception reports counted, by whether the sender is allowed",
                  ["sender_known"])


class Senders:
    """The allowed list as last read from Vault (the last good one while Vault is away)."""

    def __init__(self) -> None:
        self.allowed: dict[str, str] | None = None
        self.loaded = asyncio.Event()

    async def load_at_start(self) -> None:
        """Startup self-check: without the allowed list, no sender can be judged; the service does not start."""
        try:
            self.allowed = await load_allowlist()
        except VaultUnavailable as exc:
            raise VaultUnavailable(f"exceptions: cannot read the allowed services at start-up: {exc}") from None
        log.info("allowed services: %s", ", ".join(sorted(self.allowed)))
        self.loaded.set()

    async def refresh(self) -> None:
        """Vault's list again (the service's Vault dependency raises and clears the outage alarm)."""
        assert self.allowed is not None
        self.allowed = await refreshed_allowlist(service.vault, self.allowed)

    def known(self, report: ExceptionReport) -> bool:
        assert self.allowed is not None, "reports are decided only once the allowed list is loaded"
        return is_allowed(self.allowed, report.service, report.identity or report.service)


senders = Senders()
service.add_startup_check(senders.load_at_start)


@app.timer(interval=ALLOWLIST_REFRESH_S)
async def refresh_allowlist() -> None:
    if senders.allowed is not None:
        await senders.refresh()


def entry_of(report: ExceptionReport, step: Step) -> dict[str, Any]:
    position = step.position
    return {
        "service": report.service, "instance": report.instance, "identity": report.identity,
        "exc_type": report.exc_type, "message": report.message, "traceback": report.traceback,
        "trace_id": report.trace_id, "report_id": report.report_id, "at": report.at,
        "received_at": time.time(), "input": f"{position[0]}@{position[1]}" if position else "",
    }


async def on_report(step: Step, report: ExceptionReport) -> None:
    known = senders.known(report)
    stats = tables.record(report.service, known, entry_of(report, step))
    COUNTED.labels(str(known).lower()).inc()
    if known:
        log.info("exception #%d from %s: %s: %s", stats.count, report.service, report.exc_type, report.message[:200])
        return
    log.warning("exception report from unknown sender %r (identity %r): kept, security alarm raised",
                report.service, report.identity)
    assert service.alarms is not None
    await step.alarms(service.alarms).raise_alarm(
        UNKNOWN_SENDER, Severity.CRITICAL,
        f"exception report from a sender not on the allowed list: service {report.service!r}, identity {report.identity!r}",
        subject=report.service[:100], at=report.at,
        details={"service": report.service, "identity": report.identity, "instance": report.instance,
                 "exc_type": report.exc_type},
    )


@app.agent(reports)
async def count_reports(stream: faust.StreamT) -> None:
    async for record in service.records(stream, ExceptionReport, admit=ledger.admit):
        assert isinstance(record, ExceptionReport)
        # Events flow once the tables are recovered, while the start-up checks may still run:
        # an admitted report waits for the allowed list rather than be judged without it.
        await senders.loaded.wait()
        async with ledger.step() as step:
            await on_report(step, record)


# -- views ---------------------------------------------------------------------------


def sender_view(stats: SenderStats) -> dict[str, Any]:
    return {"service": stats.service, "sender_known": stats.sender_known, "count": stats.count,
            "by_type": dict(sorted(stats.by_type.items(), key=lambda kv: -kv[1])), "last_at": stats.last_at}


@app.page("/exceptions")
@requires(Role.VIEWER)
async def exceptions_view(web: Any, request: Any) -> Any:
    """Counts per sender, and recent reports newest first: ``?service=&limit=&offset=``."""
    query = request.query
    try:
        limit = max(1, min(int(query.get("limit", 50)), 500))
        offset = max(0, int(query.get("offset", 0)))
    except ValueError as exc:
        return web.json({"error": f"bad query: {exc}"}, status=400)
    wanted = query.get("service")
    everyone = tables.all_stats()
    chosen = [s for s in everyone if wanted is None or s.service == wanted]
    entries = sorted((e for s in chosen for e in tables.entries(s)), key=lambda e: (-e["at"], e["service"], -e["number"]))
    return web.json({
        "total": sum(s.count for s in everyone),
        "services": [sender_view(s) for s in chosen],
        "entries_total": len(entries), "limit": limit, "offset": offset,
        "entries": entries[offset: offset + limit],
    })


@app.page("/exceptions/count")
@requires(Role.VIEWER)
async def count_view(web: Any, request: Any) -> Any:
    """The total, how many came from unknown senders, and the count per sender."""
    return web.json(totals(tables.all_stats()))
