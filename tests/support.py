"""Test support shared by every integration test: service processes and topic I/O.

The one way to start a broker and a Vault in tests is the session fixtures in
``conftest.py``; the one way to run a service is :class:`ServiceProcess`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from heater.probes import http_json
from heater.runtime.processes import free_port


class ServiceProcess:
    """One platform service as a real process (`python -m heater worker NAME`)."""

    def __init__(self, name: str, broker_url: str, run_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.run_dir = run_dir
        self.log_path = run_dir / "logs" / f"{name}-{self.port}.log"
        self.env = dict(
            os.environ,
            HEATER_PROFILE="local",
            HEATER_BROKER_URL=broker_url,
            HEATER_RUN_DIR=str(run_dir),
            HEATER_WEB_PORT=str(self.port),
            **(extra_env or {}),
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServiceProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heater", "worker", self.name],
            env=self.env,
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def get(self, path: str) -> tuple[int, Any]:
        return http_json(self.url + path)

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Seconds until ``/readyz`` answered 200; fails with the log tail otherwise."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready in {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
        return self.proc.wait()


async def produce(bootstrap: str, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    try:
        for value in values:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def consume_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Any]], bool],
    timeout: float = 20.0,
) -> list[Any]:
    """Read ``topic`` from the start until ``done(messages)`` holds; return the messages."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50
    )
    await consumer.start()
    messages: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while not done(messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: condition not met in {timeout} s; got {len(messages)} messages")
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                messages.extend(records)
        return messages
    finally:
        await consumer.stop()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout} s (last value {value!r})")
        time.sleep(interval)
