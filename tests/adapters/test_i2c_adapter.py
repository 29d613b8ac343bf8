"""The I2C adapter as a real process, between a real broker and the simulated Pico.

Every assertion about the relays is made at the "hardware": the simulator's
``/state`` and its wall-clock timestamps, not the adapter's own view.  The brokers
are this module's own (the FATAL latch is platform-wide): one for normal operation,
one on which FATAL is raised, and a fresh one standing for a wiped broker.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import hvac
import pytest
from aiokafka import AIOKafkaProducer

from heater import traces
from heater.runtime.broker import EmbeddedBroker
from heater.runtime.vault import EmbeddedVault
from simulator import client
from streams import exitcodes, heartbeats
from streams.codec import decode
from streams.lifecycle import Phase
from streams.operator_reset import issue_reset
from streams.records import Alarm, OperatorReset, RelayCommand, RelayState, SensorFreshness, Severity
from streams.vault import TransitSigner
from tests.simulator.conftest import SimProcess, start_simulator
from tests.support import ServiceProcess, consume_until, metric, metric_sum, post_json, produce, run, wait_for

WINDOW_S = 0.5  # the simulator's default watchdog window
LEASE_S = 1.5
STALE_S = 2.0  # the controller's default freshness bound
DETECTOR_SILENT_S = 3.0  # ... and its bound on DisasterDetector's beats
TICK_S = 0.05


class Adapter(ServiceProcess):
    """``python -m adapters.i2c`` on a free port (the lead wires ``heater worker i2c``)."""

    def __init__(self, broker: EmbeddedBroker, run_dir: Path, bus: str, vault: EmbeddedVault | None = None) -> None:
        super().__init__("i2c", broker.url, run_dir, {"HEATER_I2C_BUS": bus}, vault=vault)

    def start(self) -> "Adapter":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adapters.i2c"], env=self.env,
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def wait_phase(self, phase: str, timeout: float = 15.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            try:
                body = self.get("/status")[1]
            except OSError:
                return None
            return body if body.get("phase") == phase else None

        return wait_for(check, timeout, 0.05, what=f"phase {phase}")


class Feeder:
    """Plays the CAN adapter, DisasterDetector and the heating job: the readings' freshness every 100 ms,
    the detector's beats saying it decided them, lease renewals, commands."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.sensors = True
        self.detector = True
        self.last_beat_at = 0.0
        self.renewing = False
        self.lease_s = LEASE_S
        self.last_reading_at = 0.0
        self.last_renewal_at = 0.0
        self._loop = asyncio.new_event_loop()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._producer: AIOKafkaProducer | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    def __enter__(self) -> "Feeder":
        self._thread.start()
        assert self._ready.wait(10), "feeder producer did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    async def _main(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=1)
        await self._producer.start()
        self._ready.set()
        next_renewal = 0.0
        try:
            while not self._stop.is_set():
                now = time.time()
                if self.sensors:
                    fresh = SensorFreshness(temperature_at=now, flame=True, flame_at=now, sent_at=now)
                    await self._producer.send("sensorFreshness", fresh.dumps(), key=b"can")
                    self.last_reading_at = now
                if self.detector and self.last_reading_at:
                    beat = heartbeats.beat(heartbeats.DETECTOR, Phase.READY, self.last_reading_at, now)
                    await self._producer.send("heartbeats", beat.dumps())
                    self.last_beat_at = now
                if self.renewing and now >= next_renewal:
                    await self._send_command("lease", True, self.lease_s)
                    self.last_renewal_at = now
                    next_renewal = now + 0.5
                await self._producer.flush()
                await asyncio.sleep(0.1)
        finally:
            await self._producer.stop()

    async def _send_command(self, action: str, on: bool, lease_s: float) -> float:
        assert self._producer is not None
        issued_at = time.time()
        command = RelayCommand(
            command_id=uuid.uuid4().hex, action=action, on=on, issued_by="test", issued_at=issued_at, lease_s=lease_s
        )
        await self._producer.send_and_wait("I2CHeating", command.dumps())
        return issued_at

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> float:
        """Produce one message on the already-connected producer; the wall-clock time just before."""
        async def send() -> None:
            assert self._producer is not None
            await self._producer.send_and_wait(topic, value, key=key, headers=headers)

        sent_at = time.time()
        asyncio.run_coroutine_threadsafe(send(), self._loop).result(5)
        return sent_at

    def command(self, action: str, on: bool = True, lease_s: float = 0.0) -> float:
        """Send one command now; the wall-clock time it was issued."""
        return asyncio.run_coroutine_threadsafe(self._send_command(action, on, lease_s), self._loop).result(5)


