"""The platform's FATAL latch as every service sees it. Pure: no Kafka.

The platform is latched when a FATAL alarm was raised after the last operator reset.
Two sources feed it: FATAL alarms on ``createAlarm`` (so a service halts even when
AlarmsServer is down) and AlarmsServer's records on ``platformLatch``. A release
(``latched=False``) covers the FATAL alarms raised up to its ``changed_at`` — the
moment the operator issued the reset — and no later ones.

The reset covers what came before it. The operator resets knowing the platform's state
up to that moment, so evidence from before it — a reading received earlier, replayed by
a service catching up after its restart — cannot latch the platform again. A condition
that persists shows in the readings that follow the reset, and those latch it at once.
Without this rule a reset could never hold: every control service replays its input
from its last committed offset, and the readings that caused the FATAL are still there.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.records import Alarm, PlatformLatch


@dataclass
class LatchView:
    fatal_at: float | None = None
    fatal_alarm_id: str = ""
    fatal_reason: str = ""
    released_at: float | None = None
    released_by: str = ""

    @property
    def latched(self) -> bool:
        return self.fatal_at is not None and (self.released_at is None or self.fatal_at > self.released_at)

    @property
    def reason(self) -> str:
        return f"FATAL {self.fatal_alarm_id}: {self.fatal_reason}" if self.latched else ""

    def covers(self, at: float) -> bool:
        """True when the last operator reset covers something observed at ``at``."""
        return self.released_at is not None and at <= self.released_at

    def on_alarm(self, alarm: Alarm) -> None:
        if alarm.is_fatal:
            self._fatal(alarm.raised_at, alarm.alarm_id, alarm.message)

    def on_latch(self, record: PlatformLatch) -> None:
        if record.latched:
            self._fatal(record.changed_at, record.alarm_id, record.reason)
        elif self.released_at is None or record.changed_at > self.released_at:
            self.released_at = record.changed_at
            self.released_by = record.changed_by

    def _fatal(self, at: float, alarm_id: str, reason: str) -> None:
        if self.fatal_at is None or at >= self.fatal_at:
            self.fatal_at, self.fatal_alarm_id, self.fatal_reason = at, alarm_id, reason


def covered_by_release(latch: PlatformLatch | None, raised_at: float) -> bool:
    """True when ``latch`` is a release issued at or after ``raised_at`` (see the module doc)."""
    return latch is not None and not latch.latched and raised_at <= latch.changed_at
