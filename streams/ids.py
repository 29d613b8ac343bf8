"""Alarm and FATAL occurrence ids: deterministic, so a replay names the same thing (no Faust, no Kafka)."""

from __future__ import annotations

import hashlib


def alarm_id_for(source: str, code: str, subject: str = "") -> str:
    """Deterministic alarm id: the same condition always has the same id (idempotence)."""
    raw = f"{source}/{code}/{subject}" if subject else f"{source}/{code}"
    if len(raw) <= 120:
        return raw
    return f"{source}/{code}/{hashlib.sha256(subject.encode()).hexdigest()[:16]}"


def occurrence_key(alarm_id: str, raised_at: float, occurrence: str = "") -> str:
    """The id of one FATAL occurrence: the source's own name for it, else the time its condition started.

    Sources derive both from their input (the reading that started the condition, the
    Pico trip it caused), so the same input replayed gives the same id, and a danger
    decided again from newer input gives a new one (:mod:`streams.latch`).
    """
    return f"{alarm_id}#{occurrence}" if occurrence else f"{alarm_id}@{raised_at!r}"