def relays(sim: SimProcess) -> dict[str, bool]:
    return sim.state()["pico"]["relays"]


def wait_relays(sim: SimProcess, power: bool, valve: bool, spark: bool, timeout: float = 5.0) -> dict[str, Any]:
    want = {"power_on": power, "gas_valve_open": valve, "spark_on": spark}
    return sim.wait_for(lambda s: s["pico"]["relays"] == want, timeout)["pico"]


def consume(bootstrap: str, wanted: Callable[[list[Alarm]], bool], timeout: float = 10.0) -> list[Alarm]:
    return run(_alarms(bootstrap, wanted, timeout))


async def _alarms(bootstrap: str, wanted: Callable[[list[Alarm]], bool], timeout: float) -> list[Alarm]:
    messages = await consume_until(bootstrap, "createAlarm", lambda ms: wanted([decode(m.value, Alarm) for m in ms]), timeout)
    return [decode(m.value, Alarm) for m in messages]


def ignite(feeder: Feeder, sim: SimProcess, lease_s: float = LEASE_S) -> float:
    """Power, valve under a lease, spark, then spark off once the flame is seen: the valve's open time."""
    feeder.command("power")
    wait_relays(sim, True, False, False)
    feeder.lease_s = lease_s
    issued = feeder.command("valve", lease_s=lease_s)
    feeder.renewing = True
    pico = wait_relays(sim, True, True, False)
    feeder.command("spark")
    wait_relays(sim, True, True, True)
    time.sleep(0.3)  # a flame reading arrives every 100 ms
    feeder.command("spark", on=False)
    wait_relays(sim, True, True, False)
    return pico["timestamps"]["valve_opened_at"] - issued


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ops_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path_factory.mktemp("i2c-ops-broker")) as running:
        yield running


@pytest.fixture(scope="module")
def ops_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    sim = start_simulator(tmp_path_factory.mktemp("i2c-ops-sim"))
    yield sim
    sim.terminate()


@pytest.fixture
def adapter(ops_broker: EmbeddedBroker, ops_sim: SimProcess, tmp_path: Path, vault: EmbeddedVault) -> Iterator[Adapter]:
    client.clear(ops_sim.control_port)
    proc = Adapter(ops_broker, tmp_path, ops_sim.i2c_url, vault).start()  # its views verify the session Vault's tokens
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture
def feeder(ops_broker: EmbeddedBroker) -> Iterator[Feeder]:
    with Feeder(ops_broker.bootstrap) as running:
        yield running


# -- normal operation -------------------------------------------------------------------


def test_commands_drive_the_relays_confirmed_by_readback(
    adapter: Adapter, feeder: Feeder, ops_sim: SimProcess, ops_broker: EmbeddedBroker
) -> None:
    latency = ignite(feeder, ops_sim)
    print(f"\nvalve command -> valve open at the Pico: {latency * 1000:.1f} ms")
    assert latency < 0.5
    want = {"power_on": True, "gas_valve_open": True, "spark_on": False}
    view = wait_for(lambda: (lambda v: v if v["readback"]["contacts"] == want else None)(adapter.get("/relays")[1]), 2)
    assert view["lease"]["valve_open"] and view["lease"]["ignition_proven"]
    assert view["last_command"]["action"] in ("spark", "lease")
    states = run(consume_until(
        ops_broker.bootstrap, "relayState",
        lambda ms: any(decode(m.value, RelayState).spark_on for m in ms) and decode(ms[-1].value, RelayState).valve_open,
    ))
    assert all(not decode(m.value, RelayState).trip_latched for m in states)
    time.sleep(2 * LEASE_S)  # renewed leases and fresh data keep the valve open
    assert relays(ops_sim) == {"power_on": True, "gas_valve_open": True, "spark_on": False}
    feeder.command("cutoff")
    wait_relays(ops_sim, False, False, False)
    assert metric(adapter, "heater_i2c_commands_total", action="valve", result="applied") == 1
    assert metric_sum(adapter.probe_url, "heater_i2c_kicks_total") > 10


