"""ExceptionsServer on the real broker and Vault, fed by real service processes.

Each test that counts runs a broker of its own (the exceptions topic starts empty), so a
count is exact, not a delta over what other tests sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from heater.runtime.broker import EmbeddedBroker
from heater.runtime.processes import free_port
from heater.runtime.vault import EmbeddedVault
from streams.records import ExceptionReport
from tests.support import ServiceProcess, consume_until, produce, run, wait_for

#: A real EdgeService process (the runtime of every adapter) whose body fails: first a
#: callback raises inside the event loop (asyncio's exception handler sees it), then the
#: body itself raises and the service stops as "crashed".
EDGE_PROBE = """
import asyncio, logging, sys
from streams.edge import EdgeService
from streams.lifecycle import ServiceKind, ServiceSpec

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

async def body(service):
    service.mark_ready()
    asyncio.get_running_loop().call_soon(lambda: {}["no such key"])
    await asyncio.sleep(1.0)
    raise ZeroDivisionError("probe body failed")

sys.exit(EdgeService(ServiceSpec(sys.argv[1], ServiceKind.DISPLAY)).run(body))
"""



def start_server(broker: EmbeddedBroker, vault: EmbeddedVault, run_dir: Path) -> ServiceProcess:
    server = ServiceProcess("exceptions", broker.url, run_dir, vault=vault).start()
    server.wait_ready(60)
    return server


@pytest.fixture
def server(own_broker: EmbeddedBroker, vault: EmbeddedVault, run_dir: Path) -> Iterator[ServiceProcess]:
    process = start_server(own_broker, vault, run_dir)
    yield process
    process.stop()


def run_edge_probe(name: str, broker: EmbeddedBroker, run_dir: Path, identity: str | None = None) -> int:
    """Run the probe as its own process, as a supervisor would; return its exit code."""
    env = {**os.environ, "HEATER_PROFILE": "local", "HEATER_BROKER_URL": broker.url, "HEATER_RUN_DIR": str(run_dir),
           "HEATER_WEB_PORT": str(free_port()), "HEATER_TLS": "off"}  # a probe without Vault: no certificate to serve
    if identity is not None:
        env["HEATER_SERVICE_IDENTITY"] = identity
    log_path = run_dir / "logs" / f"probe-{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.run([sys.executable, "-c", EDGE_PROBE, name], env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=60, cwd=Path(__file__).resolve().parents[1]).returncode


def senders(server: ServiceProcess) -> dict[str, dict[str, Any]]:
    """Sender key (``?name`` for unknown senders) → its counts, as ``GET /exceptions`` shows them."""
    status, body = server.get("/exceptions?limit=500")
    assert status == 200, body
    return {(s["service"] if s["sender_known"] else "?" + s["service"]): s for s in body["services"]}


def entries(server: ServiceProcess, service: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while True:
        status, body = server.get(f"/exceptions?service={service}&limit=20&offset={len(got)}")
        assert status == 200, body
        got.extend(body["entries"])
        if len(got) >= body["entries_total"]:
            return got


def report(service: str, identity: str, exc_type: str, n: int) -> ExceptionReport:
    return ExceptionReport(service=service, identity=identity, instance="test:1", exc_type=exc_type,
                           message=f"report {n}", traceback=f"Traceback ... {n}", at=time.time(), report_id=f"{service}-{n}")


def test_exceptions_in_two_real_services_are_counted_separately(
    own_broker: EmbeddedBroker, vault: EmbeddedVault, server: ServiceProcess, run_dir: Path
) -> None:
    # A Faust service (HeaterService) whose start-up self-check fails: a bad limit in its environment.
    disaster = ServiceProcess("disaster", own_broker.url, run_dir,
                              {"HEATER_LIMIT_FATAL_C": "very hot"}, vault=vault).start()
    assert disaster.wait(60) not in (0, None), "the disaster detector must not start with a bad limit"
    # An edge adapter's runtime (EdgeService) whose body fails, with a failing loop callback first.
    assert run_edge_probe("can", own_broker, run_dir) == 70

    def both_counted() -> dict[str, dict[str, Any]] | None:
        got = senders(server)
        return got if {"disaster", "can"} <= set(got) and got["can"]["count"] >= 2 else None

    got = wait_for(both_counted, 30, 0.3, "reports of both services counted")
    disaster_types, can_types = got["disaster"]["by_type"], got["can"]["by_type"]
    print(f"\ncounted: disaster {disaster_types}, can {can_types}")
    assert disaster_types.get("streams.heater_config.ConfigInvalid") == 1, "one exception, one report, however often logged"
    assert can_types == {"ZeroDivisionError": 1, "KeyError": 1}, can_types
    assert got["can"]["count"] == 2 and got["disaster"]["count"] == sum(disaster_types.values())
    can_entries = entries(server, "can")
    assert {e["exc_type"] for e in can_entries} == {"ZeroDivisionError", "KeyError"}
    crash = next(e for e in can_entries if e["exc_type"] == "ZeroDivisionError")
    assert crash["message"] == "probe body failed"
    assert "in body" in crash["traceback"] and "ZeroDivisionError: probe body failed" in crash["traceback"]
    assert crash["identity"] == "can" and crash["instance"].endswith(tuple("0123456789")) and crash["trace_id"] == ""
    assert all(e["sender_known"] for e in can_entries)
    status, count = server.get("/exceptions/count")
    assert status == 200 and count["total"] == got["disaster"]["count"] + 2 and count["unknown_senders"] == 0


def test_unknown_sender_raises_a_security_alarm_and_its_report_is_kept(
    own_broker: EmbeddedBroker, vault: EmbeddedVault, server: ServiceProcess, run_dir: Path
) -> None:
    intruder = f"intruder-{uuid.uuid4().hex[:6]}"
    run(produce(own_broker.bootstrap, "exceptions", [report(intruder, intruder, "builtins.RuntimeError", 1).dumps()]))
    # A real process that names a known service with an identity that is not its own.
    assert run_edge_probe("alarms", own_broker, run_dir, identity="CN=mallory") == 70

    def alarmed() -> list[dict[str, Any]]:
        async def read() -> list[Any]:
            return await consume_until(own_broker.bootstrap, "createAlarm",
                                       lambda ms: sum(b'"unknown-sender"' in (m.value or b"") for m in ms) >= 2, timeout=30)

        return [json.loads(m.value) for m in run(read()) if b'"unknown-sender"' in (m.value or b"")]

    alarms = alarmed()
    assert {a["source"] for a in alarms} == {"exceptions"}
    assert {a["severity"] for a in alarms} == {"CRITICAL"}
    assert {a["details"]["service"] for a in alarms} == {intruder, "alarms"}
    assert any(a["details"]["identity"] == "CN=mallory" for a in alarms)

    def all_kept(shown: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
        present = {"?" + intruder, "?alarms"} <= set(shown)
        return shown if present and shown["?alarms"]["count"] >= 2 else None  # the server takes its input in batches

    got = wait_for(lambda: all_kept(senders(server)), 20, 0.3, "reports of unknown senders kept")
    assert got["?" + intruder]["count"] == 1 and got["?alarms"]["count"] == 2  # the probe's KeyError and crash
    assert "alarms" not in got, "an impostor never adds to the real service's counts"
    kept = entries(server, intruder)
    assert len(kept) == 1 and kept[0]["sender_known"] is False and kept[0]["report_id"] == f"{intruder}-1"
    count = server.get("/exceptions/count")[1]
    assert count["unknown_senders"] == 3 and count["total"] == 3


def test_malformed_reports_are_dead_lettered(own_broker: EmbeddedBroker, server: ServiceProcess) -> None:
    good = report("can", "can", "ValueError", 1).dumps()
    bad = [b"not json", b'{"service": "can", "schema_version": 1}', good.replace(b'"schema_version":1', b'"schema_version":9')]
    run(produce(own_broker.bootstrap, "exceptions", bad + [good]))
    wait_for(lambda: senders(server).get("can", {}).get("count") == 1, 20, 0.3, "the good report counted")

    async def dead() -> list[Any]:
        return await consume_until(own_broker.bootstrap, "deadLetter",
                                   lambda ms: sum(dict(m.headers).get("source-topic") == b"exceptions" for m in ms) >= 3)

    letters = [m for m in run(dead()) if dict(m.headers).get("source-topic") == b"exceptions"]
    assert sorted(m.value for m in letters) == sorted(bad)
    assert server.get("/exceptions/count")[1]["total"] == 1 and server.get("/readyz")[0] == 200


def test_vault_unreachable_at_start_is_a_clear_failure(broker: EmbeddedBroker, vault: EmbeddedVault, run_dir: Path) -> None:
    process = ServiceProcess("exceptions", broker.url, run_dir,
                             {"HEATER_VAULT_ADDR": f"http://127.0.0.1:{free_port()}"}, vault=vault).start()
    try:
        code = process.wait(60)
    finally:
        process.stop()
    assert code != 0
    assert "cannot read the allowed services at start-up" in process.tail(200)


def test_vault_away_at_run_time_keeps_the_last_allowed_list(own_broker: EmbeddedBroker, run_dir: Path) -> None:
    """Vault stops answering: an alarm, and senders are still judged by the last list; back: the alarm is cleared."""
    with EmbeddedVault(run_dir / "own-vault") as own_vault:
        server = start_server(own_broker, own_vault, run_dir)
        try:
            assert server.token() is not None  # the caller logged in before the outage; the server read the keys at start
            own_vault.stop()
            run(produce(own_broker.bootstrap, "exceptions", [report("can", "can", "OSError", 1).dumps()]))

            def has(topic: str, needle: bytes) -> None:
                run(consume_until(own_broker.bootstrap, topic, lambda ms: any(needle in (m.value or b"") for m in ms), 30))

            has("createAlarm", b'"exceptions/vault-unavailable"')
            assert senders(server)["can"]["count"] == 1, "judged by the last good list while Vault is away"
            own_vault.start()
            has("deleteAlarm", b'"exceptions/vault-unavailable"')
            assert server.get("/readyz")[0] == 200
        finally:
            server.stop()


def start_supervised(broker: EmbeddedBroker, vault: EmbeddedVault, run_dir: Path, restarts: list[int]) -> ServiceProcess:
    """Start the server as the process manager does: a crash (any code but 0 and 3) is restarted."""
    while True:
        process = ServiceProcess("exceptions", broker.url, run_dir, vault=vault).start()
        try:
            process.wait_ready(60)
            return process
        except RuntimeError:
            restarts.append(process.wait(5))
            if len(restarts) > 3:
                raise


def test_kill_9_while_reports_stream_in_counts_exactly(own_broker: EmbeddedBroker, vault: EmbeddedVault, run_dir: Path) -> None:
    """800 reports from two services; the server is killed -9 while they stream in, and restarted with its data."""
    per_service, chunk = 400, 50
    sent = {name: [report(name, name, f"Error{n % 7}", n) for n in range(per_service)] for name in ("can", "i2c")}
    server = start_server(own_broker, vault, run_dir)
    killed_at: list[int] = []

    async def load() -> None:
        for start in range(0, per_service, chunk):
            await asyncio.gather(*(produce(own_broker.bootstrap, "exceptions", [r.dumps() for r in reports[start:start + chunk]],
                                           key=name.encode()) for name, reports in sent.items()))
            if not killed_at and start >= per_service // 2:
                killed_at.append(server.get("/exceptions/count")[1]["total"])
                server.kill()  # kill -9 while reports are still arriving
            await asyncio.sleep(0.1)

    run(load())
    assert server.wait(10) == -9
    restarts: list[int] = []
    restarted = start_supervised(own_broker, vault, run_dir, restarts)
    crashed_later = 0
    try:
        want = {name: per_service for name in sent}

        def counts() -> dict[str, int]:
            nonlocal restarted, crashed_later
            if restarted.proc is not None and restarted.proc.poll() is not None:
                crashed_later += 1
                restarts.append(restarted.proc.returncode)
                restarted = start_supervised(own_broker, vault, run_dir, restarts)
            return {key: s["count"] for key, s in senders(restarted).items() if key in want}

        final: dict[str, int] = {}
        try:
            wait_for(lambda: final.update(counts()) or final == want, 90, 0.5, "counts exact after kill -9")
            time.sleep(2.0)  # nothing counted twice arrives late
            final = counts()
        finally:
            print(f"\nkilled -9 at {killed_at} counted; restarts after crashes: {restarts}; want {want}, got {final}")
        assert final == want
        for name, reports in sent.items():
            stats = senders(restarted)[name]
            assert stats["by_type"] == {f"Error{k}": sum(1 for n in range(per_service) if n % 7 == k) for k in range(7)}
            kept = entries(restarted, name)
            assert [e["report_id"] for e in kept] == [r.report_id for r in reversed(reports[-50:])]
    finally:
        restarted.stop()


# -- the forwarding handler on its own (no broker: its bounds and its guard against recursion) --


def _failing(n: int) -> BaseException:
    try:
        raise ValueError(f"failure {n} " + "x" * 5000)
    except ValueError as exc:
        return exc


def test_handler_is_bounded_truncates_and_counts_what_it_drops(caplog: pytest.LogCaptureFixture) -> None:
    from streams.exception_reports import DROPPED, MAX_MESSAGE_CHARS, MAX_STACK_CHARS, ExceptionForwarder

    name = f"bounded-{uuid.uuid4().hex[:6]}"
    forwarder = ExceptionForwarder(name, cap=3)
    logger = logging.getLogger(f"tests.{name}")
    logger.addHandler(forwarder)
    try:
        for n in range(5):
            logger.error("step %d failed", n, exc_info=_failing(n))
        logger.error("no exception here")  # an error without an exception is not a report
    finally:
        logger.removeHandler(forwarder)
    assert forwarder.pending == 3
    assert DROPPED.labels(name, "queue-full")._value.get() == 2
    assert any("exception report dropped (queue-full)" in r.getMessage() for r in caplog.records)
    sent: list[ExceptionReport] = []

    async def send(topic: str, key: bytes, value: bytes) -> None:
        sent.append(ExceptionReport.loads(value))

    run(forwarder.send_queued(send))
    assert [r.message[:9] for r in sent] == ["failure 0", "failure 1", "failure 2"]
    assert all(len(r.message) <= MAX_MESSAGE_CHARS and len(r.traceback) <= MAX_STACK_CHARS for r in sent)
    assert "characters cut" in sent[0].message and sent[0].traceback.startswith(f"ERROR tests.{name}: step 0 failed")
    assert sent[0].exc_type == "ValueError" and sent[0].service == name and sent[0].identity == name


def test_a_failing_send_is_counted_and_never_forwarded_again() -> None:
    from streams.exception_reports import DROPPED, ExceptionForwarder

    name = f"recursion-{uuid.uuid4().hex[:6]}"
    root = logging.getLogger()
    # One forwarder per process, as in a service: one left by an in-process service module of
    # another test would take the reports first (an exception is reported once per process).
    others = [h for h in root.handlers if isinstance(h, ExceptionForwarder)]
    for other in others:
        root.removeHandler(other)
    forwarder = ExceptionForwarder(name)
    forwarder.attach()
    attempts = 0

    async def send(topic: str, key: bytes, value: bytes) -> None:
        nonlocal attempts
        attempts += 1
        logging.getLogger("some.client").error("send failed", exc_info=_failing(attempts))  # logged while sending
        raise ConnectionError("broker away")

    async def scenario() -> None:
        runner = asyncio.ensure_future(forwarder.run(send))
        await asyncio.sleep(0.05)
        logging.getLogger("tests.recursion").error("boom", exc_info=_failing(0))
        asyncio.get_running_loop().call_soon(lambda: 1 / 0)  # reaches the loop's exception handler
        await asyncio.sleep(0.3)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    try:
        run(scenario())
    finally:
        root.removeHandler(forwarder)
        for other in others:
            root.addHandler(other)
        threading.excepthook = threading.__excepthook__
    assert attempts == 2, "the logged error and the failing callback; nothing logged while sending came back"
    assert forwarder.pending == 0
    assert DROPPED.labels(name, "send-failed: ConnectionError")._value.get() == 2
