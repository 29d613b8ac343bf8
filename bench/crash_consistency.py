"""Crash consistency of the stateful services: kill -9 at random points, and one broker wipe.

For each stateful service — BankManager (``bank``), AlarmsServer (``alarms``) and
DisasterDetector (``disaster``) — randomized runs, each on an embedded broker of its own
(the Vault AlarmsServer needs is shared by the whole bench, as the test session shares
one). A run feeds input whose effects the pure rules count (at least ``--effects``),
kills the service with SIGKILL at 3 to 6 random points, restarts it on the same data
directory each time, and compares what the receivers hold with what the pure rules expect:

* ``bank`` — three water sensors toggling conditions (the input of the bank's kill -9
  test, timestamped an hour back with staleness out of reach); the receiver is
  AlarmsServer, running throughout as the observer; expected is the history
  :class:`streams.bank_rules.Bank` → :class:`streams.alarm_book.AlarmBook` gives
  (occurrence → active, cleared_at). Effects: the bank's raises and clears.
* ``alarms`` — raises and clears of a few hundred alarm ids on ``createAlarm`` /
  ``deleteAlarm``; the receiver is the service's own ``/alarms/history``; expected is
  :class:`AlarmBook` fed the same records. Effects: occurrences opened plus closed.
  After a kill the worker is restarted at once and the input keeps arriving while it
  recovers.
* ``disaster`` — heating jobs on ``heatingJobState`` (the valve closed at the start: one
  ``relayState`` readback and one ``I2CHeating`` command), each followed by a ramp of
  the three water sensors on ``sensorData`` that the rules call over-limit,
  too-fast-rise, rise-while-closed and sensor-disagreement in that job's episode; expected are the detections of
  :class:`streams.disaster_rules.DisasterWatch` fed the same records. Receivers: the
  ``DisasterDetected`` topic (and ``/disaster``'s detections, reported apart).
  Without AlarmsServer. A detection that raises FATAL halts the detector (its own
  platform watch reads FATAL alarms on ``createAlarm``) and it exits with the stay-down
  code, one effect per process; so the run publishes an operator release on
  ``platformLatch`` *after* every record time (the input is timestamped hours back):
  each detection is then "covered by the reset" — reported on ``DisasterDetected`` and
  stored exactly as otherwise, without the FATAL alarm. ``sensorData`` and
  ``heatingJobState`` are separate topics the agent reads as one stream in delivery
  order, so the feed is paced: a job's readings are sent once ``/disaster`` shows the
  job, the next job once it shows the readings (a wait that times out is counted as a
  ``stall`` and the feed goes on).

Counts: ``lost`` = expected but absent; ``doubled`` = an id present more than once
(each extra copy) or present but not expected; ``wrong`` = present with a different
state. Examples are printed.

One broker wipe per service (in its first run, after the comparison): the broker is
killed (SIGKILL), the service too (a pod would be restarted with its volume), a new
empty broker starts on the same port (topics created, as ``heater up``'s broker does),
the service restarts on the same data directory, and new input is fed every 0.5 s:
``broker_wipe_recovered_s`` = new broker up → the service's view shows new input
decided (bank: a new reading in ``/bank``; alarms: a new alarm in the history;
disaster: a new reading in ``/disaster``). Not recovered within ``--wipe-timeout-s``
gives ``null`` (and the top-level value is ``null`` too).

Prints progress, then ONE JSON line. Exit code 0 whatever was lost (a measurement);
1 only when no run completed. Bounded: ``--max-s`` stops starting new runs (runs go
round-robin over the services, so a short budget still covers each), every wait has a
deadline. Run directories (service logs in ``*/logs``) are kept and printed.

Run: ``python bench/crash_consistency.py [--runs 10] [--services bank,alarms,disaster]
[--seed S] [--effects 1000] [--max-s 1500] [--wipe-timeout-s 120] [--run-dir DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from heater.probes import http_json  # noqa: E402
from heater.runtime.broker import EmbeddedBroker  # noqa: E402
from heater.runtime.processes import StartupTimeout  # noqa: E402
from heater.runtime.services import ServiceProcess  # noqa: E402
from heater.runtime.vault import EmbeddedVault  # noqa: E402
from streams.vault import issue_api_token  # noqa: E402
from streams.alarm_book import AlarmBook  # noqa: E402
from streams.bank_rules import Bank, BankConfig, Effect  # noqa: E402
from streams.disaster_rules import Detection, DisasterWatch, RuleLimits  # noqa: E402
from streams.heater_config import WATER_SENSORS, HeaterLimits  # noqa: E402
from streams.records import (  # noqa: E402
    Alarm, AlarmClear, HeatingJobState, PlatformLatch, RelayAction, RelayCommand, RelayState, SensorReading, alarm_id_for,
    occurrence_key,
)

SERVICES = ("bank", "alarms", "disaster")
#: What the operator reset released in the disaster scenario covers: all of its input.
COVERS_ALL = {"sensorData:0": 10**12}
#: Staleness is judged on wall time; the bank's input is an hour old, so the limit is moved out of reach.
NO_STALENESS = {"HEATER_LIMIT_STALE_AFTER_S": "1000000"}
READY_TIMEOUT_S = 90.0
KILL_WAIT_S = 20.0
CATCH_UP_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 60.0
PACE_TIMEOUT_S = 30.0
WIPE_FEED_EVERY_S = 0.5
BANK_CHUNK = 200
ALARM_CHUNK = 500
#: Record time between two heating jobs: more than a window keeps (history_s), so jobs do not mix.
JOB_SPACING_S = 10.0
EXAMPLES = 5

T = TypeVar("T")


def progress(text: str) -> None:
    print(f"[crash-consistency {time.strftime('%H:%M:%S')}] {text}", flush=True)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll until ``predicate()`` is truthy; its value, or TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


#: The bench's viewer token, from the one Vault every service of the bench verifies tokens with.
TOKEN: list[str] = []


def view(url: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """A JSON view, read as the bench's viewer; None while nothing answers 200 (a restarting or loaded service)."""
    try:
        status, body = http_json(url, timeout=timeout, token=TOKEN[0] if TOKEN else None)
    except (OSError, ValueError):
        return None
    return body if status == 200 else None


