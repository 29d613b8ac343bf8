"""The safety chain end to end: each fault injected into the running local platform ends in
the safe state, judged where it matters — at the relays, as the simulated Pico sees them.

One platform (as `heater up` runs it) serves the whole module and is reset in place between
cases: faults cleared, water back to its start temperature, and after a FATAL the verified
operator reset. The cases run in file order; those that latch the platform reset it before
they end, so the next case starts from a working heater. Each case logs the time it measured
to the safe state (``pytest -s`` or the captured log shows them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from heater import credentials, reset
from heater.catalogue import BY_NAME, COMPONENTS, STAGE_BRIDGE
from heater.platform import Platform
from adapters.i2c.controller import Limits
from heater.rundir import Layout
from heater.status import collect, render
from homekit.pairing import render as render_pairing
from heater.runtime.processes import port_open
from simulator import client as sim
from streams import exitcodes
from streams.heater_config import WATER_SENSORS, HeaterLimits
from streams.heating.controller import HeatingRun, announce_ends
from streams.heating.launch import JOB_MODULE, job_args
from streams.heartbeats import beat
from streams.lifecycle import Phase
from streams.records import Alarm, RelayCommand
from streams.tls import client_context_for
from streams.auth import Role
from tests.platform_view import (
    SERVICES, all_ready, fresh_tank, fresh_temperature, http_json, latched, login_token, pico, ready, relays, running_platform, view,
)
from tests.homekit.home_app import HomeApp
from tests.prometheus_server import check_config, ensure_installed, running_prometheus
from tests.support import consume_until, metric_sum, post_json, produce, run, wait_for

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(300)

CONTROL = [c.name for c in COMPONENTS if c.control]
LIMITS = HeaterLimits()
RELAY_LIMITS = Limits()
SAFE = {"power_on": False, "gas_valve_open": False, "spark_on": False}
#: The water sensors as the HomeKit accessory schema names them.
HOMEKIT_SENSORS = ("Water Temperature 1", "Water Temperature 2", "Water Temperature 3")
#: How often the tests sample the Pico: the resolution of every time-to-safe figure below.
SAMPLE_S = 0.02


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(tmp_path_factory.mktemp("faults"), timeout=120) as running:
        yield running


@pytest.fixture(autouse=True)
def reset_in_place(platform: Platform) -> Iterator[None]:
    """Each case starts from a working heater, whatever the one before it left."""
    layout = platform.layout
    sim.clear(layout.ports["simulator"])
    if latched(layout):
        sim.set_temperature(layout.ports["simulator"], 20.0)
        operator_reset(platform)
    yield


def until_relay_off(layout: Layout, relay: str, since: float, timeout: float) -> float:
    """Seconds from ``since`` (monotonic) until the Pico shows ``relay`` off, sampled every 20 ms."""
    deadline = time.monotonic() + timeout
    while relays(layout)[relay]:
        if time.monotonic() > deadline:
            raise AssertionError(f"{relay} still on {timeout} s after the fault: {pico(layout)}")
        time.sleep(SAMPLE_S)
    return time.monotonic() - since


# -- the platform -------------------------------------------------------------------------


#: Resets an operator may need: a service that halted before deciding all of its input decides it
#: after the reset, and a FATAL occurrence found there was never shown, so it latches (DESIGN rule 4).
RESET_ROUNDS = 3
#: How long the platform must stay released and ready before the reset counts as done.
STAYS_RELEASED_S = 2.0


def operator_reset(platform: Platform) -> float:
    """The verified operator reset, in place, looking again after each one; seconds until every service is ready.

    Each round names exactly what AlarmsServer shows. An occurrence a reset released never latches again.
    """
    layout = platform.layout
    began = time.monotonic()
    released: set[str] = set()
    for _ in range(RESET_ROUNDS):
        shown = set(http_json(layout.web_url("alarms") + "/latch")[1].get("occurrences") or {})
        assert not shown & released, f"occurrences a reset released latched again: {shown & released}"
        assert reset.main(layout.run_dir, "alice") == 0
        released |= shown
        if settles_released(layout):
            wait_for(lambda: not pico(layout)["trip_latched"], what="Pico released")
            return time.monotonic() - began
    raise AssertionError(f"still latched after {RESET_ROUNDS} resets; released so far: {sorted(released)}")


def settles_released(layout: Layout) -> bool:
    """True once every service is ready and the platform stays released; False when it latched again."""
    def settled() -> str | None:
        if latched(layout):
            return "latched"
        return "ready" if all(ready(layout, name) for name in SERVICES) else None

    while wait_for(settled, 90, 0.2, "every service ready, or the platform latched again") == "ready":
        deadline = time.monotonic() + STAYS_RELEASED_S
        while time.monotonic() < deadline and not latched(layout):
            time.sleep(0.2)
        if time.monotonic() >= deadline:
            return True
    return False


def send_commands(layout: Layout, *commands: bytes) -> None:
    run(produce(layout.broker_bootstrap, "I2CHeating", list(commands)))


def command(action: str, on: bool, lease_s: float = 0.0) -> bytes:
    return RelayCommand(
        command_id=uuid.uuid4().hex, action=action, on=on, issued_by="test", issued_at=time.time(), lease_s=lease_s
    ).dumps()


def energise_power(layout: Layout) -> None:
    """Power on (no gas): a relay for the cut-off to open."""
    send_commands(layout, command("power", True))
    wait_for(lambda: relays(layout)["power_on"], what="power relay on")


def history(layout: Layout) -> dict[str, tuple[bool, float | None]]:
    """Every occurrence in AlarmsServer's history: id → (active, cleared_at)."""
    entries: list[dict[str, Any]] = []
    while True:
        status, body = http_json(layout.web_url("alarms") + f"/alarms/history?limit=1000&offset={len(entries)}")
        assert status == 200, body
        entries.extend(body["alarms"])
        if len(entries) >= body["total"]:
            return {e["occurrence_id"]: (e["active"], e["cleared_at"]) for e in entries}


