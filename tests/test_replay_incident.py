"""A recorded runaway, played into a fresh platform, raises the same FATAL there.

The incident is real, as in the fault suite's runaway case but on a platform of its own: the
simulated heater behind the CAN and I2C adapters, a heating job heating the water,
DisasterDetector and AlarmsServer on a broker of their own. Mid-heating the water sensors jump,
a rise far too fast, to just under the FATAL limit (over it, the CAN adapter's own limit check
would latch the platform first and stop the detector before it decides): DisasterDetector
raises FATAL, AlarmsServer latches, the power is cut.
``heater replay record`` then copies, over the incident's time range, the four topics the
detector decides from (``sensorData``, ``heatingJobState``, ``relayState``, ``I2CHeating``),
and the incident's processes are stopped. ``heater replay play`` plays the four recordings
together, in their original order, into a fresh broker where only DisasterDetector and
AlarmsServer run.

The replayed records are minutes to hours old by the wall clock when they are played; the
detector judges each by its own time (a reading's ``received_at``, a job state's ``at``, a
command's ``issued_at``), so it decides them as it did during the incident: the same
disaster, the same FATAL occurrence (its id is derived from the reading that revealed it),
and the fresh AlarmsServer latches on it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from heater.runtime.broker import EmbeddedBroker
from heater.runtime.vault import EmbeddedVault
from simulator import client as sim
from streams import exitcodes, topics
from streams.heater_config import WATER_SENSORS, HeaterLimits
from streams.heating.launch import JOB_MODULE, job_args
from streams.ids import occurrence_key
from tests.adapters.conftest import CanAdapterProcess
from tests.simulator.conftest import SimProcess, start_simulator
from tests.support import ServiceProcess, consume_until, run, wait_for

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
LIMITS = HeaterLimits()
#: The topics DisasterDetector follows, in the order they are named to ``heater replay play``.
INCIDENT_TOPICS = (topics.SENSOR_DATA.name, topics.HEATING_STATE.name, topics.RELAY_STATE.name, topics.I2C_HEATING.name)
#: Of the water before the job starts: readings enough for the detector's median filter.
LEAD_S = 1.0


@dataclass
class Incident:
    """What the incident left: its recordings, its first FATAL and DisasterDetected event, its latch."""

    recordings: list[Path]
    fatal: dict[str, Any]
    disaster: dict[str, Any]
    latch: dict[str, Any]
    job_id: str
    took_s: float


def heater(*args: str) -> subprocess.CompletedProcess[str]:
    """The console command, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "heater", *args], cwd=REPO, capture_output=True, text=True, timeout=90)


def start_services(*services: ServiceProcess) -> None:
    """Start the services together and wait until each is ready; on failure stop them all."""
    for service in services:
        service.start()
    try:
        for service in services:
            service.wait_ready(timeout=90)
    except BaseException:
        for service in services:
            service.stop()
        raise


def first_fatal(bootstrap: str, source: str) -> dict[str, Any]:
    """The first FATAL alarm ``source`` raised on ``createAlarm`` (offset order), with its occurrence id."""
    def fatal(messages: list[Any]) -> list[dict[str, Any]]:
        alarms = [json.loads(m.value) for m in messages if m.value]
        return [a for a in alarms if a["severity"] == "FATAL" and a["source"] == source]

    alarm = fatal(run(consume_until(bootstrap, topics.CREATE_ALARM.name, lambda ms: bool(fatal(ms)), timeout=60)))[0]
    return alarm | {"occurrence_id": occurrence_key(alarm["alarm_id"], alarm["raised_at"], alarm.get("occurrence", ""))}


def first_disaster(bootstrap: str) -> dict[str, Any]:
    messages = run(consume_until(bootstrap, topics.DISASTER_DETECTED.name, lambda ms: bool(ms), timeout=60))
    return json.loads(messages[0].value)


