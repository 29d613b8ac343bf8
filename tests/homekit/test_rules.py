"""The bridge without a process: the accessory schema, the snapshot rules, and what the bridge may import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from homekit.schema import DEFAULT_SCHEMA, SchemaInvalid, load_schema, parse_schema
from homekit.snapshot import Snapshot


def test_the_shipped_schema_names_every_family() -> None:
    spec = load_schema(DEFAULT_SCHEMA)
    assert {a.kind for a in spec.accessories} == {"heater", "temperature", "alarm", "cutoff", "latch"}
    assert sorted(a.options["severity"] for a in spec.accessories if a.kind == "alarm") == ["CRITICAL", "FATAL", "WARNING"]


@pytest.mark.parametrize("entry, message", [
    ({"kind": "sprinkler", "name": "X"}, "unknown kind"),
    ({"kind": "temperature", "name": "X"}, "needs sensor"),
    ({"kind": "alarm", "name": "X", "severity": "INFO"}, "severity must be"),
    ({"kind": "latch", "name": " "}, "non-empty 'name'"),
])
def test_a_bad_entry_is_refused_with_its_place(entry: dict, message: str) -> None:
    with pytest.raises(SchemaInvalid, match=message) as refused:
        parse_schema({"accessories": [{"kind": "latch", "name": "Latch"}, entry]}, "s.json")
    assert "accessories[1]" in str(refused.value)


def test_a_name_used_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"accessories": [{"kind": "latch", "name": "A"}, {"kind": "cutoff", "name": "A"}]}))
    with pytest.raises(SchemaInvalid, match="used twice"):
        load_schema(path)


def test_snapshot_rules() -> None:
    snap = Snapshot({
        "sensors": {"a": {"value": 40.0, "status": 0}, "b": {"value": 60.0, "status": 1}, "c": {"value": 41.0, "status": 0}},
        "relays": {"power_on": False, "valve_open": True, "trip_latched": False},
        "heating": {"job_id": "j", "state": "heating", "target_c": 45.0},
        "alarms": [{"alarm_id": "x/y", "severity": "WARNING"}],
        "latch": {"latched": False},
    })
    assert snap.water_temperature(["a", "b", "c"]) == 41.0  # the median: one wrong sensor does not move it
    assert snap.sensor_faulty("b") and not snap.sensor_faulty("a") and snap.sensor_faulty("missing")
    assert snap.power_cut is False  # power off at rest is not a cut-off
    assert snap.job_running and snap.burner_on
    assert [a["alarm_id"] for a in snap.active_alarms("WARNING")] == ["x/y"] and not snap.active_alarms("FATAL")
    assert Snapshot({}).power_cut is None
    assert not Snapshot({"heating": {"state": "done"}}).job_running


def test_the_bridge_imports_no_adapter_no_simulator_no_runtime() -> None:
    """DESIGN: the bridge reaches the platform only through its feed and commands."""
    code = ("import sys, homekit.service; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('adapters', 'simulator', 'heater', 'tests', 'bench')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