def alarm_entry(layout: Layout, alarm_id: str) -> dict[str, Any] | None:
    status, body = http_json(layout.web_url("alarms") + f"/alarm?id={alarm_id}")
    return body if status == 200 else None


def active_alarm(layout: Layout, alarm_id: str, timeout: float = 15) -> dict[str, Any]:
    return wait_for(lambda: (lambda e: e if e and e["active"] else None)(alarm_entry(layout, alarm_id)), timeout, 0.2,
                    f"alarm {alarm_id} active")


def kill_9(platform: Platform, name: str) -> float:
    """SIGKILL a supervised process; the monotonic time of the kill."""
    return kill_9_pid(platform.supervisor.info(name)["pid"])


def kill_9_pid(pid: int) -> float:
    assert pid, "the service is not running"
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


class HeldDown:
    """A service killed with -9 that stays away until released, as behind a slow restart.

    The process manager restarts a killed service within seconds here, sooner than some
    bounds a test must see run out. Every process it starts in the killed one's place is
    frozen (SIGSTOP) long before it has imported its code, and thawed on release.
    """

    def __init__(self, platform: Platform, name: str) -> None:
        self.supervisor, self.name = platform.supervisor, name
        self.killed = self.supervisor.info(name)["pid"]
        self.killed_at = 0.0
        self.frozen: list[int] = []
        self._done = threading.Event()
        self._watch = threading.Thread(target=self._freeze_restarts, daemon=True)

    def __enter__(self) -> HeldDown:
        self._watch.start()
        self.killed_at = kill_9_pid(self.killed)
        return self

    def _freeze_restarts(self) -> None:
        while not self._done.is_set():
            pid = self.supervisor.info(self.name)["pid"]
            if pid not in (0, self.killed) and pid not in self.frozen:
                os.kill(pid, signal.SIGSTOP)
                self.frozen.append(pid)
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._watch.join(5)
        for pid in self.frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


# -- the heating job ------------------------------------------------------------------------


class Job:
    """One heating job process, launched as the controller launches it, that a test can kill.

    The test stands in for the controller: when the process is gone, its end is announced
    with the controller's own hook, so DisasterDetector learns that a killed job stopped.
    """

    def __init__(self, layout: Layout, target_c: float) -> None:
        self.layout = layout
        self.run = HeatingRun(job_id=uuid.uuid4().hex[:12], target_c=target_c, requested_at=time.time())
        self.log_path = layout.logs / f"heating-job-{self.run.job_id}.log"
        env = {**os.environ, **layout.service_env("heating-job"), "HEATER_WEB_PORT": "0"}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", JOB_MODULE, *job_args(self.run.job_id, target_c)],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"heating job still running after {timeout} s:\n{self.tail()}") from None

    def kill(self) -> float:
        os.killpg(self.proc.pid, signal.SIGKILL)
        return time.monotonic()

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """Kill it if it still runs, and announce its end as the controller does."""
        if self.proc.poll() is None:
            self.kill()
        code = self.proc.wait(10)
        self.run.exit_code, self.run.ended_at = code, time.time()
        self.run.outcome = "done" if code == exitcodes.DONE else "failed"
        self.run.detail = f"process exited with {code}"
        announce = announce_ends(lambda topic, key, value: produce(self.layout.broker_bootstrap, topic, [value], key=key))

        def announced() -> bool:
            try:
                run(announce(self.run))
                return True
            except Exception:  # the broker may be on its way back
                return False

        wait_for(announced, 60, 0.5, "the job's end announced")


def heating(layout: Layout, job: Job) -> None:
    """Until the burner burns with the valve open and the job has seen its flame (it is past ignition).

    A burner lit a moment before the job has its flame reading is, to the job, still
    igniting: cut then, it would try again, as a burner control does after a failed start.
    """
    def lit() -> bool:
        state = sim.get_state(layout.ports["simulator"])
        if job.proc.poll() is not None:
            raise AssertionError(f"job ended ({job.proc.returncode}) before heating:\n{job.tail()}")
        burning = state["heater"]["flame"] and state["pico"]["relays"]["gas_valve_open"]
        return burning and f"heating job {job.run.job_id}: heating (" in job.log_path.read_text(errors="replace")

    wait_for(lit, 20, 0.05, "burner lit with the valve open")


# -- the cases --------------------------------------------------------------------------------


