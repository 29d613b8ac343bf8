"""The bridge without a process: the accessory schema, the snapshot rules, service accessories and their AIDs,
the feed's table mirror, and what the bridge may import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from homekit.schema import DEFAULT_SCHEMA, SchemaInvalid, load_schema, parse_schema
from homekit.snapshot import Snapshot


def test_the_shipped_schema_names_every_family() -> None:
    spec = load_schema(DEFAULT_SCHEMA)
    assert {a.kind for a in spec.accessories} == {"heater", "temperature", "alarm", "cutoff", "latch", "exceptions"}
    assert spec.services is not None and spec.services.name("bank") == "Service bank"
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


# -- services and the exceptions count ---------------------------------------------------

from homekit.accessories.base import CONTACT_DETECTED, CONTACT_NOT_DETECTED  # noqa: E402
from homekit.accessories.exceptions import MIN_LEVEL, level  # noqa: E402
from homekit.accessories.services import ServiceLook, changes, look  # noqa: E402
from homekit.aids import RESERVED, AidStore, choose_aid, fnv1a_32  # noqa: E402
from streams.homekit_feed import FeedState, exception_counts, newest_per_key  # noqa: E402
from streams.records import SensorReading  # noqa: E402
from streams.registry_rules import ServiceEntry  # noqa: E402
from streams.table_mirror import TableMirror  # noqa: E402
from streams.tables.exceptions import SenderStats  # noqa: E402


@pytest.mark.parametrize("entry, shown", [
    ({"kind": "services"}, "name_format"),
    ({"kind": "services", "name_format": "Service"}, "name_format"),
    ({"kind": "services", "name_format": "{name} {other}"}, "names more than"),
])
def test_a_bad_services_template_is_refused(entry: dict, shown: str) -> None:
    with pytest.raises(SchemaInvalid, match=shown):
        parse_schema({"accessories": [{"kind": "latch", "name": "Latch"}, entry]})


def test_one_services_template_at_most() -> None:
    entry = {"kind": "services", "name_format": "S {name}"}
    with pytest.raises(SchemaInvalid, match="second 'services'"):
        parse_schema({"accessories": [{"kind": "latch", "name": "Latch"}, entry, entry]})
    assert parse_schema({"accessories": [{"kind": "latch", "name": "Latch"}]}).services is None


def row(name: str, **fields: object) -> dict:
    return ServiceEntry(name, **fields).to_row()  # type: ignore[arg-type]


def test_snapshot_shows_watched_services_and_the_exception_total() -> None:
    snap = Snapshot({"services": {"bank": row("bank", phase="ready"), "can": row("can", watched=False)},
                     "exceptions": {"total": 3}})
    assert list(snap.services or {}) == ["bank"]  # one the operator stopped watching is not shown
    assert snap.exceptions_total == 3
    assert Snapshot({}).services is None and Snapshot({}).exceptions_total is None  # not known yet


@pytest.mark.parametrize("fields, expected", [
    ({"phase": "ready"}, ServiceLook(CONTACT_DETECTED, True, False)),
    ({"phase": "halted"}, ServiceLook(CONTACT_DETECTED, False, False)),  # up on purpose after a FATAL, not acting
    ({"phase": "starting"}, ServiceLook(CONTACT_DETECTED, False, False)),
    ({"phase": "ready", "missing": True}, ServiceLook(CONTACT_NOT_DETECTED, False, True)),
])
def test_a_services_look_is_the_registrys_verdict(fields: dict, expected: ServiceLook) -> None:
    assert look(row("bank", **fields)) == expected


def test_an_unknown_service_is_a_fault() -> None:
    assert look(None).fault


def test_accessories_to_add_and_remove() -> None:
    assert changes({"a", "b"}, {"b", "c", "d"}) == (["c", "d"], ["a"])
    assert changes({"a"}, {"a"}) == ([], [])


def test_a_count_as_a_light_level() -> None:
    assert level(0) == MIN_LEVEL and level(12) == 12.0 and level(10**9) == 100000.0


def test_aids_are_derived_from_the_name_kept_and_probed_past_collisions(tmp_path: Path) -> None:
    assert fnv1a_32(b"") == 0x811C9DC5 and fnv1a_32(b"a") == 0xE40C292C  # the published test vectors
    first = choose_aid("service:bank", set())
    assert choose_aid("service:bank", {first}) != first and first not in RESERVED
    store = AidStore(tmp_path)
    bank = store.aid_for("service:bank", {1, 2, 3})
    can = store.aid_for("service:can", {1, 2, 3, bank})
    store.set_shown(["service:can"])
    again = AidStore(tmp_path)  # a restarted bridge
    assert again.aid_for("service:bank", {1, 2, 3}) == bank and again.aid_for("service:can", {1, 2, 3}) == can
    assert again.shown == ["service:can"]
    assert (tmp_path / "aids.json").stat().st_mode & 0o077 == 0


def test_a_table_mirror_keeps_each_keys_latest_row_and_forgets_deleted_ones() -> None:
    mirror = TableMirror("t")
    assert mirror.apply(b'"bank"', json.dumps(row("bank")).encode())
    assert not mirror.apply(b'"bank"', json.dumps(row("bank")).encode())  # the same row: no change
    assert mirror.apply(b'"can"', json.dumps(row("can")).encode())
    assert mirror.apply(b'"can"', None)  # a tombstone
    assert not mirror.apply(b"not json", b"{}") and not mirror.apply(b"1", b"{}")
    assert mirror.rows is None  # not read to the end yet
    mirror.caught_up = True
    assert list(mirror.rows or {}) == ["bank"]


def test_exception_counts_are_exceptionservers_totals() -> None:
    rows = {"bank": SenderStats("bank", True, 2).__dict__, "?x": SenderStats("x", False, 1).__dict__}
    assert exception_counts(rows) == {"total": 3, "unknown_senders": 1, "services": {"bank": 2, "?x": 1}}
    assert exception_counts(None) is None


def bridge_env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"HEATER_RUN_DIR": str(tmp_path), "HEATER_HOMEKIT_FEED_URL": "ws://127.0.0.1:1/homekit/feed",
            **{f"HEATER_HOMEKIT_{k.upper()}": v for k, v in values.items()}}


async def test_the_bridge_listens_on_its_address_and_announces_the_advertised_one(tmp_path: Path) -> None:
    """In a pod on the node's network: HAP listens on every interface, mDNS names the node's LAN address."""
    import asyncio

    from pyhap.accessory import Bridge

    from heater.runtime.processes import free_port
    from homekit.config import BridgeSettings
    from homekit.service import hap_driver

    port = free_port()
    config = BridgeSettings.from_env(bridge_env(tmp_path, address="127.0.0.1", advertised_address="192.0.2.7",
                                                port=str(port), state_dir=str(tmp_path / "hk")))
    config.state_dir.mkdir()
    driver = hap_driver(config, "031-45-154", asyncio.get_running_loop())
    driver.add_accessory(Bridge(driver, "Heater"))
    await driver.async_start()
    try:
        info = driver.mdns_service_info
        assert (info.parsed_addresses(), info.port) == (["192.0.2.7"], port)  # what a phone is told
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)  # where HAP listens
        writer.close()
    finally:
        await driver.async_stop()


def test_a_bind_everywhere_address_is_never_announced(tmp_path: Path) -> None:
    from homekit.config import BridgeSettings
    from streams.settings import SettingsError

    with pytest.raises(SettingsError, match="HEATER_HOMEKIT_ADVERTISED_ADDRESS"):
        BridgeSettings.from_env(bridge_env(tmp_path, address="0.0.0.0", mdns="all"))
    config = BridgeSettings.from_env(bridge_env(tmp_path, address="0.0.0.0", mdns="all", advertised_address="192.0.2.7"))
    assert (config.address, config.advertised_address) == ("0.0.0.0", "192.0.2.7")
    assert BridgeSettings.from_env(bridge_env(tmp_path, address="127.0.0.1")).advertised_address == "127.0.0.1"


def test_a_display_fetch_keeps_each_keys_newest_message_and_the_feed_shows_it() -> None:
    """A flooded bus: of one fetch's readings the feed decodes each sensor's newest only, and shows that."""
    def reading(sensor: str, value: float, at: float) -> SimpleNamespace:
        record = SensorReading(sensor=sensor, kind="temperature", value=value, unit="C", received_at=at, sequence=int(at))
        return SimpleNamespace(key=sensor.encode(), value=record.dumps())

    batch = [reading(f"water.{n % 3}", 40.0 + n / 10, 1000.0 + n) for n in range(900)]
    batch.insert(5, SimpleNamespace(key=None, value=b"{}"))
    kept = list(newest_per_key(batch))
    assert [m.key for m in kept] == [b"water.0", b"water.1", b"water.2", None]
    state = FeedState()
    for message in kept:
        state.apply("sensorData", message.value)
    assert {s: row["value"] for s, row in state.sensors.items()} == {f"water.{n % 3}": 40.0 + n / 10 for n in (897, 898, 899)}
    assert state.sensors["water.2"]["received_at"] == 1899.0