def test_a_commands_trace_continues_to_its_relay_write(adapter: Adapter, feeder: Feeder, ops_sim: SimProcess) -> None:
    """A heating job's command carries its trace (``traceparent``): the adapter's span and its relay write join it."""
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    command = RelayCommand(command_id=uuid.uuid4().hex, action="power", on=True, issued_by="test", issued_at=time.time())
    feeder.send("I2CHeating", command.dumps(), headers=[("traceparent", f"00-{trace_id}-{parent_id}-01".encode())])
    wait_relays(ops_sim, True, False, False)

    def spans() -> dict[str, dict[str, Any]] | None:
        found = {s["name"]: s for s in traces.read_spans([adapter.run_dir / "traces" / "i2c.jsonl"]) if s["trace_id"] == trace_id}
        return found if {"I2CHeating process", "relay write"} <= set(found) else None

    found = wait_for(spans, 5, 0.1, what="the command's spans in traces/i2c.jsonl")
    handled, write = found["I2CHeating process"], found["relay write"]
    assert handled["parent_id"] == parent_id and handled["service"] == "i2c"
    assert handled["attributes"]["heater.command_id"] == command.command_id
    assert handled["attributes"]["heater.action"] == "power" and handled["attributes"]["heater.result"] == "applied"
    assert write["parent_id"] == handled["span_id"] and write["attributes"]["heater.contacts.power_on"] is True
    assert write["attributes"]["heater.confirmed"] is True
    feeder.command("cutoff")
    wait_relays(ops_sim, False, False, False)


def test_unsafe_sequences_are_refused(adapter: Adapter, feeder: Feeder, ops_sim: SimProcess) -> None:
    feeder.command("spark")
    feeder.command("valve", lease_s=LEASE_S)
    wait_for(lambda: metric(adapter, "heater_i2c_refusals_total", reason="power-cut") == 2, 5, what="power-cut refusals")
    feeder.command("power")
    wait_relays(ops_sim, True, False, False)
    feeder.command("spark")
    feeder.command("lease", lease_s=LEASE_S)
    wait_for(lambda: metric(adapter, "heater_i2c_refusals_total", reason="valve-closed") == 2, 5, what="valve-closed refusals")
    feeder.sensors = False
    time.sleep(STALE_S + 0.2)
    feeder.command("valve", lease_s=LEASE_S)
    wait_for(lambda: metric(adapter, "heater_i2c_refusals_total", reason="stale-data") == 1, 5, what="stale-data refusal")
    assert relays(ops_sim) == {"power_on": True, "gas_valve_open": False, "spark_on": False}
    assert ops_sim.state()["pico"]["i2c"]["rejected"] == 0, "nothing unsafe ever reached the board"


def test_valve_closes_when_the_lease_is_not_renewed(adapter: Adapter, feeder: Feeder, ops_sim: SimProcess) -> None:
    ignite(feeder, ops_sim)
    time.sleep(1.0)
    feeder.renewing = False
    time.sleep(0.05)
    last_renewal = feeder.last_renewal_at
    pico = wait_relays(ops_sim, True, False, False, timeout=LEASE_S + 2)
    closed_after = pico["timestamps"]["valve_closed_at"] - last_renewal
    print(f"\nlast lease renewal -> valve closed at the Pico: {closed_after * 1000:.0f} ms (lease {LEASE_S} s)")
    assert LEASE_S - 0.1 <= closed_after <= LEASE_S + TICK_S + 0.15
    assert pico["relays"]["power_on"], "only the gas closes; the power stays for the next job"


def test_valve_closes_when_sensor_data_go_stale(adapter: Adapter, feeder: Feeder, ops_sim: SimProcess) -> None:
    ignite(feeder, ops_sim, lease_s=5.0)
    feeder.sensors = False
    time.sleep(0.15)
    last_reading = feeder.last_reading_at
    pico = wait_relays(ops_sim, True, False, False, timeout=STALE_S + 2)
    closed_after = pico["timestamps"]["valve_closed_at"] - last_reading
    print(f"\nlast sensor reading -> valve closed at the Pico: {closed_after * 1000:.0f} ms (bound {STALE_S} s)")
    assert STALE_S - 0.1 <= closed_after <= STALE_S + TICK_S + 0.15
    wait_for(lambda: metric(adapter, "heater_i2c_safety_actions_total", reason="stale-data") == 1, 2, what="counted")


