"""Heartbeats on ``heartbeats``: a service that acts says so, with how fresh its input is.

The gas valve's lease counts on more than the heating job: DESIGN rule 3 names the
detector too — kill it and the valve closes within seconds. So DisasterDetector
beats every :data:`BEAT_PERIOD_S` while it acts, carrying the ``received_at`` of the
newest reading it has decided; the I2C adapter keeps the valve open only while such a
beat says the detector is deciding current readings (:func:`watching_through`). A beat
is only a signal: a lost one is never resent (a late beat would say nothing new), and
missing beats close the valve, which is the safe side.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Callable

from streams import topics
from streams.lifecycle import Phase
from streams.records import Heartbeat

if TYPE_CHECKING:
    from streams.app import HeaterService

log = logging.getLogger(__name__)

BEAT_PERIOD_S = 0.5
#: The service whose beats the valve lease requires.
DETECTOR = "disaster"


def instance_name() -> str:
    """This process among others of the same service (a pod name under Kubernetes)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def beat(service: str, phase: Phase, watched_through: float, now: float) -> Heartbeat:
    return Heartbeat(
        service=service, instance=instance_name(), phase=phase.value, at=now, pid=os.getpid(),
        watched_through=watched_through,
    )


def watching_through(record: Heartbeat, service: str = DETECTOR) -> float | None:
    """The input time up to which ``service``'s beat says it decides; None if the beat says nothing of it."""
    if record.service != service or record.phase != Phase.READY.value or record.watched_through <= 0:
        return None
    return record.watched_through


def publish_heartbeats(service: "HeaterService", watched_through: Callable[[], float]) -> None:
    """Beat every :data:`BEAT_PERIOD_S` while the service acts (a halted service is silent)."""
    app = service.app

    @app.timer(interval=BEAT_PERIOD_S)
    async def heartbeat() -> None:
        if not service.acting:
            return
        record = beat(service.spec.name, service.status.phase, watched_through(), time.time())
        try:
            await app.send(
                topics.HEARTBEATS.name, key=service.spec.name.encode(), value=record.dumps(),
                key_serializer="raw", value_serializer="raw",
            )
        except Exception as exc:  # the next beat says the same; silence closes the valve
            log.debug("heartbeat not sent: %s", exc)


__all__ = ["BEAT_PERIOD_S", "DETECTOR", "beat", "instance_name", "publish_heartbeats", "watching_through"]
