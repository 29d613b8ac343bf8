"""ExceptionsServer's changelog-backed tables: counts per sender, and each sender's recent reports.

* ``exceptions-senders`` — sender key → :class:`SenderStats` as JSON (count, counts by
  exception type, whether the sender is on the allowed list);
* ``exceptions-recent`` — ``<sender key>#<slot>`` → one report entry; the slot is the
  report's number modulo :data:`RECENT_KEPT`, so each sender keeps its last reports in a
  ring and a step writes one small row, never the whole list.

A sender's key is its service name; a report from a sender that is not on the allowed
list is kept under :func:`sender_key` of its claimed name with the ``?`` prefix, so an
impostor never adds to a real service's counts. Writes happen inside a ledger step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

import faust

from streams.consistency import Ledger
from streams.tables import json_table

RECENT_KEPT = 50
#: Distinct exception types counted per sender; further ones are counted under :data:`OTHER_TYPES`.
MAX_TYPES = 100
OTHER_TYPES = "(other types)"
UNKNOWN_PREFIX = "?"


def sender_key(service: str, known: bool) -> str:
    return service if known else UNKNOWN_PREFIX + service


@dataclass
class SenderStats:
    """What the server keeps of one sender."""

    service: str
    sender_known: bool
    count: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    last_at: float = 0.0

    def add(self, exc_type: str, at: float) -> int:
        """Count one report; returns its number (1 for the first) for its ring slot."""
        self.count += 1
        name = exc_type if exc_type in self.by_type or len(self.by_type) < MAX_TYPES else OTHER_TYPES
        self.by_type[name] = self.by_type.get(name, 0) + 1
        self.last_at = max(self.last_at, at)
        return self.count

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "SenderStats":
        return cls(row["service"], bool(row["sender_known"]), int(row["count"]), dict(row["by_type"]),
                   float(row.get("last_at", 0.0)))


def totals(stats: Iterable[SenderStats]) -> dict[str, Any]:
    """The counts ExceptionsServer shows (``/exceptions/count``) and the HomeKit feed carries."""
    everyone = list(stats)
    return {
        "total": sum(s.count for s in everyone),
        "unknown_senders": sum(s.count for s in everyone if not s.sender_known),
        "services": {sender_key(s.service, s.sender_known): s.count for s in everyone},
    }


class ExceptionTables:
    """The two tables, written through the service's ledger (:mod:`streams.consistency`)."""

    def __init__(self, app: faust.App, ledger: Ledger) -> None:
        self.senders = ledger.tracked(json_table(app, "exceptions-senders", "exception counts per sender"))
        self.recent = ledger.tracked(json_table(app, "exceptions-recent", "each sender's last reports (a ring)"))

    def stats(self, key: str) -> SenderStats | None:
        row = self.senders.get(key)
        return SenderStats.from_row(row) if row else None

    def record(self, service: str, known: bool, entry: dict[str, Any]) -> SenderStats:
        """Count a report and keep it among its sender's recent ones (inside a step)."""
        key = sender_key(service, known)
        stats = self.stats(key) or SenderStats(service, known)
        number = stats.add(entry["exc_type"], entry["at"])
        self.senders[key] = asdict(stats)
        self.recent[f"{key}#{(number - 1) % RECENT_KEPT}"] = entry | {"number": number, "sender_known": known}
        return stats

    def all_stats(self) -> list[SenderStats]:
        return sorted((SenderStats.from_row(row) for row in self.senders.values()), key=lambda s: (not s.sender_known, s.service))

    def entries(self, stats: SenderStats) -> Iterator[dict[str, Any]]:
        """A sender's kept reports, newest first."""
        key = sender_key(stats.service, stats.sender_known)
        for number in range(stats.count, max(0, stats.count - RECENT_KEPT), -1):
            entry = self.recent.get(f"{key}#{(number - 1) % RECENT_KEPT}")
            if entry is not None:
                yield entry
