"""The alarm service's changelog-backed tables."""

from __future__ import annotations

import faust

from streams.alarm_book import AlarmEntry, AlarmTimeline
from streams.latch import LATCH_KEY
from streams.records import PlatformLatch

__all__ = ["LATCH_KEY", "active_table", "history_table", "latch_table", "timelines_table", "used_nonces_table"]


def history_table(app: faust.App) -> faust.Table:
    """occurrence id → :class:`AlarmEntry`; entries are never removed."""
    return app.Table("alarm-history", key_type=str, value_type=AlarmEntry, partitions=1)


def active_table(app: faust.App) -> faust.Table:
    """alarm id → occurrence id of its latest occurrence."""
    return app.Table("alarm-active", key_type=str, value_type=str, partitions=1)


def timelines_table(app: faust.App) -> faust.Table:
    """alarm id → its recent raise/clear/reset events (order-independent history)."""
    return app.Table("alarm-timelines", key_type=str, value_type=AlarmTimeline, partitions=1)


def used_nonces_table(app: faust.App) -> faust.Table:
    """reset nonce → reset id: a nonce acted on once is never accepted again."""
    return app.Table("reset-nonces", key_type=str, value_type=str, partitions=1)


def latch_table(app: faust.App) -> faust.Table:
    """The FATAL latch as AlarmsServer holds it: :data:`LATCH_KEY` → the latch now, ``reset/<id>`` → each reset.

    One row per reset, written once (:mod:`streams.latch`): a write stays small however many
    resets came before.
    """
    return app.Table("platform-latch", key_type=str, value_type=PlatformLatch, partitions=1)
