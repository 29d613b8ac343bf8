"""Contract of the CAN bus backend (:mod:`adapters.can.bus`), the same on simulation and hardware.

Runs on the simulator's bus by default; ``HEATER_CAN_CONTRACT_CHANNEL=socketcan:can0``
runs it on a real (or virtual) SocketCAN device instead.  A second node on the same
bus (the "peer", opened like any python-can bus) sends; the adapter's reader receives.
Frames use an id of their own (0x6A5), so other traffic on the bus does not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Iterator

import can
import pytest

from adapters.can.bus import BusFailure, BusReader, BusUnavailable, Received, close_bus, open_bus
from tests.adapters.conftest import ContractBus

TEST_ID = 0x6A5
SATURATED_RATE = 9000.0


@pytest.fixture
def peer(contract_bus: ContractBus) -> Iterator[can.BusABC]:
    bus = contract_bus.open()
    yield bus
    close_bus(bus)


@contextlib.asynccontextmanager
async def receiving(contract_bus: ContractBus) -> AsyncIterator[BusReader]:
    """The adapter's way of receiving: a bus from :func:`open_bus` and a :class:`BusReader` on this loop."""
    bus = contract_bus.open()
    reader = BusReader(bus)
    reader.start()
    try:
        await asyncio.sleep(0.1)
        yield reader
    finally:
        reader.stop()
        close_bus(bus)


def send_paced(bus: can.BusABC, frames: list[can.Message], rate: float) -> None:
    """Send at ``rate`` frames/s; a full transmit queue (real controllers) is waited out, not an error."""
    start = time.monotonic()
    for index, message in enumerate(frames):
        due = start + index / rate
        delay = due - time.monotonic()
        if delay > 0.001:
            time.sleep(delay)
        for _ in range(1000):
            try:
                bus.send(message)
                break
            except can.CanOperationError:
                time.sleep(0.0005)
        else:
            raise AssertionError(f"could not send frame {index}: transmit queue stays full")


async def collect(reader: BusReader, want: int, timeout: float, predicate=lambda m: m.arbitration_id == TEST_ID) -> list[Received]:
    """Items of the test's own frames, until ``want`` arrived or the deadline."""
    got: list[Received] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        try:
            batch = await asyncio.wait_for(reader.get_batch(), max(0.01, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            break
        for item in batch:
            assert not isinstance(item, BusFailure), item.reason
            if predicate(item.message):
                got.append(item)
    return got


def numbered(count: int) -> list[can.Message]:
    return [
        can.Message(arbitration_id=TEST_ID, data=i.to_bytes(4, "little") + b"\xa5\x5a\x00\xff", is_extended_id=False)
        for i in range(count)
    ]


async def test_frames_arrive_intact_in_order_with_reception_time(contract_bus: ContractBus, peer: can.BusABC) -> None:
    async with receiving(contract_bus) as reader:
        sent_from = time.time()
        await asyncio.to_thread(send_paced, peer, numbered(50), 1000.0)
        got = await collect(reader, 50, timeout=5)
    assert [int.from_bytes(item.message.data[:4], "little") for item in got] == list(range(50))
    assert all(bytes(item.message.data[4:]) == b"\xa5\x5a\x00\xff" for item in got)
    assert all(not item.message.is_extended_id and item.message.dlc == 8 for item in got)
    times = [item.received_at for item in got]
    assert sent_from <= times[0] and times == sorted(times) and times[-1] <= time.time()


async def test_a_saturated_bus_is_received_without_loss(contract_bus: ContractBus, peer: can.BusABC) -> None:
    """About 9,000 frames/s (a 1 Mbit/s bus full of 8-byte frames) for one second: every frame, in order."""
    count = int(SATURATED_RATE)
    async with receiving(contract_bus) as reader:
        sending = asyncio.ensure_future(asyncio.to_thread(send_paced, peer, numbered(count), SATURATED_RATE))
        got = await collect(reader, count, timeout=30)
        await sending
    numbers = [int.from_bytes(item.message.data[:4], "little") for item in got]
    assert len(numbers) == count, f"{count - len(numbers)} of {count} frames lost"
    assert numbers == list(range(count))
    span = got[-1].received_at - got[0].received_at
    assert span > 0 and count / span > 2000, f"only {count / span:.0f} frames/s received"


async def test_error_frames_reach_the_reader_as_error_frames(contract_bus: ContractBus, peer: can.BusABC) -> None:
    error = can.Message(arbitration_id=0x004, data=bytes([0, 0x20, 0, 0, 0, 0, 0, 0]), is_error_frame=True, is_extended_id=False)
    async with receiving(contract_bus) as reader:
        await asyncio.to_thread(peer.send, error)
        got = await collect(reader, 1, timeout=5, predicate=lambda m: m.is_error_frame)
    assert len(got) == 1
    assert got[0].message.arbitration_id & 0x004 and got[0].message.data[1] == 0x20


async def test_the_reader_stops_promptly_and_the_bus_closes(contract_bus: ContractBus) -> None:
    bus = contract_bus.open()
    reader = BusReader(bus)
    reader.start()
    assert reader.running
    started = time.monotonic()
    reader.stop()
    assert not reader.running and time.monotonic() - started < 1.0
    assert close_bus(bus, timeout=2.0)


def test_an_unreachable_bus_is_a_typed_error(contract_bus: ContractBus) -> None:
    with pytest.raises(BusUnavailable, match="cannot open CAN bus"):
        open_bus(contract_bus.interface, contract_bus.missing_channel())


class BrokenBus(can.BusABC):
    """A bus whose controller fails after a few frames (the way a remote server or a driver dies)."""

    def __init__(self, frames: int) -> None:
        super().__init__(channel="broken")
        self.left = frames
        self.calls = 0

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        raise can.CanOperationError("read-only")

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        self.calls += 1
        if self.left <= 0:
            raise can.CanOperationError("controller gone")
        self.left -= 1
        return can.Message(arbitration_id=TEST_ID, data=b"\x01"), False


async def test_a_failing_bus_is_reported_once_and_reading_stops() -> None:
    bus = BrokenBus(frames=3)
    reader = BusReader(bus)
    reader.start()
    items: list[object] = []
    deadline = time.monotonic() + 5
    while not any(isinstance(i, BusFailure) for i in items) and time.monotonic() < deadline:
        items.extend(await asyncio.wait_for(reader.get_batch(), 5))
    assert [type(i).__name__ for i in items] == ["Received"] * 3 + ["BusFailure"]
    assert "controller gone" in items[-1].reason  # type: ignore[attr-defined]
    await asyncio.sleep(0.2)
    assert not reader.running and bus.calls == 4
    reader.stop()
    bus.shutdown()
