"""Heartbeats: a service beats every period, DisasterDetector (the valve's lease) more often,
and a phase change is beaten at once rather than a period later."""

from __future__ import annotations

import asyncio
import time

import pytest

from streams import heartbeats
from streams.lifecycle import Phase
from streams.records import Heartbeat


async def beats_of(service: str, phases: list[tuple[float, Phase]], duration: float) -> list[tuple[float, str]]:
    """(seconds since start, phase) of each beat ``service`` sends while its phase follows ``phases``."""
    sent: list[tuple[float, str]] = []
    started = time.monotonic()

    async def send(topic: str, key: bytes, value: bytes) -> None:
        assert topic == "heartbeats" and key == service.encode()
        sent.append((time.monotonic() - started, Heartbeat.loads(value).phase))

    def phase() -> Phase:
        elapsed = time.monotonic() - started
        return [p for at, p in phases if at <= elapsed][-1]

    task = asyncio.ensure_future(heartbeats.beat_forever(send, service, phase, lambda: 0.0))
    await asyncio.sleep(duration)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return sent


@pytest.fixture
def short_periods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heartbeats, "BEAT_PERIOD_S", 0.8)
    monkeypatch.setattr(heartbeats, "DETECTOR_BEAT_PERIOD_S", 0.2)
    monkeypatch.setattr(heartbeats, "PHASE_CHECK_S", 0.2)


def test_a_service_beats_every_period_and_at_once_when_its_phase_changes(short_periods: None) -> None:
    sent = asyncio.run(beats_of("bank", [(0.0, Phase.READY), (1.1, Phase.HALTED), (2.5, Phase.STOPPING)], 3.0))
    ready = [at for at, phase in sent if phase == "ready"]
    halted = [at for at, phase in sent if phase == "halted"]
    assert len(ready) == 2 and ready[1] - ready[0] == pytest.approx(0.8, abs=0.15), sent
    assert halted and halted[0] - 1.1 < 0.3, f"the change to halted waited for the period: {sent}"
    assert len(halted) == 2, f"halted from 1.1 s to 2.5 s: a beat at the change and one a period later: {sent}"
    assert all(at < 2.5 + 0.05 for at, _ in sent), f"a stopping service beat: {sent}"


def test_the_detector_beats_often_for_the_valve_lease(short_periods: None) -> None:
    sent = asyncio.run(beats_of(heartbeats.DETECTOR, [(0.0, Phase.READY)], 1.1))
    assert len(sent) >= 5, sent
