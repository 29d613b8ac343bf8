"""Control API validation and the ``sim`` CLI commands."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from simulator import client
from simulator.cli import CONTROL_PORT_ENV, add_sim_commands

SimProcess = Any  # the `sim` fixture's handle (tests/simulator/conftest.py)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="heater")
    add_sim_commands(root.add_subparsers(dest="command", required=True))
    return root


@pytest.mark.parametrize(
    ("fault", "kwargs", "reason"),
    [
        ("melted_tank", {}, "unknown fault"),
        ("stuck_sensor", {"sensor": 3}, "outside"),
        ("stuck_valve", {"sensor": 0}, "does not take a sensor"),
        ("overtemp", {"value": 400}, "outside"),
        ("garbage_frames", {"rate": 0}, "outside"),
        ("noisy_sensor", {"volume": 11}, "no parameter"),
    ],
)
def test_bad_injections_are_refused_with_a_reason(
    shared_sim: SimProcess, fault: str, kwargs: dict[str, Any], reason: str
) -> None:
    with pytest.raises(client.SimulatorError) as info:
        client.inject(shared_sim.control_port, fault, **kwargs)
    assert info.value.status == 400 and reason in str(info.value)


def test_fault_name_with_sensor_suffix_and_clear_one(sim: SimProcess) -> None:
    client.inject(sim.control_port, "noisy_sensor:2", sigma=3)
    client.inject(sim.control_port, "stuck_sensor")
    faults = {(f["fault"], f["sensor"]) for f in sim.state()["faults"]}
    assert faults == {("noisy_sensor", 2), ("stuck_sensor", None)}
    assert [f["fault"] for f in client.clear(sim.control_port, "noisy_sensor:2")] == ["noisy_sensor"]
    assert [f["fault"] for f in sim.state()["faults"]] == ["stuck_sensor"]
    client.set_temperature(sim.control_port, 60)
    assert sim.state()["heater"]["water_temperature"] >= 59.5
    with pytest.raises(client.SimulatorError):
        client.burst(sim.control_port, count=0)


def test_cli_commands(sim: SimProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(CONTROL_PORT_ENV, str(sim.control_port))
    args = parser().parse_args(["sim", "inject", "overtemp", "--sensor", "1", "--value", "91.5"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["value"] == 91.5
    args = parser().parse_args(["sim", "state"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "overtemp:1" in out and "power=cut" in out
    args = parser().parse_args(["sim", "state", "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["pico"]["trip_latched"] is False
    args = parser().parse_args(["sim", "clear"])
    assert args.func(args) == 0
    assert sim.state()["faults"] == []
    args = parser().parse_args(["sim", "inject", "nonsense", "--control-port", str(sim.control_port)])
    assert args.func(args) == 2


def test_cli_run_parses_simulator_flags() -> None:
    args = parser().parse_args(["sim", "run", "--run-dir", "/tmp/x", "--can-port", "5000", "--watchdog-ms", "300"])
    assert (args.can_port, args.i2c_port, args.watchdog_ms) == (5000, 0, 300)
    with pytest.raises(SystemExit):
        parser().parse_args(["sim", "run", "--run-dir", "/tmp/x", "--watchdog-ms", "5"])
