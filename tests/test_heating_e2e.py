"""Heating jobs end to end: controller → job process → I2C adapter → simulated Pico → physics.

Real processes only: the local platform (broker, Vault, simulator, AlarmsServer, I2C
adapter, and the CAN adapter that turns the simulator's frames into ``sensorData``),
and each job launched by the controller as a child process. What the burner did is
read at the "hardware" (the simulator's state), the outcome from the controller and
the alarms from AlarmsServer. The lock-out raises FATAL, which latches this module's
platform, so it runs after the other heating cases. The diagnostics views run on the same
platform: every service's tables while all run, and the status page in a real browser
after the lock-out, when it has a heating curve to plot and a FATAL to show.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from heater import dashboard_link, probes
from heater.platform import Platform
from heater.rundir import Layout
from simulator import client as sim
from streams import dashboard, exitcodes
from streams.codec import decode
from streams.heating.controller import HeatingController, HeatingRun
from streams.heating.launch import LocalLauncher
from streams.platform_watch import PlatformWatch
from streams.records import HeatingJobState
from streams.tls import client_context_for
from tests import browser, debian
from tests.platform_view import fresh_tank, http_json, login_token, relays, running_platform
from tests.png import read_png
from tests.support import consume_until, wait_for

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(tmp_path_factory.mktemp("heating-platform"), timeout=90) as running:
        yield running


async def heat(layout: Layout, target_c: float) -> tuple[HeatingRun, float]:
    """One request through the controller, as a service would make it; the run and its duration."""
    watch = PlatformWatch(layout.broker_bootstrap, "heating-controller", fetch_wait_ms=10)
    await watch.start()
    watch.run_in_background()
    try:
        controller = HeatingController(LocalLauncher(env=layout.service_env("heating-job"), log_dir=layout.logs), watch)
        began = time.monotonic()
        run = await controller.request_heating(target_c)
        ended = await asyncio.wait_for(controller.wait(run.job_id), 60)
        return ended, time.monotonic() - began
    finally:
        await watch.stop()


def job_states(layout: Layout, job_id: str) -> list[HeatingJobState]:
    messages = asyncio.run(consume_until(
        layout.broker_bootstrap, "heatingJobState",
        lambda ms: any(decode(m.value, HeatingJobState).job_id == job_id and decode(m.value, HeatingJobState).state in ("done", "failed") for m in ms),
    ))
    return [s for s in (decode(m.value, HeatingJobState) for m in messages) if s.job_id == job_id]


def alarm(layout: Layout, alarm_id: str, **want: Any) -> dict[str, Any]:
    """AlarmsServer's entry for ``alarm_id`` once it matches ``want`` (e.g. ``active=False``)."""
    url = layout.web_url("alarms") + f"/alarm?id={alarm_id}"

    def check() -> dict[str, Any] | None:
        status, body = http_json(url)
        return body if status == 200 and all(body.get(k) == v for k, v in want.items()) else None

    return wait_for(check, 15, 0.2, f"alarm {alarm_id} {want}")


def job_log(layout: Layout, run: HeatingRun) -> str:
    return (layout.logs / f"heating-job-{run.job_id}.log").read_text(errors="replace")[-3000:]


def test_heating_to_target(platform: Platform) -> None:
    layout = platform.layout
    fresh_tank(layout, 20.0)
    port = layout.ports["simulator"]
    run, took = asyncio.run(heat(layout, 30.0))
    assert (run.outcome, run.exit_code) == ("done", exitcodes.DONE), job_log(layout, run)
    state = sim.get_state(port)
    assert state["pico"]["relays"]["gas_valve_open"] is False and state["pico"]["relays"]["spark_on"] is False
    assert state["heater"]["water_temperature"] >= 29.5
    states = job_states(layout, run.job_id)
    assert [s.state for s in states] == ["idle", "igniting", "heating", "done"]
    heating_s = states[-1].at - states[2].at
    ignition_s = states[2].at - states[1].at
    log.warning("heating 20 → 30 °C: request to exit %.1f s, ignition %.2f s, heating %.1f s", took, ignition_s, heating_s)
    assert ignition_s < 3.0 and 3.0 < heating_s < 15.0
    entry = alarm(layout, "heating-job/heating", active=False)
    assert entry["alarm"]["severity"] == "INFO"