def test_valve_closes_when_the_detector_goes_silent(adapter: Adapter, feeder: Feeder, ops_sim: SimProcess) -> None:
    """DESIGN rule 3: a dead DisasterDetector closes the gas, with the lease renewed and data fresh."""
    ignite(feeder, ops_sim, lease_s=5.0)
    feeder.detector = False
    time.sleep(0.15)
    last_decided = feeder.last_beat_at  # a beat says the reading sent just before it was decided
    pico = wait_relays(ops_sim, True, False, False, timeout=DETECTOR_SILENT_S + 2)
    closed_after = pico["timestamps"]["valve_closed_at"] - last_decided
    print(f"\nlast reading the detector decided -> valve closed at the Pico: {closed_after * 1000:.0f} ms (bound {DETECTOR_SILENT_S} s)")
    assert DETECTOR_SILENT_S - 0.2 <= closed_after <= DETECTOR_SILENT_S + TICK_S + 0.3
    wait_for(lambda: metric(adapter, "heater_i2c_safety_actions_total", reason="detector-silent") == 1, 2, what="counted")
    feeder.command("valve", lease_s=LEASE_S)
    wait_for(lambda: metric(adapter, "heater_i2c_refusals_total", reason="detector-silent") == 1, 5, what="reopening refused")
    assert relays(ops_sim)["gas_valve_open"] is False
    feeder.detector = True
    time.sleep(0.3)
    feeder.command("valve", lease_s=LEASE_S)
    wait_relays(ops_sim, True, True, False)


def test_kill_9_leaves_the_hardware_watchdog_to_make_everything_safe(
    adapter: Adapter, feeder: Feeder, ops_sim: SimProcess
) -> None:
    ignite(feeder, ops_sim, lease_s=5.0)
    feeder.command("spark")
    wait_relays(ops_sim, True, True, True)
    killed_at = time.time()
    adapter.kill()
    adapter.wait(5)
    pico = wait_relays(ops_sim, False, False, False, timeout=2 * WINDOW_S + 1)
    safe_after = pico["timestamps"]["safe_at"] - killed_at
    print(f"\nkill -9 -> every relay safe at the Pico: {safe_after * 1000:.0f} ms (window {WINDOW_S * 1000:.0f} ms)")
    assert pico["watchdog"]["expired"] and safe_after <= WINDOW_S + 0.05
    assert ops_sim.proc.poll() is None, "the simulated hardware survives the adapter"


def test_i2c_errors_raise_an_alarm_and_never_leave_unconfirmed_outputs(
    adapter: Adapter, feeder: Feeder, ops_sim: SimProcess, ops_broker: EmbeddedBroker
) -> None:
    ignite(feeder, ops_sim, lease_s=5.0)
    client.inject(ops_sim.control_port, "i2c_nack")
    pico = wait_relays(ops_sim, False, False, False, timeout=2 * WINDOW_S + 1)
    assert pico["watchdog"]["expired"]
    consume(ops_broker.bootstrap, lambda seen: any(a.alarm_id == "i2c/i2c-error" for a in seen))
    client.clear(ops_sim.control_port, "i2c_nack")
    # Which operation met the NACK first decides the path: a kick (the board dropped the
    # outputs: readback mismatch) or a write (unconfirmed: all off). Either way an alarm.
    dropped = {"i2c/readback-mismatch", "i2c/command-unconfirmed"}
    consume(ops_broker.bootstrap, lambda seen: any(a.alarm_id in dropped for a in seen))
    wait_for(lambda: adapter.get("/relays")[1]["desired"]["power_on"] is False, 5, what="controller forced safe")
    time.sleep(0.3)
    state = ops_sim.state()["pico"]
    assert state["relays"] == {"power_on": False, "gas_valve_open": False, "spark_on": False}
    assert not state["watchdog"]["expired"], "faults cleared once the relays were confirmed safe"
    assert metric_sum(adapter.probe_url, "heater_i2c_errors_total") > 0, "the failed transactions are counted"
    feeder.command("power")
    wait_relays(ops_sim, True, False, False)


# -- FATAL, the hardware latch and operator resets ----------------------------------------


@pytest.fixture(scope="module")
def fatal_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path_factory.mktemp("i2c-fatal-broker")) as running:
        yield running


@pytest.fixture(scope="module")
def wiped_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker that has never seen the FATAL: what a wiped or replaced broker looks like."""
    with EmbeddedBroker(tmp_path_factory.mktemp("i2c-wiped-broker")) as running:
        yield running


@pytest.fixture(scope="module")
def latch_sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SimProcess]]:
    """Simulators sharing one run directory (so one NVRAM); the last one is the live one."""
    run_dir = tmp_path_factory.mktemp("i2c-latch-sim")
    sims = [start_simulator(run_dir)]
    yield sims
    for sim in sims:
        if sim.proc.poll() is None:
            sim.terminate()


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One adapter run directory across restarts (it holds the reset ledger)."""
    return tmp_path_factory.mktemp("i2c-latch-adapter")


