"""The alarm service's changelog-backed tables."""

from __future__ import annotations

import faust

from streams.alarm_book import AlarmEntry
from streams.records import AlarmClear, PlatformLatch

LATCH_KEY = "platform"


def history_table(app: faust.App) -> faust.Table:
    """occurrence id → :class:`AlarmEntry`; entries are never removed."""
    return app.Table("alarm-history", key_type=str, value_type=AlarmEntry, partitions=1)


def active_table(app: faust.App) -> faust.Table:
    """alarm id → occurrence id of its latest occurrence."""
    return app.Table("alarm-active", key_type=str, value_type=str, partitions=1)


def pending_clears_table(app: faust.App) -> faust.Table:
    """alarm id → a clear that arrived before any raise of that alarm (recorded, not lost)."""
    return app.Table("alarm-pending-clears", key_type=str, value_type=AlarmClear, partitions=1)


def latch_table(app: faust.App) -> faust.Table:
    """``platform`` → :class:`PlatformLatch`, the FATAL latch as AlarmsServer holds it."""
    return app.Table("platform-latch", key_type=str, value_type=PlatformLatch, partitions=1)