# -- processes ------------------------------------------------------------------------


class Service:
    """One service under ``ServiceProcess``, restartable on the same data directory."""

    def __init__(self, name: str, broker_url: str, run_dir: Path, extra_env: Mapping[str, str] | None = None,
                 vault: EmbeddedVault | None = None) -> None:
        self.name = name
        self.broker_url = broker_url
        self.run_dir = run_dir
        self.extra_env = dict(extra_env or {})
        self.vault = vault
        self.proc: ServiceProcess | None = None
        self.kills: list[int] = []  # exit codes of the kills

    def start(self) -> "Service":
        self.proc = ServiceProcess(self.name, self.broker_url, self.run_dir, self.extra_env, vault=self.vault).start()
        return self

    @property
    def url(self) -> str:
        assert self.proc is not None
        return self.proc.url

    def ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        assert self.proc is not None
        return self.proc.wait_ready(timeout)

    def exited(self) -> int | None:
        return None if self.proc is None or self.proc.proc is None else self.proc.proc.poll()

    def kill9(self, record: bool = True) -> int | None:
        if self.proc is None or self.proc.proc is None:
            return None
        self.proc.kill(signal.SIGKILL)
        rc = self.proc.wait(KILL_WAIT_S)
        if record:
            self.kills.append(rc)
        return rc

    def restart(self) -> "Service":
        """kill -9, then a new process on the same data directory (not waited for)."""
        self.kill9()
        return self.start()

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.stop()

    def tail(self, lines: int = 15) -> str:
        if self.proc is None:
            return ""
        with contextlib.suppress(OSError):
            return self.proc.tail(lines)
        return ""


def start_broker(run_dir: Path, port: int | None = None, attempts: int = 5) -> EmbeddedBroker:
    """An embedded broker (on ``port`` when given: a replaced broker may find it still closing)."""
    for attempt in range(1, attempts + 1):
        broker = EmbeddedBroker(run_dir, port=port)
        try:
            return broker.start(timeout=30.0)
        except (StartupTimeout, OSError) as exc:
            broker.stop()
            if attempt == attempts:
                raise
            progress(f"broker start on port {broker.port} failed ({str(exc).splitlines()[0]}); again in 1 s")
            time.sleep(1.0)
    raise AssertionError("unreachable")


def kill_broker(broker: EmbeddedBroker) -> None:
    broker.process.kill(signal.SIGKILL)
    if broker.process.proc is not None:
        broker.process.proc.wait(KILL_WAIT_S)


# -- Kafka I/O ------------------------------------------------------------------------


class Wire:
    """The bench's producer (and topic reader) on a private event loop."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.loop = asyncio.new_event_loop()
        self.producer: AIOKafkaProducer = self.loop.run_until_complete(self._start())

    async def _start(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=2, request_timeout_ms=15_000)
        await producer.start()
        return producer

    def send(self, batches: Mapping[str, Iterable[tuple[bytes | None, bytes]]]) -> None:
        """Produce ``topic → [(key, value)]`` in order per topic; returns once the broker has every one."""

        async def go() -> None:
            futures = [await self.producer.send(topic, value, key=key)
                       for topic, items in batches.items() for key, value in items]
            await asyncio.gather(*futures)  # raises if the broker refused any: the expectation must hold what was sent

        self.loop.run_until_complete(go())

    def read_all(self, topic: str, idle_s: float = 1.5, timeout: float = 60.0) -> list[Any]:
        """Every message of ``topic`` from its start, until none came for ``idle_s``."""

        async def go() -> list[Any]:
            consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                                        enable_auto_commit=False, fetch_max_wait_ms=100)
            await consumer.start()
            messages: list[Any] = []
            try:
                deadline = time.monotonic() + timeout
                last = time.monotonic()
                while time.monotonic() - last < idle_s and time.monotonic() < deadline:
                    for records in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
                        if records:
                            messages.extend(records)
                            last = time.monotonic()
                return messages
            finally:
                await consumer.stop()

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(asyncio.wait_for(self.producer.stop(), 10))
        self.loop.close()


# -- comparison -----------------------------------------------------------------------


def compare(expected: Mapping[str, Any], observed: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """lost / doubled / wrong of ``observed`` (id, value) pairs against ``expected`` id → value."""
    seen: dict[str, list[Any]] = {}
    for key, value in observed:
        seen.setdefault(key, []).append(value)
    lost = sorted(k for k in expected if k not in seen)
    repeated = sorted(k for k, vs in seen.items() if k in expected and len(vs) > 1)
    unexpected = sorted(k for k in seen if k not in expected)
    wrong = sorted(k for k, vs in seen.items() if k in expected and any(v != expected[k] for v in vs))
    doubled = sum(len(seen[k]) - 1 for k in repeated) + sum(len(seen[k]) for k in unexpected)
    return {
        "lost": len(lost),
        "doubled": doubled,
        "wrong": len(wrong),
        "examples": {
            "lost": [f"{k}: expected {expected[k]!r}, absent" for k in lost[:EXAMPLES]],
            "doubled": [f"{k}: {len(seen[k])} times: {seen[k][:2]!r}" for k in repeated[:EXAMPLES]]
            + [f"{k}: not expected, got {seen[k][:2]!r}" for k in unexpected[:EXAMPLES]],
            "wrong": [f"{k}: expected {expected[k]!r}, got {seen[k][:2]!r}" for k in wrong[:EXAMPLES]],
        },
    }


def print_examples(label: str, result: Mapping[str, Any]) -> None:
    for kind in ("lost", "doubled", "wrong"):
        for line in result.get("examples", {}).get(kind, []):
            progress(f"   {label} {kind}: {line}")


def alarm_history(url: str, source: str) -> list[dict[str, Any]] | None:
    """AlarmsServer's history of one source, every page; None while it does not answer."""
    entries: list[dict[str, Any]] = []
    while True:
        body = view(f"{url}/alarms/history?source={source}&limit=1000&offset={len(entries)}")
        if body is None:
            return None
        entries.extend(body["alarms"])
        if len(entries) >= body["total"] or not body["alarms"]:
            return entries