def fatal(source: str = "disaster") -> Alarm:
    return Alarm(
        alarm_id=f"{source}/overtemp", source=source, code="overtemp", severity=Severity.FATAL,
        message="water over the limit (test)", raised_at=time.time(),
    )


def test_fatal_trips_the_pico_and_the_adapter_stays_down(
    fatal_broker: EmbeddedBroker, latch_sims: list[SimProcess], adapter_dir: Path, vault: EmbeddedVault
) -> None:
    sim = latch_sims[-1]
    adapter = Adapter(fatal_broker, adapter_dir, sim.i2c_url, vault).start()
    adapter.wait_ready()
    with Feeder(fatal_broker.bootstrap) as feeder:
        ignite(feeder, sim, lease_s=5.0)
        alarm = fatal()
        sent_at = feeder.send("createAlarm", alarm.dumps(), key=alarm.alarm_id.encode())
        assert adapter.wait(10) == exitcodes.STAY_DOWN, adapter.tail()
    pico = sim.state()["pico"]
    assert pico["trip_latched"] and pico["relays"] == {"power_on": False, "gas_valve_open": False, "spark_on": False}
    cut_after = pico["timestamps"]["power_cut_at"] - sent_at
    print(f"\nFATAL alarm produced -> power cut at the Pico: {cut_after * 1000:.1f} ms")
    assert cut_after < 0.25
    assert "tripped and confirmed" in adapter.log_path.read_text()
    last = run(consume_until(fatal_broker.bootstrap, "relayState", lambda ms: any(decode(m.value, RelayState).trip_latched for m in ms)))
    assert decode(last[-1].value, RelayState).power_on is False


def test_the_trip_survives_restarts_and_a_wiped_broker(
    wiped_broker: EmbeddedBroker, latch_sims: list[SimProcess], adapter_dir: Path, vault: EmbeddedVault
) -> None:
    latch_sims[-1].terminate()
    sim = start_simulator(latch_sims[-1].run_dir)
    latch_sims.append(sim)
    assert sim.state()["pico"]["trip_latched"], "the latch is in the board's NVRAM"
    adapter = Adapter(wiped_broker, adapter_dir, sim.i2c_url, vault).start()
    assert adapter.wait(15) == exitcodes.STAY_DOWN, adapter.tail()
    seen = consume(wiped_broker.bootstrap, lambda got: any(a.alarm_id == "i2c/pico-tripped" for a in got))
    tripped = next(a for a in seen if a.alarm_id == "i2c/pico-tripped")
    assert tripped.severity is Severity.FATAL
    assert tripped.occurrence == f"trip-{sim.state()['pico']['trip_count'] % 256}", "the occurrence is the trip itself"
    restarted = Adapter(wiped_broker, adapter_dir, sim.i2c_url, vault).start()
    try:
        restarted.wait_phase("halted")
        assert restarted.get("/readyz")[0] == 503
        time.sleep(0.3)
        pico = sim.state()["pico"]
        assert pico["trip_latched"] and pico["timestamps"]["reset_at"] is None, "never reset on its own"
        assert not pico["watchdog"]["armed"], "a halted adapter does not kick"
    finally:
        restarted.stop()