#: Series a healthy platform exports, each from the service that owns it (one query each).
KEY_SERIES = (
    'heater_platform_latched{service="alarms"} == 0',
    'heater_i2c_trip_latched{service="i2c"} == 0',
    'heater_i2c_outputs{service="i2c", relay="power"}',
    'heater_alarms_active{service="alarms", severity="FATAL"} == 0',
    'heater_messages_processed_total{service="bank", topic="sensorData"} > 0',
    'heater_messages_processed_total{service="disaster", topic="sensorData"} > 0',
    'heater_processing_seconds_bucket{service="bank", topic="sensorData", le="+Inf"} > 0',
    'heater_messages_sent_total{service="i2c", topic="relayState"} > 0',
    'heater_consumer_lag{service="bank", topic="sensorData"}',
    'heater_table_keys{service="alarms", table="alarm-history"}',
    'heater_can_frames_total{service="can"} > 0',
)


def test_prometheus_scrapes_every_service_of_the_running_platform(platform: Platform, tmp_path: Path) -> None:
    """First, on a healthy platform: Debian's Prometheus with the config `heater up` wrote sees every service up."""
    layout = platform.layout
    took = ensure_installed()
    log.info("prometheus install: %.1f s (0 when it was there)", took)
    checked = check_config(layout.prometheus_config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    services = {c.name for c in COMPONENTS if c.has_web}
    with running_prometheus(layout.prometheus_config, tmp_path) as prom:
        began = time.monotonic()

        def every_target_up() -> bool:
            targets = prom.targets()
            return {t["labels"]["service"] for t in targets if t["health"] == "up"} == services and len(targets) == len(services)

        wait_for(every_target_up, 30, 0.5, f"every service up in Prometheus: {services}")
        log.info("every target up %.1f s after Prometheus started", time.monotonic() - began)
        assert all(t["scrapeUrl"].startswith("http://127.0.0.1:") for t in prom.targets())
        assert {s["metric"]["service"] for s in prom.query('up{job="heater"} == 1')} == services
        for expr in KEY_SERIES:
            wait_for(lambda e=expr: prom.query(e), 15, 0.5, f"Prometheus has {expr}")


def test_heater_up_starts_the_homekit_bridge_last_and_status_reports_where_to_pair(platform: Platform) -> None:
    """0: before any fault, the bridge as `heater up` runs it: last stage, and how to pair it."""
    assert BY_NAME["homekit"].stage == STAGE_BRIDGE == max(c.stage for c in BY_NAME.values())
    credentials.login(platform.layout.run_dir, Role.ADMIN, "alice")  # the bridge's live view shows the setup code: admin only
    report = collect(platform.layout.run_dir)
    assert report["ok"], render(report)
    homekit = report["homekit"]
    assert homekit["address"] == "127.0.0.1" and homekit["port"] == platform.layout.ports["homekit-hap"]
    assert len(homekit["setup_code"]) == 10 and homekit["feed_connected"] is True and homekit["mdns"] == "off"
    assert homekit["live"] is True
    text = render_pairing(homekit)
    assert homekit["setup_code"] in text and homekit["setup_uri"].startswith("X-HM://")
    assert "setup code" in render(report)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_paired_home_app_reads_the_simulated_heater(platform: Platform) -> None:
    homekit = (await asyncio.to_thread(collect, platform.layout.run_dir))["homekit"]
    home = HomeApp("127.0.0.1", homekit["port"])
    await home.pair(homekit["setup_code"])
    try:
        deadline = time.monotonic() + 20
        while True:
            seen = await home.read_all()
            temperatures = [seen[name]["CurrentTemperature"] for name in HOMEKIT_SENSORS]
            faults = {name: seen[name]["StatusFault"]
                      for name in (*HOMEKIT_SENSORS, "Water Heater", "Power Cut-off", "FATAL Latch")}
            if all(t is not None and 0 < t < 100 for t in temperatures) and set(faults.values()) == {0}:
                break
            assert time.monotonic() < deadline, (temperatures, faults)
            await asyncio.sleep(0.5)
        assert seen["Power Cut-off"]["ContactSensorState"] == 0  # power on: the board reports it
        assert seen["FATAL Latch"]["ContactSensorState"] == 0
    finally:
        await home.close()
    log.warning("simulated water as the Home app reads it: %s", temperatures)


def test_garbage_flood_during_heating_is_counted_and_heating_completes(platform: Platform) -> None:
    """5: a CAN garbage flood is counted and dead-ended at the adapter; the heat cycle is unaffected."""
    layout = platform.layout
    fresh_tank(layout)
    can_pid = platform.supervisor.info("can")["pid"]
    bad_before = metric_sum(layout.probe_url("can"), "heater_can_bad_frames_total")
    job = Job(layout, 26.0)
    try:
        heating(layout, job)
        sim.inject(layout.ports["simulator"], "garbage_frames", rate=200.0)
        assert job.wait() == exitcodes.DONE, job.tail()
    finally:
        job.stop()
        sim.clear(layout.ports["simulator"])
    bad = metric_sum(layout.probe_url("can"), "heater_can_bad_frames_total") - bad_before
    assert bad > 100, "the garbage was seen and counted"
    assert platform.supervisor.info("can")["pid"] == can_pid, "the CAN adapter did not crash"
    assert relays(layout)["gas_valve_open"] is False
    log.warning("garbage flood: %d bad frames counted, heating done", bad)


def test_bus_off_during_heating_raises_an_alarm_and_closes_the_gas(platform: Platform) -> None:
    """4: the CAN bus goes off mid-heating → alarm; no data → valve closed; the job fails."""
    layout = platform.layout
    fresh_tank(layout)
    job = Job(layout, 40.0)
    try:
        heating(layout, job)
        fault_at = time.monotonic()
        sim.inject(layout.ports["simulator"], "bus_off")
        safe_s = until_relay_off(layout, "gas_valve_open", fault_at, RELAY_LIMITS.stale_after_s + 1.0)
        assert job.wait() == exitcodes.HEATING_FAILED, job.tail()
        active_alarm(layout, "can/bus-off")
    finally:
        job.stop()
        sim.clear(layout.ports["simulator"])
    assert relays(layout)["gas_valve_open"] is False and relays(layout)["spark_on"] is False
    log.warning("bus-off: valve closed %.2f s after the bus went off (stale bound %.1f s)", safe_s, RELAY_LIMITS.stale_after_s)


def test_kill_9_of_the_heating_job_closes_the_valve_within_the_lease(platform: Platform) -> None:
    """7: the job dies with the valve open; nobody renews the lease; the adapter closes the gas."""
    layout = platform.layout
    fresh_tank(layout)
    job = Job(layout, 40.0)
    try:
        heating(layout, job)
        killed_at = job.kill()
        safe_s = until_relay_off(layout, "gas_valve_open", killed_at, LIMITS.lease_s + 1.0)
    finally:
        job.stop()
    assert safe_s <= LIMITS.lease_s + 0.2
    log.warning("kill -9 heating job: valve closed %.2f s after the kill (lease %.1f s)", safe_s, LIMITS.lease_s)


def test_kill_9_of_the_disaster_detector_closes_the_valve_within_its_beat_bound(platform: Platform) -> None:
    """12: the detector dies mid-heating and stays away past its bound; the job still renews
    the lease, the data are fresh, and yet the adapter closes the gas: nobody watches the
    water (DESIGN rule 3)."""
    layout = platform.layout
    fresh_tank(layout)
    job = Job(layout, 40.0)
    try:
        heating(layout, job)
        bound_s = RELAY_LIMITS.detector_silent_after_s
        with HeldDown(platform, "disaster") as held:
            safe_s = until_relay_off(layout, "gas_valve_open", held.killed_at, bound_s + 1.0)
            active_alarm(layout, "i2c/detector-silent")
    finally:
        job.stop()
    assert safe_s <= bound_s + 0.5
    wait_for(lambda: platform.supervisor.info("disaster")["pid"] not in (0, held.killed) and ready(layout, "disaster"), 60, 0.1,
             "disaster restarted and ready")
    log.warning("kill -9 DisasterDetector: valve closed %.2f s after the kill (bound %.1f s)", safe_s, bound_s)


def test_kill_9_of_the_i2c_adapter_lets_the_pico_watchdog_make_everything_safe(platform: Platform) -> None:
    """6: the adapter dies mid-heating; no more kicks; the Pico drops every relay within its window.

    The adapter is held down: restarted within the window, it would make the board safe itself
    (its start-up drives every relay off and clears the expired flag), and the watchdog would
    go unproven.
    """
    layout = platform.layout
    fresh_tank(layout)
    window_s = pico(layout)["watchdog"]["window_ms"] / 1000
    job = Job(layout, 40.0)
    try:
        heating(layout, job)
        with HeldDown(platform, "i2c") as held:
            safe_s = until_relay_off(layout, "power_on", held.killed_at, window_s + 1.0)
            board = pico(layout)
        assert board["relays"] == SAFE and board["watchdog"]["expired"], "the watchdog, not a command, made it safe"
        assert job.wait() != exitcodes.DONE, "a job whose burner went out did not finish"
    finally:
        job.stop()
    # The Pico's own clock: from its last valid kick to every relay safe.
    watchdog_s = board["timestamps"]["safe_at"] - board["watchdog"]["last_kick_at"]
    assert watchdog_s <= window_s + 0.05
    wait_for(lambda: ready(layout, "i2c"), 30, 0.2, "i2c restarted by the process manager")
    log.warning("kill -9 I2C adapter: relays safe %.3f s after the last kick (window %.2f s), %.3f s after the kill "
                "as the test saw it", watchdog_s, window_s, safe_s)


def test_kill_9_of_every_other_service_restores_its_tables_and_loses_no_alarm(platform: Platform) -> None:
    """9: each service killed in turn is restarted, recovers its tables, and the platform heats again."""
    layout = platform.layout
    fresh_tank(layout)
    before = history(layout)
    assert before, "earlier cases left alarms in the history"
    restarts: dict[str, float] = {}
    for name in ("alarms", "bank", "disaster", "can"):
        pid = platform.supervisor.info(name)["pid"]
        killed_at = kill_9(platform, name)
        wait_for(lambda n=name: platform.supervisor.info(n)["pid"] not in (0, pid) and ready(layout, n), 60, 0.1,
                 f"{name} restarted and ready")
        restarts[name] = time.monotonic() - killed_at
    after = history(layout)
    assert {k: v for k, v in after.items() if k in before} == before, "no alarm lost or changed"
    status, bank = http_json(layout.web_url("bank") + "/bank")
    assert status == 200 and set(bank["sensors"]) >= set(WATER_SENSORS), "the bank's table came back"
    fresh_tank(layout)
    job = Job(layout, 24.0)
    try:
        assert job.wait() == exitcodes.DONE, job.tail()
    finally:
        job.stop()
    log.warning("kill -9 and restart (ready again): %s", {k: round(v, 2) for k, v in restarts.items()})


def served_serial(layout: Layout, name: str) -> int | None:
    """The serial of the certificate a service's API presents now, checked against the CLI's CA (None: not trusted)."""
    context = client_context_for(layout.web_url(name))
    assert context is not None
    try:
        with socket.create_connection(("127.0.0.1", layout.ports[name]), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket:
            peer = tls_socket.getpeercert()
    except ssl.SSLCertVerificationError:
        return None  # a certificate from a CA the CLI no longer trusts
    assert peer
    return int(peer["serialNumber"], 16)


def test_kill_9_of_vault_is_provisioned_again_and_every_service_carries_on(platform: Platform) -> None:
    """16: Vault restarted empty is provisioned again; every service loads its new certificate and logs in again."""
    layout = platform.layout
    serials = {name: served_serial(layout, name) for name in SERVICES}
    pid = platform.supervisor.info("vault")["pid"]
    killed_at = kill_9(platform, "vault")
    wait_for(lambda: platform.vault_keeper.provisioned_pid not in (None, pid), 60, 0.1, "Vault restarted and provisioned")
    provisioned_s = time.monotonic() - killed_at
    wait_for(lambda: all(served_serial(layout, n) not in (None, serials[n]) for n in SERVICES), 10, 0.2,
             "every service serves its new certificate, from the new CA")
    credentials.login(layout.run_dir, Role.ADMIN, "platform-tests")  # the old Vault's tokens died with it
    wait_for(lambda: all((view(layout.web_url(n) + "/status") or (0,))[0] == 200 for n in SERVICES), 30, 0.2,
             "every service honours a login from the new Vault")
    all_ready(layout)
    # The services' own Vault use: AlarmsServer signs an operator's reset with the new transit key.
    cut_s, occurrences = overheat_until_cut(layout)
    operator_reset(platform)
    assert not latched(layout) and occurrences
    log.warning("Vault kill -9: provisioned again after %.2f s; FATAL cut after it in %.3f s", provisioned_s, cut_s)


def overheat_until_cut(layout: Layout) -> tuple[float, set[str]]:
    """No job; the water sensors read above the FATAL limit: seconds until the power is cut,
    and the FATAL over-temperature occurrences (the CAN adapter's limit check, the bank's) that latched the platform."""
    fresh_tank(layout)
    energise_power(layout)
    # Outside heating: no job, and past the detector's grace period after the last one.
    wait_for(lambda: not http_json(layout.web_url("disaster") + "/disaster")[1]["watching"], 30, 0.2,
             "DisasterDetector no longer watching")
    port = layout.ports["simulator"]
    fault_at = time.monotonic()
    for sensor in range(3):
        sim.inject(port, "overtemp", sensor=sensor, value=LIMITS.fatal_c + 5)
    try:
        cut_s = until_relay_off(layout, "power_on", fault_at, 10)
        state = wait_for(lambda: (lambda p: p if p["trip_latched"] else None)(pico(layout)), what="Pico latched")
        assert state["relays"] == SAFE
        wait_for(lambda: latched(layout), what="AlarmsServer latched the platform")
        fatal = [e for e in http_json(layout.web_url("alarms") + "/alarms")[1]["alarms"] if e["alarm"]["severity"] == "FATAL"]
        occurrences = {e["occurrence_id"] for e in fatal if e["alarm"]["code"] == "overtemp-fatal"}
        assert occurrences, fatal
    finally:
        fresh_tank_after_fatal(layout)
    return cut_s, occurrences


def test_over_temperature_outside_heating_is_fatal_and_cuts_the_power(platform: Platform) -> None:
    """2: no job; the water sensors read above the FATAL limit → FATAL, power cut, latched.

    The operator reset then holds — the readings from before it, replayed by the restarted
    services, do not latch again — and the same overheat trips the platform again: the
    reset ends the bank's FATAL condition, it does not silence it."""
    layout = platform.layout
    cut_s, first = overheat_until_cut(layout)
    reset_s = operator_reset(platform)
    time.sleep(3)
    assert not latched(layout) and not pico(layout)["trip_latched"], "readings from before the reset latched again"
    again_s, second = overheat_until_cut(layout)
    assert second - first, f"no new FATAL after the reset: {first} then {second}"
    operator_reset(platform)
    log.warning("over-temperature: power cut %.3f s after the injection (%.3f s the second time, after the reset); "
                "operator reset to all ready %.1f s", cut_s, again_s, reset_s)


def fresh_tank_after_fatal(layout: Layout) -> None:
    port = layout.ports["simulator"]
    sim.set_temperature(port, 20.0)
    sim.clear(port)


#: The runaway of case 1: the water rises this fast (°C a second), from the fresh tank to
#: below the job's target, far below every limit BankManager has.
RUNAWAY_C_PER_S = 10.0
RUNAWAY_TOP_C = 38.0


def run_away(port: int, from_c: float, stop: threading.Event) -> None:
    """Raise the water ``RUNAWAY_C_PER_S`` from ``from_c`` in 0.1 s steps until ``stop`` or ``RUNAWAY_TOP_C``."""
    water = from_c
    while not stop.is_set() and water < RUNAWAY_TOP_C:
        water = min(RUNAWAY_TOP_C, water + RUNAWAY_C_PER_S / 10)
        sim.set_temperature(port, water)
        stop.wait(0.1)


def test_runaway_during_heating_is_a_disaster_and_cuts_the_power(platform: Platform) -> None:
    """1: mid-heating the water runs away, rising far faster than it can heat: DisasterDetected
    for this job, FATAL, power cut, latched.

    The rise stays below every over-temperature limit: a reading past the disaster limit is
    past BankManager's FATAL limit too, and whichever of the two decided it first would halt
    the other — the detector, halted, reports no disaster.
    """
    layout = platform.layout
    fresh_tank(layout)
    port = layout.ports["simulator"]
    assert RUNAWAY_TOP_C < min(LIMITS.warning_c, LIMITS.fatal_c, LIMITS.disaster_c)
    job = Job(layout, 40.0)
    stop = threading.Event()
    try:
        heating(layout, job)
        fault_at = time.monotonic()
        rising = threading.Thread(target=run_away, args=(port, 20.0, stop), daemon=True)
        rising.start()

        def disasters(messages: list) -> list:
            return [json.loads(m.value) for m in messages if m.value and job.run.job_id.encode() in m.value]

        (event, *_) = disasters(run(consume_until(layout.broker_bootstrap, "DisasterDetected", lambda ms: bool(disasters(ms)), timeout=30)))
        stop.set()
        assert event["rule"] == "too-fast-rise", event
        cut_s = until_relay_off(layout, "power_on", fault_at, 10)
        state = wait_for(lambda: (lambda p: p if p["trip_latched"] else None)(pico(layout)), what="Pico tripped")
        assert state["relays"] == SAFE
        wait_for(lambda: latched(layout), what="AlarmsServer latched the platform")
        job.wait()  # "target reached" (the reading is past any target) or FATAL: either way it ends
        assert not sim.get_state(port)["heater"]["flame"]
    finally:
        stop.set()
        job.stop()
        fresh_tank_after_fatal(layout)
    log.warning("runaway during heating: DisasterDetected (%s), power cut %.3f s after the rise began", event["rule"], cut_s)
    operator_reset(platform)


def test_a_fatal_raised_just_before_the_reset_and_delivered_after_it_cuts_the_power_and_stays_latched(
    platform: Platform,
) -> None:
    """11: a FATAL raised 0.5 s before the operator issued the reset and delivered after it (a service running
    behind) was named by no reset: it cuts the power and latches, whatever its timestamp."""
    layout = platform.layout
    tag = uuid.uuid4().hex[:6]
    shown = Alarm(alarm_id=f"test/shown-{tag}", source="test", code=f"shown-{tag}", severity="FATAL",
                  message="test: the FATAL the operator is shown", raised_at=time.time())
    run(produce(layout.broker_bootstrap, "createAlarm", [shown.dumps()], key=shown.alarm_id.encode()))
    wait_for(lambda: latched(layout) and pico(layout)["trip_latched"], what="latched, Pico tripped")
    operator_reset(platform)
    reset_id = http_json(layout.web_url("alarms") + "/latch")[1]["reset_id"]

    def issued(messages: list) -> list:
        return [json.loads(m.value) for m in messages if json.loads(m.value)["reset_id"] == reset_id]

    (record,) = issued(run(consume_until(layout.broker_bootstrap, "operatorReset", lambda ms: bool(issued(ms)))))
    energise_power(layout)
    late = Alarm(alarm_id=f"test/late-{tag}", source="test", code=f"late-{tag}", severity="FATAL",
                 message="test: raised before the reset, delivered after it", raised_at=record["issued_at"] - 0.5)
    delivered_at = time.monotonic()
    run(produce(layout.broker_bootstrap, "createAlarm", [late.dumps()], key=late.alarm_id.encode()))
    cut_s = until_relay_off(layout, "power_on", delivered_at, 10)
    wait_for(lambda: latched(layout) and pico(layout)["trip_latched"], what="latched again, Pico tripped")
    time.sleep(2)
    latch = http_json(layout.web_url("alarms") + "/latch")[1]
    assert latch["latched"] and list(latch["occurrences"]) == [late.occurrence_id], latch
    assert pico(layout)["trip_latched"] and not relays(layout)["power_on"], "stays latched until a reset names it"
    log.warning("a FATAL raised 0.5 s before the reset, delivered after it: power cut %.3f s after delivery", cut_s)
    operator_reset(platform)


def test_after_fatal_nothing_resumes_until_the_verified_operator_reset(platform: Platform) -> None:
    """10: control services stay down, relays stay off, restarts stay halted — until the
    verified operator reset; the FATAL stays in history."""
    layout = platform.layout
    fresh_tank(layout)
    fatal = Alarm(alarm_id="test/fatal", source="test", code="fatal", severity="FATAL", message="injected", raised_at=time.time())
    run(produce(layout.broker_bootstrap, "createAlarm", [fatal.dumps()], key=fatal.alarm_id.encode()))
    wait_for(lambda: pico(layout)["trip_latched"], what="Pico tripped")
    for name in CONTROL:
        info = wait_for(lambda n=name: (lambda i: i if i["statename"] == "EXITED" else None)(platform.supervisor.info(n)),
                        what=f"{name} exited")
        assert info["exitstatus"] == exitcodes.STAY_DOWN
    status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(http_json(layout.web_url("alarms") + "/readyz")),
                            what="alarms halted")
    assert body["phase"] == "halted", "display services stay up, read-only"

    # No relay re-energises, whatever is asked.
    send_commands(layout, command("power", True), command("valve", True, lease_s=3.0))
    time.sleep(1.0)
    assert relays(layout) == SAFE and all(platform.supervisor.info(n)["statename"] == "EXITED" for n in CONTROL)

    # Restarted by hand (as Kubernetes would): alive, halted, not ready, the Pico still tripped.
    # (That the trip also outlives a wiped broker is shown at the adapter level, in
    # tests/adapters/test_i2c_adapter.py::test_the_trip_survives_restarts_and_a_wiped_broker.)
    platform.supervisor.start("i2c")
    wait_for(lambda: (view(layout.web_url("i2c") + "/readyz") or (0, {}))[1].get("phase") == "halted", 30,
             what="i2c up, halted")
    assert pico(layout)["trip_latched"] and relays(layout) == SAFE and latched(layout)

    operator_reset(platform)
    assert not latched(layout) and not pico(layout)["trip_latched"]
    entry = alarm_entry(layout, "test/fatal")
    assert entry is not None and entry["alarm"]["severity"] == "FATAL", "the FATAL stays in history"
    assert entry["active"] is False and entry["cleared_by"] == "alice"


def decided(layout: Layout, service: str) -> float:
    """How many input records a stream service has decided since it started (0 while it does not answer)."""
    try:
        return metric_sum(layout.probe_url(service), "heater_messages_processed_total")
    except OSError:
        return 0.0


def deciding_again(layout: Layout, service: str, since: float) -> float:
    """Seconds from ``since`` until ``service`` decides new input: its count grows between two looks."""
    def grows() -> bool:
        before = decided(layout, service)
        time.sleep(0.3)
        return decided(layout, service) > before > 0

    wait_for(grows, 60, 0.2, f"{service} deciding new input after the broker came back")
    return time.monotonic() - since


def post_config(layout: Layout, limits: dict[str, Any], by: str = "alice") -> tuple[int, dict[str, Any]]:
    """A config change by ``by``, logged in as admin (`heater login --role admin --user NAME`): recorded as theirs."""
    credentials.login(layout.run_dir, Role.ADMIN, by)
    return post_json(layout.web_url("config") + "/config", {"limits": limits}, timeout=10, token=login_token())


def bank_limit(layout: Layout, name: str) -> float:
    return http_json(layout.web_url("bank") + "/bank")[1]["limits"][name]


def test_a_stricter_limit_is_in_force_within_a_second_and_a_looser_or_invalid_one_is_refused(platform: Platform) -> None:
    """15: ConfigurationServer hot reload: the bank's rules take the new warning limit without a restart."""
    layout = platform.layout
    before = http_json(layout.web_url("config") + "/config")[1]
    assert before["version"] >= 1 and before["issued_by"] == "bootstrap"
    warning_c = bank_limit(layout, "warning_c") - 1.0
    posted_at = time.monotonic()
    status, published = post_config(layout, {"warning_c": warning_c})
    assert status == 200 and published["version"] == before["version"] + 1, published
    wait_for(lambda: bank_limit(layout, "warning_c") == warning_c, 5, 0.01, "new limit in the bank")
    reload_s = time.monotonic() - posted_at
    assert reload_s < 1.0

    status, refused = post_config(layout, {"warning_c": warning_c + 2})
    assert status == 409 and refused["loosened"] == [f"warning_c: {warning_c} → {warning_c + 2}"], refused
    active_alarm(layout, "config/config-refused/loosens")
    status, refused = post_config(layout, {"critical_c": 10})
    assert status == 400 and "warning_c < critical_c" in refused["error"], refused
    active_alarm(layout, "config/config-refused/invalid")
    assert bank_limit(layout, "warning_c") == warning_c, "the last good version stays in force"
    history = http_json(layout.web_url("config") + "/config/history")[1]["versions"]
    assert [v["version"] for v in history] == list(range(1, published["version"] + 1))
    assert history[-1]["issued_by"] == "alice"
    log.warning("config: a new warning limit in force in the bank %.0f ms after the POST", reload_s * 1000)


def registry_view(layout: Layout) -> dict[str, Any]:
    status, body = http_json(layout.web_url("registry") + "/registry")
    assert status == 200, body
    return body


def test_a_hung_service_is_reported_missing_by_the_registry_and_cleared_when_it_beats_again(platform: Platform) -> None:
    """13: the bank freezes (SIGSTOP: alive to the process manager, silent on the wire)."""
    layout = platform.layout
    services = registry_view(layout)["services"]
    assert {n: services[n]["phase"] for n in SERVICES} == {n: "ready" for n in SERVICES}, services
    pid = platform.supervisor.info("bank")["pid"]
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        entry = active_alarm(layout, "registry/service-missing/bank", timeout=30)
        missing_after_s = time.monotonic() - stopped_at
        assert entry["alarm"]["severity"] == "CRITICAL" and "should be running" in entry["alarm"]["message"], entry
        assert registry_view(layout)["services"]["bank"]["missing"] is True
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: not (alarm_entry(layout, "registry/service-missing/bank") or {}).get("active"), 30, 0.2,
             "missing alarm cleared once the bank beats again")
    assert registry_view(layout)["services"]["bank"]["missing"] is False
    wait_for(lambda: ready(layout, "bank"), 60, 0.2, "bank ready again")
    log.warning("hung bank reported missing %.1f s after SIGSTOP", missing_after_s)


