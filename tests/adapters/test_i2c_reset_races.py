"""The reset gate's and the adapter's FATAL races, on the adapter's real code and the simulator's Pico.

In process (tests/inprocess.py): the moments a race needs — a FATAL arriving while Vault
verifies, a FATAL read in the same poll as the release — are placed exactly, not hoped for.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Awaitable, Callable

import pytest

from adapters.i2c import metrics as i2c_metrics
from adapters.i2c.board import RelayBoard
from adapters.i2c.ledger import ResetLedger
from adapters.i2c.registers import Relays
from adapters.i2c.resets import ResetGate
from adapters.i2c.service import SPEC as I2C_SPEC
from adapters.i2c.service import RelayAdapter
from simulator.nvram import Nvram
from simulator.pico import Pico
from streams.alarm_client import AlarmClient
from streams.edge import EdgeService
from streams.latch import LatchView
from streams.operator_reset import issue_reset
from streams.records import Alarm, OperatorReset
from streams.settings import Settings
from tests.inprocess import InlineExecutor, Outbox, PicoBus


class Signer:
    """Stands in for Vault's transit key: a digest of the signed bytes."""

    async def sign(self, payload: bytes) -> str:
        return "test:" + hashlib.sha256(payload).hexdigest()

    async def verify(self, payload: bytes, signature: str) -> bool:
        return signature == await self.sign(payload)


def fatal(alarm_id: str, raised_at: float) -> Alarm:
    source, code = alarm_id.split("/")[:2]
    return Alarm(alarm_id=alarm_id, source=source, code=code, severity="FATAL", message=alarm_id, raised_at=raised_at)


class Rig:
    """A halted I2C adapter on a tripped Pico, its latch view holding one FATAL occurrence."""

    def __init__(self, run_dir: Path, verify: Callable[[bytes, str], Awaitable[bool]] | None = None) -> None:
        self.pico = Pico(Nvram(run_dir), clock=lambda: 0.0)
        board = RelayBoard(PicoBus(self.pico))  # type: ignore[arg-type]
        self.outbox = Outbox()
        service = EdgeService(I2C_SPEC, Settings.from_env())
        service.producer = self.outbox  # type: ignore[assignment]
        service.alarms = AlarmClient(I2C_SPEC.name, self.outbox)
        self.latch = LatchView()
        service.watch = SimpleNamespace(latch=self.latch, on_change=[])  # type: ignore[assignment]
        self.adapter = RelayAdapter(service, board)
        self.adapter.io._executor = InlineExecutor()  # type: ignore[assignment]
        self.gate = ResetGate(self.adapter, ResetLedger(run_dir / "ledger"), verifier=verify or Signer().verify)
        self.first = fatal("bank/overtemp-fatal/water.0", time.time() - 5)
        self.latch.on_alarm(self.first)
        self.pico.trip("test")

    def reset(self, named: list[str], trip_count: int | None = None) -> OperatorReset:
        count = self.pico.snapshot()["trip_count"] % 256 if trip_count is None else trip_count
        return asyncio.run(issue_reset("alice", Signer(), named, count))

    def handle(self, reset: OperatorReset) -> None:
        asyncio.run(self.gate.handle(SimpleNamespace(value=reset.dumps())))  # type: ignore[arg-type]

    def refusals(self) -> list[str]:
        return [a.details["kind"] for a in self.outbox.alarms() if a.code == "reset-refused"]


def released_total() -> float:
    return i2c_metrics.RESETS.labels("released")._value.get()


def test_a_fatal_arriving_while_vault_verifies_keeps_the_pico_tripped(tmp_path: Path) -> None:
    """The reset names what latched when it was issued; a FATAL read while Vault was verifying is not in it."""
    rig: Rig

    async def slow_verify(payload: bytes, signature: str) -> bool:
        rig.latch.on_alarm(fatal("disaster/over-limit/job-1", time.time() - 1))  # raised before the reset
        return await Signer().verify(payload, signature)

    rig = Rig(tmp_path, slow_verify)
    rig.handle(rig.reset([rig.first.occurrence_id]))
    assert rig.pico.trip_latched, "released although a FATAL it does not name latches"
    assert rig.refusals() == ["outdated"]