def test_only_a_verified_fresh_reset_releases_the_pico(
    wiped_broker: EmbeddedBroker, latch_sims: list[SimProcess], adapter_dir: Path, vault: EmbeddedVault
) -> None:
    sim = latch_sims[-1]
    adapter = Adapter(wiped_broker, adapter_dir, sim.i2c_url, vault).start()
    try:
        adapter.wait_phase("halted")
        signer = TransitSigner(hvac.Client(url=vault.addr, token=vault.token))
        named, trip = latching_now(wiped_broker, sim)
        genuine = run(issue_reset("alice", signer, named, trip))
        forged = OperatorReset(**{**run(issue_reset("mallory", signer, named, trip)).asdict(), "operator": "root"})
        future = run(issue_reset("bob", signer, named, trip))
        stale = OperatorReset(**{**future.asdict(), "issued_at": time.time() + 600})
        unnamed = run(issue_reset("carol", signer, [], trip))
        other_trip = run(issue_reset("dave", signer, named, (trip + 1) % 256))
        run(produce(wiped_broker.bootstrap, "operatorReset", [r.dumps() for r in (forged, stale, unnamed, other_trip)]))
        refused = consume(wiped_broker.bootstrap, lambda got: sum(a.code == "reset-refused" for a in got) >= 4)
        kinds = {a.alarm_id.rsplit("/", 1)[-1]: a.details["kind"] for a in refused if a.code == "reset-refused"}
        assert kinds == {forged.reset_id: "forged", stale.reset_id: "stale", unnamed.reset_id: "outdated",
                         other_trip.reset_id: "outdated"}
        assert sim.state()["pico"]["trip_latched"]
        run(produce(wiped_broker.bootstrap, "operatorReset", [genuine.dumps()]))
        pico = sim.wait_for(lambda s: not s["pico"]["trip_latched"], timeout=10)["pico"]
        assert pico["timestamps"]["reset_at"] is not None
        assert pico["relays"] == {"power_on": False, "gas_valve_open": False, "spark_on": False}
        # The adapter confirms the release by reading STATUS back after the RESET sequence;
        # tripping again before that read makes it (rightly) report the reset as failed.
        wait_for(
            lambda: metric(adapter, "heater_i2c_operator_resets_total", result="released") == 1, 10,
            what="the release confirmed by the adapter's readback",
        )
        sim.smbus().write_byte_data(0x42, 0x05, 0xDE)  # trip again, so a replay would show
        run(produce(wiped_broker.bootstrap, "operatorReset", [genuine.dumps()]))
        replayed = consume(
            wiped_broker.bootstrap,
            lambda got: any(a.code == "reset-refused" and a.details.get("kind") == "replayed" for a in got),
        )
        assert any(genuine.nonce in a.message for a in replayed if a.details.get("kind") == "replayed")
        assert sim.state()["pico"]["trip_latched"], "a replayed reset releases nothing"
        assert metric(adapter, "heater_i2c_operator_resets_total", result="released") == 1
        assert metric(adapter, "heater_i2c_operator_resets_total", result="failed") == 0
        assert adapter.get("/readyz")[0] == 503, "still halted until the platform latch is released"
    finally:
        adapter.stop()


def latching_now(broker: EmbeddedBroker, sim: SimProcess) -> tuple[list[str], int]:
    """What an operator is shown: the Pico's own FATAL occurrence, and its trip count."""
    trip = sim.state()["pico"]["trip_count"] % 256
    seen = consume(broker.bootstrap, lambda got: any(a.occurrence == f"trip-{trip}" for a in got))
    return [next(a.occurrence_id for a in seen if a.occurrence == f"trip-{trip}")], trip


def test_reset_through_alarms_server_releases_pico_before_the_restart(
    fatal_broker: EmbeddedBroker, latch_sims: list[SimProcess], adapter_dir: Path, vault: EmbeddedVault, tmp_path: Path
) -> None:
    """AlarmsServer releases the platform latch for the same reset; the halted adapter must
    have released the Pico before it exits to be restarted, or the restart would re-raise FATAL."""
    sim = latch_sims[-1]
    assert sim.state()["pico"]["trip_latched"]
    alarms_server = ServiceProcess("alarms", fatal_broker.url, tmp_path, vault=vault).start()
    adapter = Adapter(fatal_broker, adapter_dir, sim.i2c_url, vault).start()
    try:
        adapter.wait_phase("halted")
        trip = sim.state()["pico"]["trip_count"] % 256
        def shows_the_trip() -> dict | None:
            try:
                latch = alarms_server.get("/latch")[1]
            except OSError:  # still starting
                return None
            return latch if latch.get("trip_count") == trip and latch.get("occurrences") else None

        shown = wait_for(shows_the_trip, 30, what="AlarmsServer shows the trip")
        status, issued = post_json(alarms_server.url + "/reset", {
            "occurrences": sorted(shown["occurrences"]), "trip_count": shown["trip_count"]},
            token=alarms_server.token("operator", "alice"))
        assert status == 202, issued
        assert f"i2c/pico-tripped#trip-{trip}" in issued["occurrences"]
        assert adapter.wait(20) == exitcodes.RELEASED, adapter.tail()
        assert not sim.state()["pico"]["trip_latched"], "the Pico was released before the adapter exited"
        restarted = Adapter(fatal_broker, adapter_dir, sim.i2c_url, vault).start()
        try:
            restarted.wait_ready()
            assert not sim.state()["pico"]["trip_latched"]
        finally:
            restarted.stop()
    finally:
        adapter.stop()
        alarms_server.stop()