def occurrences(entries: list[dict[str, Any]]) -> list[tuple[str, tuple[bool, float | None]]]:
    return [(e["occurrence_id"], (e["active"], e["cleared_at"])) for e in entries]


def settle_history(url: str, source: str, expected: Mapping[str, Any], timeout: float) -> list[dict[str, Any]]:
    """Wait until the history equals ``expected`` (or the deadline); the last history read."""
    last: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        entries = alarm_history(url, source)
        if entries is not None:
            last = entries
            if dict(occurrences(entries)) == expected and len(entries) == len(expected):
                return last
        if time.monotonic() > deadline:
            return last
        time.sleep(1.0)


# -- pure expectations ----------------------------------------------------------------


def reading(sensor: str, value: float, at: float, sequence: int = 0) -> SensorReading:
    return SensorReading(sensor=sensor, kind="temperature", value=value, unit="C", received_at=at, sequence=sequence)


def toggling_input(cycles: int, seed: int, t0: float) -> list[SensorReading]:
    """Three water sensors crossing WARNING up and down, with noise inside the hysteresis band and an
    occasional implausible spike; one step every 50 ms of received_at (the bank's kill -9 test input)."""
    rng = random.Random(seed)
    profile = [61.0, 59.2, 57.2, 58.6]
    readings: list[SensorReading] = []
    step = 0
    for cycle in range(cycles):
        for base in profile:
            at = t0 + step * 0.05
            for i, sensor in enumerate(WATER_SENSORS):
                value = base + rng.uniform(-0.3, 0.3)
                if sensor == "water.1" and cycle % 25 == 7 and base == 57.2:
                    value += 20.0  # a glitch: implausible, raised and cleared, never an over-temperature
                readings.append(reading(sensor, round(value, 2), at + i * 0.001, len(readings)))
            step += 1
    return readings


def bank_history(effects: Iterable[Effect]) -> dict[str, tuple[bool, float | None]]:
    """AlarmsServer's history (occurrence → active, cleared_at) for the bank's effects."""
    book = AlarmBook({}, {}, {})
    for e in effects:
        if e.kind == "raise":
            book.apply(Alarm(alarm_id=e.alarm_id, source="bank", code=e.code, severity=e.severity,
                             message=e.message, raised_at=e.at, details=dict(e.details)))
        else:
            book.apply(AlarmClear(alarm_id=e.alarm_id, cleared_by="bank", cleared_at=e.at, reason=e.message))
    return {occ: (entry.active, entry.cleared_at) for occ, entry in book.history.items()}


def bank_input(wanted: int, seed: int, t0: float) -> tuple[list[SensorReading], list[Effect]]:
    config = BankConfig(limits=HeaterLimits.from_env({**os.environ, **NO_STALENESS}))
    cycles = max(8, math.ceil(wanted / 5.5))
    while True:
        readings = toggling_input(cycles, seed, t0)
        effects = Bank(config).feed(readings)
        if len(effects) >= wanted:
            return readings, effects
        cycles = math.ceil(cycles * max(1.1, wanted / max(1, len(effects))))


def alarm_effects(book: AlarmBook) -> int:
    """Occurrences opened plus occurrences closed."""
    return sum(1 + (not entry.active) for entry in book.history.values())


def alarms_input(wanted: int, seed: int, source: str, t0: float) -> tuple[list[Alarm | AlarmClear], AlarmBook]:
    rng = random.Random(seed)
    codes = rng.randrange(150, 500)
    events: list[Alarm | AlarmClear] = []
    book = AlarmBook({}, {}, {})
    while alarm_effects(book) < wanted:
        for _ in range(ALARM_CHUNK):
            i = len(events)
            code = f"c{rng.randrange(codes)}"
            at = t0 + i * 0.001
            if rng.random() < 0.55:
                event: Alarm | AlarmClear = Alarm(alarm_id=f"{source}/{code}", source=source, code=code, severity="WARNING",
                                                  message=f"{code} at {at}", raised_at=at)
            else:
                event = AlarmClear(alarm_id=f"{source}/{code}", cleared_by="bench", cleared_at=at)
            events.append(event)
            book.apply(event)
    return events, book


