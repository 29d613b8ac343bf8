"""One trace follows a FATAL from the CAN frame to the power cut, on the real local platform.

Built on ``bench/fatal_latency.py``'s set-up: the whole platform (broker, Vault, every
service, the simulated hardware) with the default ``file`` span exporter; one water sensor
crosses ``fatal_c`` on the CAN bus; the CAN adapter's own limit check raises FATAL as the
frame arrives (:mod:`streams.fatal_limit`); AlarmsServer and the I2C adapter act on it and
the Pico trips. The spans the services wrote under the run
directory must hold one trace with every hop of that path, once each, and its times must
agree with the bench's own measurement (the simulator's frame time, the Pico's cut time).

One platform serves every repetition (``--count N``): each starts with the operator reset
of the previous one's FATAL, and the sensors take turns, as in the bench.
"""

from __future__ import annotations

import io
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Iterator

import pytest

from bench.fatal_latency import Bench
from heater import traces
from streams.heater_config import WATER_SENSORS, HeaterLimits

#: The hops of the FATAL path, each one span: (service, span name).
FATAL_HOPS = [
    ("can", "FATAL limit"),           # frame received → over the FATAL limit → FATAL alarm sent
    ("alarms", "createAlarm process"),  # AlarmsServer latches the platform, commands the cut-off
    ("i2c", "FATAL trip"),            # the I2C adapter acts on the FATAL it sees on createAlarm
    ("i2c", "relay write"),           # ... by tripping the Pico (the power relay write)
]
SPANS_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    running = Bench(tmp_path_factory.mktemp("trace-e2e"), HeaterLimits.from_env())
    try:
        running.start_platform()
        yield running
    finally:
        running.stop_platform()


@pytest.fixture(scope="module")
def rounds() -> list[int]:
    return []


def fatal_trace(run_dir: Path, trial: dict[str, Any]) -> list[dict[str, Any]]:
    """The trace in which AlarmsServer handled this trial's FATAL, once every hop's span is written."""
    alarm_id = f"can/overtemp-fatal/{WATER_SENSORS[trial['sensor']]}"
    deadline = time.monotonic() + SPANS_TIMEOUT_S
    while True:
        found = traces.by_trace(traces.read_spans(traces.span_files(run_dir / "traces")))
        for spans in found.values():
            if any(s["service"] == "alarms" and s["attributes"].get("heater.alarm_id") == alarm_id
                   and s["attributes"].get("heater.severity") == "FATAL" and s["start_ns"] / 1e9 >= trial["first_frame_at"]
                   for s in spans):
                if {(s["service"], s["name"]) for s in spans} >= set(FATAL_HOPS) or time.monotonic() > deadline:
                    return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"no trace with the FATAL {alarm_id} in {run_dir / 'traces'}")
        time.sleep(0.5)


def test_one_trace_follows_a_fatal_from_the_can_frame_to_the_power_cut(bench: Bench, rounds: list[int]) -> None:
    if bench.latched:
        bench.reset_in_place()
    sensor = bench.pick_sensor(len(rounds))
    if sensor is None:  # the bank holds every sensor's FATAL after the resets (the bench's rule): a fresh platform
        bench.start_platform()
        sensor = bench.pick_sensor(len(rounds))
    assert sensor is not None
    rounds.append(sensor)
    trial = bench.fatal_trial(sensor)
    assert trial is not None, f"no trip for an over-temperature on water.{sensor}"

    spans = fatal_trace(bench.layout.run_dir, trial)
    hops = {(s["service"], s["name"]): s for s in spans}
    assert set(FATAL_HOPS) <= set(hops), f"hops missing: {sorted(set(FATAL_HOPS) - set(hops))}"
    per_hop: dict[tuple[str, str, str], int] = {}
    for s in spans:
        key = (s["service"], s["name"], str(s["attributes"].get("heater.alarm_id", "")))
        per_hop[key] = per_hop.get(key, 0) + 1
    assert all(n == 1 for n in per_hop.values()), f"a hop with more than one span: {per_hop}"

    can, alarms, trip, write = (hops[h] for h in FATAL_HOPS)
    # The trace starts at the frame that crossed the limit.
    assert can["attributes"]["heater.sensor"] == WATER_SENSORS[sensor]
    assert can["attributes"]["can.sequence"] == trial["sequence"]
    assert can["parent_id"] is None
    assert trip["attributes"]["heater.reason"].startswith("FATAL")
    assert write["parent_id"] == trip["span_id"] and write["attributes"]["heater.trip_latched"] is True
    assert write["attributes"]["heater.contacts.power_on"] is False

    # The times agree with the bench's: the frame leaves the simulator before the adapter has it,
    # and the Pico cuts the power inside the relay write (every process on this machine's clock).
    slack_s = 0.005
    assert can["start_ns"] / 1e9 >= trial["first_frame_at"] - slack_s
    assert can["start_ns"] <= alarms["start_ns"]
    assert can["start_ns"] <= trip["start_ns"] <= write["start_ns"]
    assert write["start_ns"] / 1e9 - slack_s <= trial["cut_at"] <= write["end_ns"] / 1e9 + slack_s

    out = io.StringIO()
    with redirect_stdout(out):
        assert traces.main(bench.layout.run_dir, can["trace_id"]) == 0
    timeline = out.getvalue()
    print(f"\nFATAL on water.{sensor}: {trial['latency_s'] * 1000:.1f} ms frame to cut\n{timeline}")
    for service, name in FATAL_HOPS:
        assert any(service in line and name in line for line in timeline.splitlines()), (service, name, timeline)