def test_a_fatal_read_with_the_release_trips_the_pico_again(tmp_path: Path) -> None:
    """Halted: the reset releases the Pico; a FATAL it did not name arrives with the release (one poll, so
    the platform never looks released) — the gate trips the Pico again at once."""
    rig = Rig(tmp_path)
    before = released_total()
    rig.handle(rig.reset([rig.first.occurrence_id]))
    assert not rig.pico.trip_latched and released_total() == before + 1
    rig.latch.on_alarm(fatal("disaster/over-limit/job-2", time.time() - 0.5))
    asyncio.run(rig.gate.hold())
    assert rig.pico.trip_latched and not rig.pico.relays().power_on


def test_a_reset_for_an_earlier_trip_is_refused(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    stale_trip = rig.pico.snapshot()["trip_count"] % 256
    rig.pico.trip("again")
    rig.handle(rig.reset([rig.first.occurrence_id], trip_count=stale_trip))
    assert rig.pico.trip_latched and rig.refusals() == ["outdated"]


def test_a_fatal_raised_before_the_reset_and_delivered_before_it_is_acted_on_is_not_released(tmp_path: Path) -> None:
    """No clock decides: the second FATAL is older than the reset, and the reset does not name it."""
    rig = Rig(tmp_path)
    reset = rig.reset([rig.first.occurrence_id])
    rig.latch.on_alarm(fatal("disaster/too-fast-rise/job-3", reset.issued_at - 0.5))
    rig.handle(reset)
    assert rig.pico.trip_latched and rig.refusals() == ["outdated"]


class FailingOutbox(Outbox):
    """A broker that refuses the first ``failures`` sends."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def __call__(self, topic: str, key: bytes, value: bytes) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker unreachable")
        await super().__call__(topic, key, value)


def test_the_adapters_own_fatal_trips_the_pico_first_and_its_alarm_is_never_dropped(tmp_path: Path) -> None:
    """A welded valve: the Pico trips at once, without waiting for the alarm's round trip through Kafka;
    the alarm, refused by the broker, is kept and sent again — naming the trip as its occurrence."""
    pico = Pico(Nvram(tmp_path), clock=lambda: 0.0)
    board = RelayBoard(PicoBus(pico))  # type: ignore[arg-type]
    outbox = FailingOutbox(failures=2)
    service = EdgeService(I2C_SPEC, Settings.from_env())
    service.producer = outbox  # type: ignore[assignment]
    service.alarms = AlarmClient(I2C_SPEC.name, outbox)
    adapter = RelayAdapter(service, board)
    adapter.io._executor = InlineExecutor()  # type: ignore[assignment]
    powered = Relays(power_on=True)
    board.kick()
    board.write_relays(powered)
    pico.set_valve_stuck(True)  # welded: the valve stays open with only the power commanded

    async def scenario() -> list[Alarm]:
        readback = board.read_back()
        assert readback.status.valve_stuck
        adapter.note(readback)
        await adapter._check(readback, powered)
        assert pico.trip_latched and not pico.relays().power_on, "tripped before any alarm reached Kafka"
        assert outbox.alarms() == []
        await asyncio.sleep(1.5)  # two refusals, then the resend goes through
        return outbox.alarms()

    sent = asyncio.run(scenario())
    assert [(a.code, a.severity.value, a.occurrence) for a in sent] == [
        ("valve-stuck", "FATAL", f"trip-{pico.snapshot()['trip_count'] % 256}")]


@pytest.fixture(autouse=True)
def _quiet(caplog: Any) -> None:
    caplog.set_level("CRITICAL")
