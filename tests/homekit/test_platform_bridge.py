"""The bridge as `heater up` runs it: last stage of the whole local platform, on the simulated heater.

`heater status --json` gives the address, port and setup code; a controller paired with
them reads the simulated water temperatures as the CAN adapter puts them on sensorData.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Iterator

import pytest

from heater.catalogue import BY_NAME, STAGE_BRIDGE
from heater.platform import Platform
from heater.status import collect, render
from homekit.pairing import render as render_pairing
from tests.homekit.home_app import HomeApp
from tests.platform_view import running_platform

SENSORS = ("Water Temperature 1", "Water Temperature 2", "Water Temperature 3")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(tmp_path_factory.mktemp("homekit-platform")) as running:
        yield running


def test_heater_up_starts_the_bridge_last_and_status_reports_where_to_pair(platform: Platform) -> None:
    assert BY_NAME["homekit"].stage == STAGE_BRIDGE == max(c.stage for c in BY_NAME.values())
    report = collect(platform.layout.run_dir)
    assert report["ok"], render(report)
    homekit = report["homekit"]
    assert homekit["address"] == "127.0.0.1" and homekit["port"] == platform.layout.ports["homekit-hap"]
    assert len(homekit["setup_code"]) == 10 and homekit["feed_connected"] is True and homekit["mdns"] == "off"
    assert homekit["live"] is True
    text = render_pairing(homekit)
    assert homekit["setup_code"] in text and homekit["setup_uri"].startswith("X-HM://")
    assert "setup code" in render(report)


@pytest.fixture(scope="module")
async def home(platform: Platform) -> AsyncIterator[HomeApp]:
    homekit = (await asyncio.to_thread(collect, platform.layout.run_dir))["homekit"]
    app = HomeApp("127.0.0.1", homekit["port"])
    await app.pair(homekit["setup_code"])
    yield app
    await app.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_controller_reads_the_simulated_heater(home: HomeApp, platform: Platform) -> None:
    deadline = time.monotonic() + 20
    while True:
        seen = await home.read_all()
        temperatures = [seen[name]["CurrentTemperature"] for name in SENSORS]
        faults = {name: seen[name]["StatusFault"] for name in (*SENSORS, "Water Heater", "Power Cut-off", "FATAL Latch")}
        if all(t is not None and 0 < t < 100 for t in temperatures) and set(faults.values()) == {0}:
            break
        assert time.monotonic() < deadline, (temperatures, faults)
        await asyncio.sleep(0.5)
    assert seen["Power Cut-off"]["ContactSensorState"] == 0  # power on: the board reports it
    assert seen["FATAL Latch"]["ContactSensorState"] == 0
    print(f"\nsimulated water as the Home app reads it: {temperatures}")