class DisasterScenario:
    """Heating jobs, each with a ramp the rules call a disaster (up to four rules), and what they detect."""

    def __init__(self, wanted: int, seed: int, tag: str, now: float, limits: RuleLimits) -> None:
        self.limits = limits
        self.now = now
        jobs = max(2, math.ceil(wanted / 4))
        while True:
            self._build(jobs, seed, tag)
            if len(self.detections) >= wanted:
                return
            jobs = math.ceil(jobs * wanted / max(1, len(self.detections))) + 1

    def _build(self, jobs: int, seed: int, tag: str) -> None:
        rng = random.Random(seed)
        #: Record times end well before the release, leaving room for the broker-wipe input.
        self.t0 = self.now - jobs * JOB_SPACING_S - 900.0
        self.relay = RelayState(power_on=True, valve_open=False, spark_on=False, trip_latched=False, watchdog_expired=False,
                                read_at=self.t0 - 30.0)
        self.command = RelayCommand(command_id=f"{tag}-close", action=RelayAction.VALVE, on=False, issued_by="bench",
                                    issued_at=self.t0 - 29.0)
        watch = DisasterWatch(self.limits)
        watch.on_readback(False, self.relay.read_at)
        watch.on_valve_command(False, self.command.issued_at, self.command.lease_s)
        self.jobs: list[tuple[HeatingJobState, list[SensorReading]]] = []
        self.detections: list[Detection] = []
        for j in range(jobs):
            start = self.t0 + j * JOB_SPACING_S
            job = HeatingJobState(job_id=f"{tag}-{j}", state="heating", target_c=50.0, at=start)
            watch.on_job_state(job.job_id, job.state, job.at)
            rate, base, gap = rng.uniform(7.0, 12.0), rng.uniform(81.0, 85.0), rng.uniform(3.5, 6.0)
            readings = []
            for k in range(rng.randint(16, 22)):
                at = start + 0.5 + k / 10
                for sensor in WATER_SENSORS:
                    value = base + rate * k / 10 - (gap if sensor == "water.1" else 0.0) + rng.uniform(-0.2, 0.2)
                    readings.append(reading(sensor, round(value, 1), at, k))
                    self.detections += watch.on_reading(sensor, readings[-1].value, at, lambda _d: COVERS_ALL,
                                                        ("sensorData:0", 0)).detections
            self.jobs.append((job, readings))
        self.end = self.t0 + jobs * JOB_SPACING_S

    def expected(self) -> dict[str, tuple[Any, ...]]:
        return {d.disaster_id: (d.rule, round(d.value, 3), d.limit, d.at, d.message) for d in self.detections}


# -- the bench ------------------------------------------------------------------------


class Scope:
    """What one run started, ended in an order that does not wait on the dead: services (SIGKILL,
    the run is measured), the bench's Kafka clients, then the brokers."""

    def __init__(self) -> None:
        self.services: list[Service] = []
        self.wires: list[Wire] = []
        self.brokers: list[EmbeddedBroker] = []

    def close_wires(self) -> None:
        for wire in self.wires:
            wire.close()
        self.wires.clear()

    def close(self) -> None:
        for svc in self.services:
            with contextlib.suppress(Exception):
                svc.kill9(record=False)
        self.close_wires()
        for broker in self.brokers:
            with contextlib.suppress(Exception):
                broker.stop()


