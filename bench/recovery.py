"""Table rebuild time: a 100k-record changelog, an empty data directory, a worker.

Starts an embedded broker, writes N records (N distinct keys) straight to a
table's changelog with normal producer batching, then measures process start →
Faust "Ready" for a worker with the local profile (``tansu://`` transport,
``LocalTableManager``) that calls :func:`streams.tables.bulk_restore.prerestore_sync`
first, the way ``streams.worker.run`` does, and checks every key.  The worker is
then killed with SIGKILL and restarted on the same data directory.  The baseline
is the same rebuild with bulk restore disabled (Faust's own recovery); it runs on
20k records unless ``--full-baseline`` is given (~40 s at 100k).  The baseline's
store is also compared byte for byte with one that bulk restore builds from the
same changelog.

Ends with one JSON line.  Run: ``python bench/recovery.py [--records N] [--full-baseline]``.
The same file is the worker when run with ``--worker`` (configured by environment).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faust  # noqa: E402

from streams.settings import Settings, faust_options  # noqa: E402
from streams.tables.bulk_restore import prerestore, prerestore_sync  # noqa: E402
from streams.transport import register  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TABLE = "readings"
READY_TIMEOUT_S = 180.0


class Reading(faust.Record, serializer="json"):
    seq: int
    celsius: float


def key_of(i: int) -> str:
    return f"sensor-{i:06d}"


def reading_of(i: int) -> Reading:
    return Reading(seq=i, celsius=round(15 + (i % 1000) / 100, 2))


def build_app(app_id: str, broker_url: str, datadir: Path) -> tuple[faust.App, faust.Table]:
    """A service-like app: the local profile's Faust options and one RocksDB table."""
    register()
    options = faust_options(Settings(profile="local", broker_url=broker_url), "bench")
    options.update(datadir=str(datadir), web_enabled=False)
    app = faust.App(app_id, autodiscover=False, version=1, **options)
    return app, app.Table(TABLE, key_type=str, value_type=Reading, partitions=1)


# -- the worker process ----------------------------------------------------------------


def worker_main() -> None:
    """Rebuild the table, say READY when Faust is ready, then check every key."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    n = int(os.environ["N"])
    app, table = build_app(os.environ["APP_ID"], os.environ["BROKER"], Path(os.environ["DATADIR"]))
    started = time.monotonic()
    restored = prerestore_sync(app) if os.environ["PRERESTORE"] == "1" else {}
    prerestore_s = round(time.monotonic() - started, 3)
    replayed = 0
    apply_batch = table.apply_changelog_batch

    def counting_apply(batch: Any) -> None:
        nonlocal replayed
        events = list(batch)
        replayed += len(events)
        apply_batch(events)

    table.apply_changelog_batch = counting_apply  # type: ignore[method-assign]

    class Worker(faust.Worker):
        async def on_startup_finished(self) -> None:
            await super().on_startup_finished()
            print("READY " + json.dumps({"prerestored": sum(restored.values()), "prerestore_s": prerestore_s, "replayed": replayed}), flush=True)
            correct = sum(1 for i in range(n) if table.get(key_of(i)) == reading_of(i))
            print("VERIFIED " + json.dumps({"keys_correct": correct, "size": len(table)}), flush=True)

    Worker(app, loglevel="warning", redirect_stdouts=False).execute_from_commandline()


# -- the driver ----------------------------------------------------------------------


async def fill(bootstrap: str, topic: str, n: int) -> float:
    """Write ``n`` records to the changelog in normal batches (5 ms linger); return seconds."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=64 * 1024)
    await producer.start()
    started = time.monotonic()
    try:
        for i in range(n):
            await producer.send(topic, key=json.dumps(key_of(i)).encode(), value=reading_of(i).dumps())
        await producer.flush()
    finally:
        await producer.stop()
    return time.monotonic() - started


class WorkerRun:
    """One worker process: start it, time READY, read its verification."""

    def __init__(self, broker_url: str, app_id: str, datadir: Path, n: int, prerestore_on: bool, log: Path) -> None:
        env = dict(os.environ, APP_ID=app_id, BROKER=broker_url, DATADIR=str(datadir), N=str(n),
                   PRERESTORE="1" if prerestore_on else "0", PYTHONPATH=str(REPO))
        self.log = log
        self.lines: queue.Queue[str] = queue.Queue()
        self.started = time.monotonic()
        with open(log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, __file__, "--worker"],
                                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, word: str) -> dict[str, Any]:
        deadline = self.started + READY_TIMEOUT_S
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no {word} in {READY_TIMEOUT_S} s; see {self.log}") from None
            if line.startswith(word + " "):
                return json.loads(line[len(word) + 1:])

    def measure(self) -> dict[str, Any]:
        ready = self.expect("READY")
        ready["ready_s"] = round(time.monotonic() - self.started, 3)
        ready.update(self.expect("VERIFIED"))
        return ready

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def db_items(datadir: Path) -> dict[bytes, bytes]:
    """Every key/value of the table's partition-0 RocksDB, persisted offset included."""
    import rocksdict

    path = datadir / "v1" / "tables" / f"{TABLE}-0.db"
    db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
    try:
        return dict(db.items())
    finally:
        db.close()


def main() -> None:
    from heater.runtime.broker import EmbeddedBroker

    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--full-baseline", action="store_true", help="baseline on all records (~40 s at 100k)")
    args = parser.parse_args()
    n = args.records
    n_base = n if args.full_baseline else min(n, 20_000)
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        root = Path(tmp)
        with EmbeddedBroker(root / "broker") as broker:
            url = broker.url.split("?", 1)[0]
            app_id = f"bench-recovery-{uuid.uuid4().hex[:6]}"
            took = asyncio.run(fill(broker.bootstrap, f"{app_id}-{TABLE}-changelog", n))
            print(f"changelog filled: {n} records in {took:.2f} s", flush=True)

            run = WorkerRun(url, app_id, root / "w1", n, True, root / "w1.log")
            first = run.measure()
            print(f"empty data dir, bulk restore: {first}", flush=True)
            run.kill()
            run = WorkerRun(url, app_id, root / "w1", n, True, root / "w1.log")
            again = run.measure()
            print(f"restart after kill -9, data kept: {again}", flush=True)
            run.kill(signal.SIGTERM)

            base_id = f"bench-baseline-{uuid.uuid4().hex[:6]}"
            asyncio.run(fill(broker.bootstrap, f"{base_id}-{TABLE}-changelog", n_base))
            run = WorkerRun(url, base_id, root / "w2", n_base, False, root / "w2.log")
            base = run.measure()
            print(f"baseline, Faust recovery only ({n_base} records): {base}", flush=True)
            run.kill(signal.SIGTERM)
            app, _ = build_app(base_id, url, root / "w3")
            asyncio.run(prerestore(app, broker.bootstrap, threshold=0))
            identical = db_items(root / "w2") == db_items(root / "w3")
            print(f"store rebuilt by Faust == store rebuilt in bulk: {identical}", flush=True)

    print(json.dumps({
        "records": n,
        "ready_s": first["ready_s"],
        "keys_correct": first["keys_correct"],
        "prerestored": first["prerestored"],
        "prerestore_s": first["prerestore_s"],
        "faust_replayed": first["replayed"],
        "restart_ready_s": again["ready_s"],
        "restart_keys_correct": again["keys_correct"],
        "baseline": {"records": n_base, "ready_s": base["ready_s"], "keys_correct": base["keys_correct"],
                     "faust_replayed": base["replayed"], "store_bytes_identical": identical},
    }))


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.argv.remove("--worker")
        worker_main()
    else:
        main()