#: The Faust services that keep changelog tables (configuration lives on its compacted topic; the
#: adapters and the HomeKit bridge are no Faust apps).
STATEFUL_SERVICES = ("registry", "exceptions", "alarms", "bank", "disaster")


def get_text(url: str, accept: str) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept, "Authorization": f"Bearer {login_token()}"})
    with urllib.request.urlopen(request, timeout=5, context=client_context_for(url)) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


def test_every_changelog_table_of_every_service_is_inspectable(platform: Platform) -> None:
    layout = platform.layout
    seen = 0
    assert http_json(layout.web_url("config") + "/table/") == (200, [])
    for name in STATEFUL_SERVICES:
        base = layout.web_url(name)
        status, listed = http_json(base + "/table/", timeout=5)
        assert status == 200 and f"{name}-ledger" in [t["name"] for t in listed], f"{name}: {listed}"
        for table in listed:
            status, detail = http_json(base + table["url"] + "?limit=2", timeout=15)  # asks the broker for the end
            assert status == 200, detail
            assert detail["changelog_topic"] == f"heater-{name}-{table['name']}-changelog"
            assert detail["total"] == detail["size"] and len(detail["keys"]) == min(2, detail["size"])
            for part in detail["changelog"]["partitions"]:
                end, stored = part["end_offset"], part["stored_offset"]
                assert isinstance(end, int) and (stored is None or stored < end), (name, table["name"], part)
            if detail["keys"]:
                key = detail["keys"][0]
                status, one = http_json(base + table["url"] + urllib.parse.quote(key, safe="") + "/", timeout=5)
                assert status == 200 and one["key"] == key and one["value"] is not None, one
            seen += 1
    assert seen >= 10
    status, kind, page = get_text(layout.web_url("alarms") + "/table/alarm-history/", "text/html,*/*;q=0.8")
    assert status == 200 and kind.startswith("text/html") and "<h1>table alarm-history</h1>" in page
    assert http_json(layout.web_url("alarms") + "/table/no-such-table/")[0] == 404
    assert http_json(layout.web_url("alarms") + "/table/alarm-history/?limit=100000")[0] == 400


def test_kcat_reads_the_local_broker(platform: Platform) -> None:
    """Debian's kcat (librdkafka) against the embedded broker, as the README shows it."""
    kcat = debian.required("kcat", "kcat")
    listing = subprocess.run([kcat, "-b", platform.layout.broker_bootstrap, "-L", "-m", "5"], capture_output=True,
                             text=True, timeout=30)
    assert listing.returncode == 0 and 'topic "sensorData"' in listing.stdout, listing.stderr
    # -c, not -e: on a topic being written to, the embedded broker's fetches never come back empty (no end seen)
    tail = subprocess.run([kcat, "-b", platform.layout.broker_bootstrap, "-C", "-t", "sensorData", "-o", "-3", "-c", "3",
                           "-f", "%k %s\\n"], capture_output=True, text=True, timeout=30)
    assert tail.returncode == 0 and '"kind":"temperature"' in tail.stdout, tail.stderr


def test_stuck_sensor_fails_with_an_alarm_and_the_valve_closed(platform: Platform) -> None:
    layout = platform.layout
    fresh_tank(layout, 20.0)
    port = layout.ports["simulator"]
    sim.inject(port, "stuck_sensor")
    try:
        run, took = asyncio.run(heat(layout, 40.0))
    finally:
        # Water first: the stuck sensors, freed above the start temperature, would read as heat
        # without gas within DisasterDetector's grace after the job — a real FATAL.
        sim.set_temperature(port, 20.0)
        sim.clear(port)
    assert (run.outcome, run.exit_code) == ("failed", exitcodes.HEATING_FAILED), job_log(layout, run)
    assert relays(layout)["gas_valve_open"] is False
    entry = alarm(layout, "heating-job/no-temperature-change", active=True)
    assert entry["alarm"]["severity"] == "CRITICAL"
    alarm(layout, "heating-job/heating", active=False)
    assert [s.state for s in job_states(layout, run.job_id)] == ["idle", "igniting", "heating", "failed"]
    log.warning("stuck sensor: failed %.1f s after the request", took)