def latched(alarms: ServiceProcess) -> dict[str, Any] | None:
    status, body = alarms.get("/latch")
    assert status == 200, body
    return body if body.get("latched") else None


def identity(alarm: dict[str, Any]) -> dict[str, Any]:
    """A FATAL as the latch and the operator know it: which rule, which occurrence, what was measured.

    The message's last clause, why the water was watched at that moment (the job running, its
    grace period, the valve reading open), is left out: when a relay readback and a reading
    arrived within milliseconds of each other, the incident's detector took them in arrival
    order and the replay delivers them in timestamp order.
    """
    same = ("alarm_id", "source", "code", "severity", "raised_at", "details", "occurrence_id")
    return {k: alarm[k] for k in same} | {"measured": alarm["message"].rsplit(" (", 1)[0]}


def job_env(alarms: ServiceProcess, vault: EmbeddedVault) -> dict[str, str]:
    """As the controller's LocalLauncher launches a job: the platform's settings, the job's own identity, no fixed ports."""
    return {**alarms.env, **vault.service_env("heating-job"), "HEATER_COMPONENT": "heating-job",
            "HEATER_WEB_PORT": "0", "HEATER_PROBE_PORT": "0"}


def heating(simulator: SimProcess, job: subprocess.Popen[bytes], job_log: Path) -> bool:
    """Whether the burner burns with the valve open; fails if the job ended before."""
    if job.poll() is not None:
        raise AssertionError(f"heating job ended ({job.returncode}) before heating:\n{job_log.read_text()[-3000:]}")
    state = simulator.state()
    return bool(state["heater"]["flame"] and state["pico"]["relays"]["gas_valve_open"])


def fresh_data(i2c: ServiceProcess, detector: ServiceProcess) -> bool:
    """The I2C adapter sees fresh temperature data (it opens no valve without) and the detector has every water sensor's window."""
    lease = i2c.get("/relays")[1]["lease"]
    windows = detector.get("/disaster")[1].get("windows", {})
    return (lease["temperature_age_s"] is not None and lease["temperature_age_s"] < lease["stale_after_s"] / 2
            and all(windows.get(s, {}).get("last_c") is not None for s in WATER_SENSORS))


