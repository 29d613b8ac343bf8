"""Heartbeats on ``heartbeats``: every service says it is alive, in which phase, and how
fresh its input is.

StateRegistry follows them to know who runs (a service missing past a timeout is an
alarm; an unknown sender is FATAL). The gas valve's lease counts on them too: DESIGN
rule 3 names the detector — kill it and the valve closes within seconds. So a beat
carries the ``received_at`` of the newest reading the service has decided, and the I2C
adapter keeps the valve open only while DisasterDetector's beats say it decides current
readings (:func:`watching_through`). A beat is only a signal: a lost one is never resent
(a late beat would say nothing new), and missing beats close the valve — the safe side.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from importlib import metadata
from typing import Awaitable, Callable

from streams import topics
from streams.lifecycle import Phase
from streams.records import Heartbeat

log = logging.getLogger(__name__)

#: How often a service beats: well inside StateRegistry's ``missing_after_s`` (20 s).
BEAT_PERIOD_S = 2.0
#: The service whose beats the valve lease requires.
DETECTOR = "disaster"
#: How often DisasterDetector beats: the valve's lease runs on how current its beats say it is.
DETECTOR_BEAT_PERIOD_S = 0.5
#: How often a service looks at its phase: a change is beaten at once, not a period later.
PHASE_CHECK_S = 0.5

Send = Callable[[str, bytes, bytes], Awaitable[object]]


def instance_name() -> str:
    """This process among others of the same service (a pod name under Kubernetes)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _version() -> str:
    try:
        return metadata.version("heater")
    except metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version()


def beat(service: str, phase: Phase, watched_through: float, now: float, identity: str | None = None) -> Heartbeat:
    return Heartbeat(
        service=service, instance=instance_name(), phase=phase.value, at=now, pid=os.getpid(),
        watched_through=watched_through, version=VERSION, identity=identity or service,
    )


def watching_through(record: Heartbeat, service: str = DETECTOR) -> float | None:
    """The input time up to which ``service``'s beat says it decides; None if the beat says nothing of it."""
    if record.service != service or record.phase != Phase.READY.value or record.watched_through <= 0:
        return None
    return record.watched_through


async def send_beat(send: Send, record: Heartbeat) -> None:
    """Send one beat; a failure is only logged (the next beat says the same, and silence is safe)."""
    try:
        await send(topics.HEARTBEATS.name, record.service.encode(), record.dumps())
    except Exception as exc:
        log.debug("heartbeat not sent: %s", exc)


async def beat_forever(
    send: Send, service: str, phase: Callable[[], Phase], watched_through: Callable[[], float], identity: str | None = None
) -> None:
    """Beat every :func:`beat_period` and at once when the phase changes, until cancelled.

    A stopping service falls silent. Every beat is a message that every follower of
    ``heartbeats`` decodes; beating no more often than needed is most of what an idle
    platform's registry does.
    """
    period = beat_period(service)
    last_phase: Phase | None = None
    last_sent = 0.0
    while True:
        now_phase = phase()
        if now_phase is not Phase.STOPPING and (now_phase is not last_phase or time.monotonic() - last_sent >= period):
            last_phase, last_sent = now_phase, time.monotonic()
            await send_beat(send, beat(service, now_phase, watched_through(), time.time(), identity))
        await asyncio.sleep(min(period, PHASE_CHECK_S))


def beat_period(service: str) -> float:
    return DETECTOR_BEAT_PERIOD_S if service == DETECTOR else BEAT_PERIOD_S


__all__ = ["BEAT_PERIOD_S", "DETECTOR", "DETECTOR_BEAT_PERIOD_S", "VERSION", "beat", "beat_forever", "beat_period",
           "instance_name", "send_beat", "watching_through"]