def test_ignition_failure_locks_out(platform: Platform) -> None:
    layout = platform.layout
    fresh_tank(layout, 20.0)
    port = layout.ports["simulator"]
    sim.inject(port, "ignition_failure")
    run, took = asyncio.run(heat(layout, 40.0))
    assert (run.outcome, run.exit_code) == ("failed", exitcodes.HEATING_FAILED), job_log(layout, run)
    entry = alarm(layout, "heating-job/lockout", active=True)
    assert entry["alarm"]["severity"] == "FATAL" and "ignition failed 3 times" in entry["alarm"]["message"]
    pico = wait_for(lambda: (lambda p: p if p["trip_latched"] else None)(sim.get_state(port)["pico"]), what="Pico tripped")
    assert pico["relays"] == {"power_on": False, "gas_valve_open": False, "spark_on": False}
    states = job_states(layout, run.job_id)
    assert [s.state for s in states].count("igniting") == 5, "three attempts and two retries announced"
    assert states[-1].state == "failed" and "locked out" in states[-1].reason
    assert wait_for(lambda: platform.supervisor.info("i2c")["statename"] == "EXITED", what="i2c stayed down")
    log.warning("ignition failure: locked out %.1f s after the request", took)
    assert Path(layout.logs).exists()


def test_the_status_page_shows_the_fatal_latch_relays_alarms_and_a_plotted_heating_curve(
        platform: Platform, tmp_path: Path) -> None:
    """After the lock-out: a real browser renders the page; its pixels show the plot's line and the FATAL banner.

    The browser opens it as a viewer does: through a one-time link (`heater dashboard`), exchanged
    for a session cookie; each browser run is a fresh profile, so each gets its own link.
    """
    layout = platform.layout
    url = layout.web_url("alarms") + dashboard.PAGE_PATH
    wait_for(lambda: "FATAL" in get_text(url, "text/html")[2], what="the page shows the latch")
    assert "FATAL" not in browser.rendered_dom(url), "without a session the browser is refused"
    link = dashboard_link.link(layout.run_dir)
    dom = browser.rendered_dom(link)
    assert "FATAL — latched" in dom and "heating-job/lockout" in dom
    assert probes.http_json(link)[0] == 401, "a link opens one session only"
    assert "<td>gas valve</td><td>off</td>" in dom and "<td>power</td><td>off</td>" in dom
    assert "<td>alarms</td><td>halted</td>" in dom  # a display service stays up, not ready
    began = time.monotonic()
    width, height, rows = read_png(browser.screenshot(dashboard_link.link(layout.run_dir), tmp_path / "status.png"))
    log.warning("status page: screenshot and PNG decode in %.1f s", time.monotonic() - began)

    def near(pixel: tuple[int, int, int], colour: str, within: int = 40) -> bool:
        want = bytes.fromhex(colour.lstrip("#"))
        return all(abs(a - b) <= within for a, b in zip(pixel, want))

    line = [(x, y) for y, row in enumerate(rows) for x, p in enumerate(row) if near(p, dashboard.PLOT_COLOUR)]
    banner = sum(1 for row in rows for p in row if near(p, "#b00020", 10))
    assert banner > 5000, "the FATAL banner is drawn"
    # the heating curve of this module's jobs: a line over the minutes it ran (of the hour across), not one dot
    assert len(line) > 100 and max(x for x, _ in line) - min(x for x, _ in line) > 5, len(line)
    assert max(y for _, y in line) - min(y for _, y in line) > 20, "the curve rises (20 → 30 °C)"