def record_incident(root: Path, vault: EmbeddedVault) -> Incident:
    """A runaway during heating on a platform of its own, recorded with ``heater replay record``; everything stopped again."""
    began = time.monotonic()
    with EmbeddedBroker(root / "incident-broker") as broker:
        simulator = start_simulator(root / "incident-sim")
        run_dir = root / "incident"
        alarms = ServiceProcess("alarms", broker.url, run_dir, vault=vault)
        detector = ServiceProcess("disaster", broker.url, run_dir, vault=vault)
        can = CanAdapterProcess(broker, run_dir, simulator.can_channel, vault)
        i2c = ServiceProcess("i2c", broker.url, run_dir, {"HEATER_I2C_BUS": simulator.i2c_url}, vault=vault)
        job: subprocess.Popen[bytes] | None = None
        try:
            start_services(alarms, detector, can, i2c)
            wait_for(lambda: fresh_data(i2c, detector), 30, 0.1, "fresh readings at the I2C adapter and the detector")

            job_id = f"incident-{uuid.uuid4().hex[:8]}"
            job_log = run_dir / "logs" / f"heating-job-{job_id}.log"
            started_at = time.time()
            with open(job_log, "ab") as out:
                job = subprocess.Popen([sys.executable, "-m", JOB_MODULE, *job_args(job_id, 40.0)],
                                       env=job_env(alarms, vault), stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            wait_for(lambda: heating(simulator, job, job_log), 30, 0.05, "burner lit with the valve open")
            for sensor in range(len(WATER_SENSORS)):
                sim.inject(simulator.control_port, "overtemp", sensor=sensor, value=LIMITS.fatal_c - 1)

            fatal = first_fatal(broker.bootstrap, "disaster")
            disaster = first_disaster(broker.bootstrap)
            wait_for(lambda: latched(alarms), 30, 0.1, "the incident's AlarmsServer latched")
            assert detector.wait(45) == exitcodes.STAY_DOWN, detector.tail()
            latch = latched(alarms)  # every FATAL the detector raised before it stopped
            assert latch is not None
            assert not simulator.state()["pico"]["relays"]["power_on"], "the incident cut the power"
            ended_at = time.time()

            recordings = []
            for topic in INCIDENT_TOPICS:
                out_path = root / f"incident-{topic}.jsonl"
                recorded = heater("replay", "record", "--topic", topic, "--from", f"epoch:{started_at - LEAD_S:.3f}",
                                  "--to", f"epoch:{ended_at:.3f}", "--out", str(out_path), "--bootstrap", broker.bootstrap)
                assert recorded.returncode == 0, recorded.stderr
                recordings.append(out_path)
        finally:
            if job is not None and job.poll() is None:
                job.kill()
                job.wait(10)
            for service in (i2c, can, detector, alarms):
                service.stop()
            simulator.terminate()
    return Incident(recordings, fatal, disaster, latch, job_id, time.monotonic() - began)


@pytest.fixture
def incident(tmp_path: Path, vault: EmbeddedVault) -> Iterator[Incident]:
    yield record_incident(tmp_path, vault)


def test_a_recorded_runaway_played_into_a_fresh_platform_raises_the_same_fatal(
    incident: Incident, tmp_path: Path, vault: EmbeddedVault
) -> None:
    fatal = incident.fatal
    assert fatal["alarm_id"].endswith(f"/job-{incident.job_id}"), fatal
    counts = {path.name: len(path.read_text().splitlines()) - 1 for path in incident.recordings}
    assert all(counts.values()), counts

    with EmbeddedBroker(tmp_path / "fresh-broker") as broker:
        run_dir = tmp_path / "fresh"
        alarms = ServiceProcess("alarms", broker.url, run_dir, vault=vault)
        detector = ServiceProcess("disaster", broker.url, run_dir, vault=vault)
        try:
            start_services(alarms, detector)
            played_at = time.monotonic()
            played = heater("replay", "play", *map(str, incident.recordings), "--bootstrap", broker.bootstrap)
            assert played.returncode == 0, played.stderr
            play_s = time.monotonic() - played_at

            again = first_fatal(broker.bootstrap, "disaster")
            assert identity(again) == identity(fatal), f"incident {fatal}\nreplay {again}"
            assert first_disaster(broker.bootstrap)["disaster_id"] == incident.disaster["disaster_id"]
            wait_for(lambda: latched(alarms), 30, 0.1, "the fresh AlarmsServer latched")
            fatal_s = time.monotonic() - played_at
            assert detector.wait(45) == exitcodes.STAY_DOWN, detector.tail()
            latch = latched(alarms)
            assert latch is not None
            # The incident's FATAL latches both platforms. Which further rules latch with it depends on how
            # soon the latch stopped each detector and, for one reading, on the order of records that arrived
            # within milliseconds: any of them is a disaster of the incident's heating job, and nothing else.
            assert fatal["occurrence_id"] in latch["occurrences"] and fatal["occurrence_id"] in incident.latch["occurrences"]
            episode = f"/job-{incident.job_id}@"
            assert all(key.startswith("disaster/") and episode in key for key in latch["occurrences"]), latch["occurrences"]
        finally:
            detector.stop()
            alarms.stop()
    log.warning("runaway replay: incident %s (%.1f s to produce and record; %s records); played in %.1f s, "
                "same FATAL %s latched %.1f s after play began; incident latch %s, replay latch %s",
                incident.job_id, incident.took_s, counts, play_s, fatal["occurrence_id"], fatal_s,
                sorted(incident.latch["occurrences"]), sorted(latch["occurrences"]))
