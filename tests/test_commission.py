"""`heater commission` on the whole local platform: the cut-off is tested on the Pico, the
platform's FATAL path releases it only through the operator reset, and a heater that is not
idle or a board that does not answer is refused with the relays safe and the adapter running."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from typing import Iterator

import pytest

from heater import commission, reset
from heater.platform import Platform
from heater.rundir import Layout
from simulator import client as sim
from streams.records import RelayCommand
from tests.platform_view import http_json, running_platform, view
from tests.support import produce, run, wait_for

ALL_OFF = {"power_on": False, "gas_valve_open": False, "spark_on": False}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(tmp_path_factory.mktemp("platform"), timeout=90) as running:
        yield running


def i2c_ready(layout: Layout) -> bool:
    return (view(layout.web_url("i2c") + "/readyz") or (0,))[0] == 200


def pico(layout: Layout) -> dict:
    return sim.get_state(layout.ports["simulator"])["pico"]


def idle_and_unlatched(layout: Layout) -> None:
    """Where every case starts: adapter ready, platform not latched, nothing energised."""
    wait_for(lambda: i2c_ready(layout), timeout=60, what="I2C adapter ready")
    assert http_json(layout.web_url("alarms") + "/latch")[1]["latched"] is False
    assert pico(layout)["relays"] == ALL_OFF


def power(layout: Layout, on: bool) -> None:
    record = RelayCommand(command_id=uuid.uuid4().hex, action="power", on=on, issued_by="test", issued_at=time.time())
    run(produce(layout.broker_bootstrap, "I2CHeating", [record.dumps()]))


#: The trip is timed from user space over the simulator's TCP seam: on a loaded test machine the
#: 50 ms default can come out inconclusive, and a trip cannot be repeated without an operator
#: reset. The bound is a setting; the test relaxes it and still checks the run kept to it.
TRIP_LIMIT_MS = 250.0


def recover(platform: Platform) -> None:
    """After a failed run: a Pico left tripped latches the platform once the adapter is back
    (the control services then stay down); the operator reset brings it back for the next case."""
    layout = platform.layout

    def settled() -> str | None:
        if http_json(layout.web_url("alarms") + "/latch")[1].get("latched"):
            down = all(platform.supervisor.info(n)["statename"] != "RUNNING" for n in commission.CONTROL)
            return "latched" if down else None
        return "ready" if i2c_ready(layout) else None

    if wait_for(settled, timeout=60, what="platform settled after a failed commission") == "latched":
        assert reset.main(layout.run_dir, "alice") == 0


@pytest.mark.parametrize(
    ("lower", "upper", "verdict"),
    [(480.0, 540.0, "passed"), (551.0, 700.0, "failed"), (500.0, 671.8, "inconclusive")],
)
def test_a_timing_passes_only_when_its_upper_bound_is_in_time(lower: float, upper: float, verdict: str) -> None:
    """A slow host blurs when the board acted; only a late lower bound proves the board late."""
    assert commission.judge(lower, upper, 550.0) == verdict
    assert commission.delay_ms(commission.Span(1.0, 1.002), commission.Span(1.5, 1.52)) == (498.0, 520.0)


def test_commission_passes_and_the_operator_reset_releases_everything(platform: Platform) -> None:
    layout = platform.layout
    idle_and_unlatched(layout)
    window_ms = pico(layout)["watchdog"]["window_ms"]
    began = time.time()

    done = subprocess.run(
        [sys.executable, "-m", "heater", "--run-dir", str(layout.run_dir), "commission", "--operator", "alice", "--json",
         "--trip-limit-ms", str(TRIP_LIMIT_MS)],
        capture_output=True, text=True, timeout=150,
    )
    if done.returncode != 0:
        recover(platform)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True and not report["refused"]
    assert list(checks) == ["watchdog", "power-cut-off", "latch-holds", "operator-release"]
    assert all(c["status"] == "passed" for c in checks.values()), report
    watchdog, trip = checks["watchdog"], checks["power-cut-off"]
    assert window_ms * 0.9 <= watchdog["measured_ms"] <= watchdog["limit_ms"] == window_ms + commission.WATCHDOG_MARGIN_MS
    assert 0 < trip["measured_ms"] <= trip["limit_ms"] == TRIP_LIMIT_MS
    print(f"commission: watchdog {watchdog['measured_ms']} ms, trip {trip['measured_ms']} ms, "
          f"release {checks['operator-release']['timings_ms']}")

    # The board went through a real trip and a real release.
    board = pico(layout)
    assert board["trip_latched"] is False and board["relays"] == ALL_OFF
    assert began < board["timestamps"]["tripped_at"] < board["timestamps"]["reset_at"]
    # The platform is released, the adapter ready, and its FATAL stays in history, inactive.
    assert http_json(layout.web_url("alarms") + "/latch")[1]["latched"] is False
    assert http_json(layout.web_url("i2c") + "/readyz")[0] == 200
    entry = http_json(layout.web_url("alarms") + f"/alarm?id={commission.TRIP_ALARM}")[1]
    assert entry["alarm"]["severity"] == "FATAL" and entry["active"] is False and entry["cleared_by"] == "alice"


def test_a_heater_with_power_on_is_refused_and_left_alone(platform: Platform, capsys: pytest.CaptureFixture[str]) -> None:
    layout = platform.layout
    idle_and_unlatched(layout)
    started_before = platform.supervisor.info("i2c")["start"]
    power(layout, True)
    try:
        wait_for(lambda: pico(layout)["relays"]["power_on"], what="power on")
        wait_for(lambda: (view(layout.web_url("i2c") + "/relays") or (0, {}))[1].get("desired", {}).get("power_on"),
                 what="adapter knows the power is on")
        assert commission.main(layout.run_dir, "alice", as_json=True) == 1
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] is False and report["checks"] == []
        assert "not idle" in report["refused"] and "power_on" in report["refused"]
        # Nothing was touched: same adapter process, never stopped, the Pico untripped.
        info = platform.supervisor.info("i2c")
        assert info["statename"] == "RUNNING" and info["start"] == started_before
        assert pico(layout)["trip_latched"] is False
    finally:
        power(layout, False)
    wait_for(lambda: pico(layout)["relays"] == ALL_OFF, what="power off again")


def test_a_board_that_does_not_answer_fails_safe_and_the_adapter_runs_again(
    platform: Platform, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = platform.layout
    idle_and_unlatched(layout)
    sim_port = layout.ports["simulator"]
    sim.inject(sim_port, "i2c_nack")
    try:
        assert commission.main(layout.run_dir, "alice") == 1
        out = capsys.readouterr().out
        assert "REFUSED" in out and "the Pico does not answer" in out, out
        assert "could not confirm all-off" in out, "the report says the safe state was not confirmed"
        assert platform.supervisor.info("i2c")["statename"] == "RUNNING", "the adapter was started again"
    finally:
        sim.clear(sim_port, "i2c_nack")
    wait_for(lambda: i2c_ready(layout), timeout=30, what="I2C adapter ready once the board answers")
    board = pico(layout)
    assert board["relays"] == ALL_OFF and board["trip_latched"] is False
    assert http_json(layout.web_url("alarms") + "/latch")[1]["latched"] is False