class Bench:
    def __init__(self, root: Path, effects: int, wipe_timeout_s: float) -> None:
        self.root = root
        self.effects = effects
        self.wipe_timeout_s = wipe_timeout_s
        self.vault: EmbeddedVault | None = None
        self.results: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def shared_vault(self) -> EmbeddedVault:
        """Every service's Vault: AlarmsServer's signing key, and the keys all verify API tokens with."""
        if self.vault is None:
            self.vault = EmbeddedVault(self.root / "vault").start()
            TOKEN[:] = [issue_api_token(self.vault.admin(), "bench", "viewer")]
        return self.vault

    def close(self) -> None:
        if self.vault is not None:
            self.vault.stop()

    def run(self, service: str, run_no: int, seed: int, wipe: bool) -> dict[str, Any]:
        run_dir = self.root / f"{service}-{run_no}"
        started = time.monotonic()
        result: dict[str, Any] = {"service": service, "run": run_no, "seed": seed, "run_dir": str(run_dir)}
        scope = Scope()
        try:
            runner = {"bank": self.run_bank, "alarms": self.run_alarms, "disaster": self.run_disaster}[service]
            result.update(runner(run_dir, seed, wipe, scope))
        finally:
            scope.close()
        result["elapsed_s"] = round(time.monotonic() - started, 1)
        return result

    # -- helpers shared by the three runs ----------------------------------------------

    def broker(self, run_dir: Path, scope: Scope, port: int | None = None, name: str = "broker") -> EmbeddedBroker:
        broker = start_broker(run_dir / name, port)
        scope.brokers.append(broker)
        return broker

    def service(self, name: str, broker: EmbeddedBroker, run_dir: Path, scope: Scope,
                env: Mapping[str, str] | None = None) -> Service:
        svc = Service(name, broker.url, run_dir, env, vault=self.shared_vault())
        scope.services.append(svc)
        svc.start()
        svc.ready()
        return svc

    def wire(self, broker: EmbeddedBroker, scope: Scope) -> Wire:
        wire = Wire(broker.bootstrap)
        scope.wires.append(wire)
        return wire

    def kill_plan(self, rng: random.Random, points: int) -> set[int]:
        """3 to 6 distinct kill points among ``points`` (as many as there are, if fewer)."""
        return set(rng.sample(range(points), min(points, rng.randint(3, 6))))

    def broker_wipe(
        self, broker: EmbeddedBroker, svc: Service, run_dir: Path, scope: Scope,
        prepare: Callable[[Wire], None], feed: Callable[[Wire, int], None], decided: Callable[[], bool],
    ) -> tuple[float | None, dict[str, Any], EmbeddedBroker, Wire]:
        """Broker and service SIGKILLed, a new empty broker on the same port, the service restarted
        on its data directory, new input fed: seconds from the new broker up to the input decided."""
        progress(f"   broker wipe: SIGKILL broker (port {broker.port}) and {svc.name}")
        scope.close_wires()  # clients of the old broker
        kill_broker(broker)
        svc.kill9()
        new = self.broker(run_dir, scope, port=broker.port, name="broker-after-wipe")
        up = time.monotonic()
        wire = self.wire(new, scope)
        prepare(wire)
        svc.start()
        detail: dict[str, Any] = {"service_exits": []}
        fed = 0
        next_feed = 0.0
        recovered: float | None = None
        while time.monotonic() - up < self.wipe_timeout_s:
            if time.monotonic() >= next_feed:
                feed(wire, fed)
                fed += 1
                next_feed = time.monotonic() + WIPE_FEED_EVERY_S
            if decided():
                recovered = time.monotonic() - up
                break
            rc = svc.exited()
            if rc is not None:  # a pod would be restarted: so is the process
                detail["service_exits"].append(rc)
                progress(f"   broker wipe: {svc.name} exited with {rc} after {time.monotonic() - up:.1f} s; restarting it")
                progress("      " + svc.tail(8).replace("\n", "\n      "))
                svc.start()
            time.sleep(0.1)
        detail["fed"] = fed
        detail["took_s"] = round(time.monotonic() - up, 1)
        if recovered is None:
            status = view(svc.url + "/status") if svc.exited() is None else None
            detail["status_after_timeout"] = status
            progress(f"   broker wipe: {svc.name} NOT recovered within {self.wipe_timeout_s:.0f} s "
                     f"(status {status}); log tail ({svc.proc.log_path if svc.proc else '?'}):")
            progress("      " + svc.tail(20).replace("\n", "\n      "))
        else:
            progress(f"   broker wipe: {svc.name} decides new input {recovered:.2f} s after the new broker was up")
        return recovered, detail, new, wire

    # -- bank -------------------------------------------------------------------------

    def run_bank(self, run_dir: Path, seed: int, wipe: bool, scope: Scope) -> dict[str, Any]:
        rng = random.Random(seed)
        readings, effects = bank_input(self.effects, seed, time.time() - 3600)
        expected = bank_history(effects)
        broker = self.broker(run_dir, scope)
        alarms = self.service("alarms", broker, run_dir / "alarms", scope)
        bank = self.service("bank", broker, run_dir / "bank", scope, NO_STALENESS)
        wire = self.wire(broker, scope)
        progress(f"   bank: {len(readings)} readings, {len(effects)} effects, {len(expected)} occurrences expected")

        def processed_through() -> float:
            body = view(bank.url + "/bank")
            return max((s["received_at"] for s in body.get("sensors", {}).values()), default=0.0) if body else 0.0

        size = min(BANK_CHUNK, math.ceil(len(readings) / 8))  # at least 8 chunks: room for the kills
        chunks = [readings[i : i + size] for i in range(0, len(readings), size)]
        kill_after = self.kill_plan(rng, len(chunks) - 1)
        kills: list[str] = []
        for index, chunk in enumerate(chunks):
            wire.send({"sensorData": [(None, r.dumps()) for r in chunk]})
            if index in kill_after:
                bank.ready()  # the previous restart is up: this kill hits a working bank
                time.sleep(rng.uniform(0.05, 0.6))
                through = processed_through()
                bank.restart()
                kills.append(f"after chunk {index} ({sum(1 for r in readings if r.received_at <= through)} readings applied)")
        last = readings[-1].received_at
        caught_up = True
        try:
            bank.ready()
            wait_for(lambda: processed_through() >= last, CATCH_UP_TIMEOUT_S, "bank caught up", 0.5)
        except (TimeoutError, RuntimeError) as exc:
            caught_up = False
            progress(f"   bank: {exc}")
        entries = settle_history(alarms.url, "bank", expected, SETTLE_TIMEOUT_S)
        result = compare(expected, occurrences(entries))
        body = view(bank.url + "/bank") or {}
        result.update({"effects": len(effects), "kills": len(kills), "kill_points": kills, "caught_up": caught_up,
                       "kill_exit_codes": list(bank.kills), "pending_after": len(body.get("pending", []))})
        progress(f"   bank: kills {kills}")
        if wipe:
            alarms.stop()  # the observer is done; the bank does not need it
            t_new = time.time()
            sent = [t_new]

            def feed(wire: Wire, i: int) -> None:
                at = t_new + i * 0.05
                wire.send({"sensorData": [(None, reading(WATER_SENSORS[i % 3], 58.0, at, 100_000 + i).dumps())]})

            recovered, detail, _, _ = self.broker_wipe(
                broker, bank, run_dir, scope, lambda w: None, feed, lambda: processed_through() >= sent[0])
            result["broker_wipe_recovered_s"] = None if recovered is None else round(recovered, 2)
            result["broker_wipe"] = detail
        return result

    # -- alarms -----------------------------------------------------------------------

    def run_alarms(self, run_dir: Path, seed: int, wipe: bool, scope: Scope) -> dict[str, Any]:
        rng = random.Random(seed)
        source = f"crash{uuid.uuid4().hex[:6]}"
        events, book = alarms_input(self.effects, seed, source, time.time())
        expected = {occ: (e.active, e.cleared_at) for occ, e in book.history.items()}
        effects = alarm_effects(book)
        broker = self.broker(run_dir, scope)
        alarms = self.service("alarms", broker, run_dir / "alarms", scope)
        wire = self.wire(broker, scope)
        progress(f"   alarms: {len(events)} raises/clears, {effects} effects, {len(expected)} occurrences expected")
        size = min(ALARM_CHUNK, math.ceil(len(events) / 8))  # at least 8 chunks: room for the kills
        chunks = [events[i : i + size] for i in range(0, len(events), size)]
        kill_after = self.kill_plan(rng, len(chunks) - 1)
        kills: list[str] = []
        for index, chunk in enumerate(chunks):
            wire.send({
                "createAlarm": [(e.alarm_id.encode(), e.dumps()) for e in chunk if isinstance(e, Alarm)],
                "deleteAlarm": [(e.alarm_id.encode(), e.dumps()) for e in chunk if isinstance(e, AlarmClear)],
            })
            if index in kill_after:
                alarms.ready()  # the previous restart is up: this kill hits a working service
                time.sleep(rng.uniform(0.0, 0.4))
                alarms.restart()  # input keeps arriving while it recovers
                kills.append(f"after chunk {index}")
        with contextlib.suppress(TimeoutError, RuntimeError):
            alarms.ready()
        entries = settle_history(alarms.url, source, expected, SETTLE_TIMEOUT_S)
        result = compare(expected, occurrences(entries))
        result.update({"effects": effects, "kills": len(kills), "kill_points": kills, "kill_exit_codes": list(alarms.kills)})
        progress(f"   alarms: kills {kills}")
        if wipe:
            wipe_source = f"wipe{uuid.uuid4().hex[:6]}"

            def feed(wire: Wire, i: int) -> None:
                at = time.time()
                alarm = Alarm(alarm_id=f"{wipe_source}/w{i}", source=wipe_source, code=f"w{i}", severity="WARNING",
                              message=f"after the wipe, {i}", raised_at=at)
                wire.send({"createAlarm": [(alarm.alarm_id.encode(), alarm.dumps())]})

            recovered, detail, _, _ = self.broker_wipe(
                broker, alarms, run_dir, scope, lambda w: None, feed, lambda: bool(alarm_history(alarms.url, wipe_source)))
            result["broker_wipe_recovered_s"] = None if recovered is None else round(recovered, 2)
            result["broker_wipe"] = detail
        return result

    # -- disaster ---------------------------------------------------------------------

    def run_disaster(self, run_dir: Path, seed: int, wipe: bool, scope: Scope) -> dict[str, Any]:
        rng = random.Random(seed)
        limits = RuleLimits.from_heater(HeaterLimits.from_env())
        scenario = DisasterScenario(self.effects, seed, f"j{uuid.uuid4().hex[:6]}", time.time() - 60.0, limits)
        expected = scenario.expected()
        # Every detection's FATAL is one an operator reset released, covering all the input: the detector
        # reports each disaster and its FATAL latches nothing (streams.latch).
        release = PlatformLatch(
            latched=False, alarm_id="", reason="bench: an operator reset released every detection", changed_at=time.time(),
            changed_by="bench", reset_id="bench-reset", covered={"bench-reset": COVERS_ALL},
            released={occurrence_key(alarm_id_for("disaster", d.rule, d.episode), d.at): "bench-reset"
                      for d in scenario.detections},
        )
        broker = self.broker(run_dir, scope)
        wire = self.wire(broker, scope)
        wire.send({"platformLatch": [(b"platform", release.dumps())]})
        detector = self.service("disaster", broker, run_dir / "disaster", scope)
        progress(f"   disaster: {len(scenario.jobs)} heating jobs, "
                 f"{sum(len(r) for _, r in scenario.jobs)} readings, {len(expected)} detections expected")
        stalls: list[str] = []

        def body() -> dict[str, Any] | None:
            rc = detector.exited()
            if rc is not None:
                raise RuntimeError(f"disaster exited with {rc}:\n{detector.tail()}")
            return view(detector.url + "/disaster")

        def pace(predicate: Callable[[dict[str, Any]], bool], what: str) -> None:
            try:
                wait_for(lambda: (lambda b: b is not None and predicate(b))(body()), PACE_TIMEOUT_S, what, 0.03)
            except TimeoutError as exc:
                stalls.append(str(exc))
                progress(f"   disaster: STALL {exc}")

        def job_seen(job_id: str) -> Callable[[dict[str, Any]], bool]:
            return lambda b: (b.get("job") or {}).get("job_id") == job_id

        def readings_seen(at: float) -> Callable[[dict[str, Any]], bool]:
            return lambda b: len(b.get("windows", {})) == len(WATER_SENSORS) and all(
                w.get("last_at") is not None and w["last_at"] >= at - 1e-6 for w in b["windows"].values())

        wire.send({"relayState": [(b"pico", scenario.relay.dumps())]})
        wire.send({"I2CHeating": [(b"valve", scenario.command.dumps())]})
        pace(lambda b: (b.get("valve") or {}).get("readback_open") is False and b["valve"].get("command_on") is False,
             "valve reads and is commanded closed")
        points = self.kill_plan(rng, 2 * (len(scenario.jobs) - 2))
        kill_at = {(1 + p // 2, ("job", "readings")[p % 2]) for p in points}
        kills: list[str] = []

        def maybe_kill(index: int, phase: str) -> None:
            if (index, phase) in kill_at:
                detector.ready()  # the previous restart is up: this kill hits a working detector
                time.sleep(rng.choice((0.0, 0.02, 0.05, 0.1, 0.2, 0.4)))  # mostly while it works through the input
                detector.restart()
                kills.append(f"job {index} after its {phase}")

        for index, (job, readings) in enumerate(scenario.jobs):
            wire.send({"heatingJobState": [(b"job", job.dumps())]})
            maybe_kill(index, "job")
            pace(job_seen(job.job_id), f"job {index} state applied")
            wire.send({"sensorData": [(r.sensor.encode(), r.dumps()) for r in readings]})
            maybe_kill(index, "readings")
            pace(readings_seen(readings[-1].received_at), f"job {index} readings applied")
            if index and index % 50 == 0:
                progress(f"   disaster: {index}/{len(scenario.jobs)} jobs fed")
        with contextlib.suppress(TimeoutError, RuntimeError):
            wait_for(lambda: (lambda b: b is not None and len(b.get("detections", [])) >= len(expected))(body()),
                     SETTLE_TIMEOUT_S / 4, "detections settled", 0.5)
        events = [(m.key.decode() if m.key else "", json.loads(m.value)) for m in wire.read_all("DisasterDetected")]
        observed = [(e.get("disaster_id", key),
                     (e.get("rule"), e.get("value"), e.get("limit"), e.get("detected_at"), e.get("message")))
                    for key, e in events]
        result = compare(expected, observed)
        final = body() or {}
        held = [(d["disaster_id"], (d["rule"], d["value"], d["limit"], d["at"], d["message"]))
                for d in final.get("detections", [])]
        in_view = compare(expected, held)
        result.update({
            "effects": len(expected), "kills": len(kills), "kill_points": kills, "kill_exit_codes": list(detector.kills),
            "stalls": len(stalls), "view_lost": in_view["lost"], "view_doubled": in_view["doubled"],
            "view_wrong": in_view["wrong"],
            "view_examples": in_view["examples"], "topic_messages": len(events),
        })
        progress(f"   disaster: kills {kills}; /disaster holds {len(held)} detections "
                 f"(lost {in_view['lost']}, unexpected {in_view['doubled']}, wrong {in_view['wrong']})")
        if wipe:
            after = scenario.end + 20.0

            def prepare(wire: Wire) -> None:
                wire.send({"platformLatch": [(b"platform", release.dumps())]})

            def feed(wire: Wire, i: int) -> None:
                at = after + i / 10
                wire.send({"sensorData": [(s.encode(), reading(s, 50.0, at, 100_000 + i).dumps()) for s in WATER_SENSORS]})

            def decided() -> bool:
                b = view(detector.url + "/disaster", timeout=2.0) if detector.exited() is None else None
                return bool(b) and any((w.get("last_at") or 0.0) >= after - 1e-6 for w in b.get("windows", {}).values())

            recovered, detail, _, new_wire = self.broker_wipe(broker, detector, run_dir, scope, prepare, feed, decided)
            result["broker_wipe_recovered_s"] = None if recovered is None else round(recovered, 2)
            if recovered is not None:
                detail["new_detection_s"] = self.detection_after_wipe(detector, new_wire, after + 30.0)
            result["broker_wipe"] = detail
        return result

    def detection_after_wipe(self, detector: Service, wire: Wire, start: float) -> float | None:
        """A new heating job with an over-limit ramp: seconds until its disaster is on the new DisasterDetected."""
        job = HeatingJobState(job_id=f"wipe{uuid.uuid4().hex[:6]}", state="heating", target_c=50.0, at=start)
        began = time.monotonic()
        wire.send({"heatingJobState": [(b"job", job.dumps())]})
        try:
            wait_for(lambda: ((view(detector.url + "/disaster") or {}).get("job") or {}).get("job_id") == job.job_id,
                     PACE_TIMEOUT_S, "job after the wipe")
            ramp = [reading(s, 95.0, start + 0.5 + k / 10, k) for k in range(5) for s in WATER_SENSORS]
            wire.send({"sensorData": [(r.sensor.encode(), r.dumps()) for r in ramp]})
            wanted = f"over-limit/job-{job.job_id}"
            wait_for(lambda: any(json.loads(m.value).get("disaster_id") == wanted
                                 for m in wire.read_all("DisasterDetected", idle_s=0.3, timeout=3)),
                     PACE_TIMEOUT_S, "a detection after the wipe", 0.2)
        except TimeoutError as exc:
            progress(f"   broker wipe: {exc}")
            return None
        took = time.monotonic() - began
        progress(f"   broker wipe: a new job's disaster reached the new DisasterDetected in {took:.2f} s")
        return round(took, 2)


# -- summary --------------------------------------------------------------------------


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    wipes = [r["broker_wipe_recovered_s"] for r in results if "broker_wipe_recovered_s" in r]
    worst: float | None = None if any(w is None for w in wipes) or not wipes else max(wipes)
    out: dict[str, Any] = {
        "runs": len(results),
        "effects": sum(r["effects"] for r in results),
        "lost": sum(r["lost"] for r in results),
        "doubled": sum(r["doubled"] for r in results),
        "wrong": sum(r["wrong"] for r in results),
        "broker_wipe_recovered_s": worst,
        "broker_wipes": len(wipes),
        "broker_wipes_unrecovered": sum(1 for w in wipes if w is None),
        "kills": sum(r["kills"] for r in results),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per service (default 10)")
    parser.add_argument("--services", default=",".join(SERVICES), help="comma-separated subset of bank,alarms,disaster")
    parser.add_argument("--seed", type=int, default=None, help="seed of the whole bench (default: random, printed)")
    parser.add_argument("--effects", type=int, default=1000, help="at least this many effects per run (default 1000)")
    parser.add_argument("--max-s", type=float, default=1500.0, help="start no new run after this many seconds (default 1500)")
    parser.add_argument("--wipe-timeout-s", type=float, default=120.0, help="wait this long for recovery after the broker wipe")
    parser.add_argument("--no-wipe", action="store_true", help="skip the broker wipe")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="where run directories (logs, data) go (default: a new /tmp dir)")
    args = parser.parse_args(argv)
    services = [s.strip() for s in args.services.split(",") if s.strip()]
    unknown = set(services) - set(SERVICES)
    if unknown:
        parser.error(f"unknown service(s): {', '.join(sorted(unknown))}")
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    master = random.Random(seed)
    if args.run_dir is not None:
        root = args.run_dir.resolve()
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="bench-crash-"))

    def on_term(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the clean-up below run to the end
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    progress(f"seed {seed}; services {services}; {args.runs} run(s) each; >= {args.effects} effects per run; "
             f"budget {args.max_s:.0f} s; run directories under {root}")
    began = time.monotonic()
    bench = Bench(root, args.effects, args.wipe_timeout_s)
    stopped_early = ""
    last_took: dict[str, float] = {}
    plan = [(run_no, service) for run_no in range(1, args.runs + 1) for service in services]
    try:
        for run_no, service in plan:
            run_seed = master.randrange(1_000_000)
            elapsed = time.monotonic() - began
            if elapsed + last_took.get(service, 0.0) > args.max_s:  # a run as long as this service's last would overrun
                stopped_early = (f"budget of {args.max_s:.0f} s: {elapsed:.0f} s used, one {service} run takes "
                                 f"~{last_took.get(service, 0.0):.0f} s; stopped before {service} run {run_no}")
                progress(stopped_early)
                break
            wipe = run_no == 1 and not args.no_wipe
            progress(f"{service} run {run_no}/{args.runs} (seed {run_seed}{', with the broker wipe' if wipe else ''})")
            try:
                result = bench.run(service, run_no, run_seed, wipe)
            except (TimeoutError, RuntimeError, OSError, StartupTimeout) as exc:
                error = f"{service} run {run_no}: {type(exc).__name__}: {exc}"
                bench.errors.append(error.splitlines()[0])
                progress(f"FAILED {error}")
                continue
            bench.results.append(result)
            last_took[service] = result["elapsed_s"] - (result.get("broker_wipe", {}).get("took_s") or 0.0)
            wipe_text = (f", broker wipe recovered in {result['broker_wipe_recovered_s']} s"
                         if "broker_wipe_recovered_s" in result else "")
            progress(f"{service} run {run_no}: effects {result['effects']} lost {result['lost']} doubled {result['doubled']} "
                     f"wrong {result['wrong']} kills {result['kills']}{wipe_text} ({result['elapsed_s']} s)")
            print_examples(service, result)
            if result.get("view_examples"):
                print_examples(f"{service} /disaster", {"examples": result["view_examples"]})
    except KeyboardInterrupt as exc:
        stopped_early = f"interrupted ({exc})"
        progress(f"{stopped_early}; reporting what ran")
    finally:
        bench.close()
    if not bench.results:
        print(json.dumps({"runs": 0, "errors": bench.errors, "stopped_early": stopped_early or None,
                          "elapsed_s": round(time.monotonic() - began, 1)}), flush=True)
        return 1
    summary = summarize(bench.results)
    per_service: dict[str, Any] = {}
    for service in services:
        mine = [r for r in bench.results if r["service"] == service]
        if not mine:
            continue
        entry = summarize(mine)
        if service == "disaster":
            entry.update({k: sum(r[k] for r in mine) for k in ("view_lost", "view_doubled", "view_wrong", "stalls")})
        wiped = next((r for r in mine if "broker_wipe" in r), None)
        if wiped is not None:
            entry["broker_wipe"] = wiped["broker_wipe"]
        entry["examples"] = {kind: [x for r in mine for x in r["examples"][kind]][:3] for kind in ("lost", "doubled", "wrong")}
        entry["runs_detail"] = [{k: r[k] for k in ("run", "seed", "effects", "lost", "doubled", "wrong", "kills", "elapsed_s")}
                                for r in mine]
        per_service[service] = entry
    summary.update({
        "per_service": per_service,
        "seed": seed,
        "errors": bench.errors,
        "stopped_early": stopped_early or None,
        "run_dir": str(root),
        "elapsed_s": round(time.monotonic() - began, 1),
    })
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