def test_a_heartbeat_from_an_unknown_service_is_fatal(platform: Platform) -> None:
    """14: something not on Vault's allowed list talks on the platform's topics: FATAL, power cut."""
    layout = platform.layout
    energise_power(layout)
    intruder = beat("intruder", Phase.READY, 0.0, time.time())
    run(produce(layout.broker_bootstrap, "heartbeats", [intruder.dumps()], key=b"intruder"))
    entry = active_alarm(layout, "registry/unauthorized-service/intruder")
    wait_for(lambda: latched(layout), 10, 0.05, "platform latched")
    wait_for(lambda: not relays(layout)["power_on"], 5, 0.02, "power cut")
    strangers = registry_view(layout)["strangers"]
    assert [s["service"] for s in strangers] == ["intruder"], strangers
    assert entry["alarm"]["severity"] == "FATAL" and "not on the allowed list" in entry["alarm"]["message"], entry


def test_broker_wiped_during_heating_closes_the_gas_and_every_stream_service_decides_again(platform: Platform) -> None:
    """8: the broker dies mid-heating and, memory-backed, comes back empty; the bank is also
    killed during the outage and restarted by the process manager. The gas closes within the
    lease; the power stays safe; every stream service — the restarted bank too — decides new
    input within 10 s of the broker's return, from what it still holds locally. Last in the module."""
    layout = platform.layout
    fresh_tank(layout)
    job = Job(layout, 40.0)
    try:
        heating(layout, job)
        # The broker stops answering (frozen, as a dead host would be) for longer than the
        # lease; then it is killed, and the process manager starts it again, empty.
        wrapper = platform.supervisor.info("broker")["pid"]
        binary = int(subprocess.check_output(["pgrep", "-P", str(wrapper)]).split()[0])
        os.kill(binary, signal.SIGSTOP)
        killed_at = time.monotonic()
        try:
            safe_s = until_relay_off(layout, "gas_valve_open", killed_at, LIMITS.lease_s + 1.5)
            kill_9(platform, "bank")  # restarted by the process manager while the broker is away
            assert job.wait(20) == exitcodes.HEATING_FAILED, job.tail()
        finally:
            os.kill(wrapper, signal.SIGKILL)
    finally:
        job.stop()
    assert relays(layout)["gas_valve_open"] is False and relays(layout)["spark_on"] is False
    wait_for(lambda: port_open(layout.ports["broker"]), 30, 0.05, "the broker back")
    back_at = time.monotonic()

    # The broker is back, empty. The services reconnect — or, where what they see after the
    # outage trips a FATAL (readings arriving in a burst can), come up halted with the power
    # cut. Either way the hardware is safe, and the history kept.
    def outcome() -> str | None:
        if (view(layout.web_url("alarms") + "/latch") or (0, {}))[1].get("latched"):
            return "latched" if pico(layout)["trip_latched"] else None
        try:
            return "reconnected" if fresh_temperature(layout) and ready(layout, "can") else None
        except OSError:
            return None

    result = wait_for(outcome, 90, 0.5, "the platform reconnected, or halted on a FATAL")
    data_s = time.monotonic() - killed_at
    board = pico(layout)
    assert board["relays"]["gas_valve_open"] is False and board["relays"]["spark_on"] is False
    assert result == "reconnected", "readings after an outage are no FATAL: the platform must come back"
    assert not board["watchdog"]["expired"], "the I2C adapter kept kicking through the outage"
    marker = Alarm(alarm_id="test/after-wipe", source="test", code="after-wipe", severity="WARNING",
                   message="decided after the wipe", raised_at=time.time()).dumps()

    run(produce(layout.broker_bootstrap, "createAlarm", [marker]))

    def recorded() -> Any:
        try:
            return alarm_entry(layout, "test/after-wipe")
        except OSError:
            return None

    wait_for(recorded, 60, 0.2, "AlarmsServer records a new alarm")
    recovered = {"alarms": time.monotonic() - back_at}
    recovered |= {name: deciding_again(layout, name, back_at) for name in ("bank", "disaster")}
    log.warning("broker frozen then killed: valve closed %.2f s after it stopped answering; %s %.1f s after; "
                "deciding again (s after the broker was back): %s", safe_s, result, data_s,
                {k: round(v, 1) for k, v in recovered.items()})
    assert max(recovered.values()) <= 10.0, f"every service decides new input within 10 s: {recovered}"
