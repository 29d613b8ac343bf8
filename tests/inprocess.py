"""The I2C adapter in process: its real code on the simulator's Pico register model, no sockets, no Kafka."""

from __future__ import annotations

import asyncio
import errno
from concurrent.futures import Executor, Future
from typing import Any, Callable

from simulator.pico import Nack, Pico
from streams import topics
from streams.codec import decode
from streams.records import Alarm


class PicoBus:
    """The simulator's Pico register model as an in-process SMBus: the adapter's real write path, no socket."""

    def __init__(self, pico: Pico) -> None:
        self.pico = pico

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        try:
            return self.pico.read(i2c_addr, register)
        except Nack:
            raise OSError(errno.EREMOTEIO, "NACK") from None

    def write_byte_data(self, i2c_addr: int, register: int, value: int, force: bool | None = None) -> None:
        try:
            self.pico.write(i2c_addr, register, value)
        except Nack:
            raise OSError(errno.EREMOTEIO, "NACK") from None

    def close(self) -> None:
        """Nothing to release."""


class InlineExecutor(Executor):
    """Runs board calls at once on the loop's thread: the same calls, without a thread per example."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class Outbox:
    """Records what a service would send to Kafka (alarms, relay states)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> "asyncio.Future[None]":
        """Like aiokafka's producer: the returned future resolves once the broker has the record."""
        self.sent.append((topic, key or b"", value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def __call__(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def alarms(self) -> list[Alarm]:
        return [decode(v, Alarm) for t, _, v in self.sent if t == topics.CREATE_ALARM.name]


