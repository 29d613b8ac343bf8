"""The one alarm client every service uses: raise, clear, and the startup self-check.

Producing goes through an injected ``send(topic, key, value)`` so Faust services (the
app's producer) and plain adapters (an aiokafka producer) share this module. Alarm ids
are deterministic (``source/code[/subject]``): raising the same condition twice is one
alarm. While the platform is latched a service clears nothing (rule 2).
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Mapping

from streams import topics
from streams.platform_watch import PlatformWatch
from streams.records import Alarm, AlarmClear, Severity, alarm_id_for, now

log = logging.getLogger(__name__)

#: Sends one message; what it returns (a delivery future, for producers that give one) is
#: for callers that must confirm delivery, like the bank's outbox.
Sender = Callable[[str, bytes, bytes], Awaitable[Any]]


class AlarmClient:
    """Raise and clear this service's own alarms."""

    def __init__(self, source: str, send: Sender, watch: PlatformWatch | None = None) -> None:
        self.source = source
        self._send = send
        self._watch = watch

    async def raise_alarm(
        self,
        code: str,
        severity: Severity | str,
        message: str,
        subject: str = "",
        details: Mapping[str, str] | None = None,
        at: float | None = None,
        occurrence: str = "",
    ) -> Alarm:
        """Raise an alarm; ``at`` (default now) is when its condition started, for replay-safe ids.

        ``occurrence`` names a FATAL occurrence when ``at`` does not (see :mod:`streams.latch`).
        """
        alarm = Alarm(
            alarm_id=alarm_id_for(self.source, code, subject),
            source=self.source,
            code=code,
            severity=Severity(severity),
            message=message,
            raised_at=now() if at is None else at,
            details={k: str(v) for k, v in (details or {}).items()},
            occurrence=occurrence,
        )
        await self._send(topics.CREATE_ALARM.name, alarm.alarm_id.encode(), alarm.dumps())
        log.log(logging.CRITICAL if alarm.is_fatal else logging.WARNING, "raised %s %s: %s", alarm.severity.value, alarm.alarm_id, message)
        return alarm

    async def clear_alarm(self, code: str, subject: str = "", reason: str = "", at: float | None = None) -> bool:
        """Clear one of this service's alarms; refused (False) while the platform is latched.

        ``at`` (default now) is when the condition ended.
        """
        if self._watch is not None and self._watch.latch.latched:
            log.warning("not clearing %s/%s: platform latched", code, subject)
            return False
        await self._send_clear(alarm_id_for(self.source, code, subject), reason, at)
        return True

    async def _send_clear(self, alarm_id: str, reason: str, at: float | None = None) -> None:
        clear = AlarmClear(alarm_id=alarm_id, cleared_by=self.source, cleared_at=now() if at is None else at, reason=reason)
        await self._send(topics.DELETE_ALARM.name, alarm_id.encode(), clear.dumps())

    async def clear_own_on_startup(self) -> list[str]:
        """Startup self-check (rule 5): clear this service's own non-FATAL active alarms."""
        if self._watch is None or self._watch.latch.latched:
            return []
        own = [
            e.alarm.alarm_id
            for e in self._watch.book.active_entries()
            if e.alarm.source == self.source and not e.alarm.is_fatal
        ]
        for alarm_id in own:
            await self._send_clear(alarm_id, "cleared on startup")
        if own:
            log.info("startup: cleared %d own alarm(s): %s", len(own), ", ".join(own))
        return own
