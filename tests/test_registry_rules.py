"""StateRegistry's rules over plain records: no Kafka, no clock."""

from __future__ import annotations

from streams.heartbeats import beat
from streams.lifecycle import Phase
from streams.records import Heartbeat
from streams.registry_rules import Registry, RegistryLimits

ALLOWED = {"bank": "bank", "alarms": "alarms"}
BOUND = 20.0


def hb(service: str, at: float, identity: str | None = None, phase: Phase = Phase.READY) -> Heartbeat:
    return beat(service, phase, 0.0, at, identity)


def kinds(verdicts: list) -> list[tuple[str, str]]:
    return [(v.kind, v.service) for v in verdicts]


def registry() -> Registry:
    return Registry(RegistryLimits(missing_after_s=BOUND))


def test_a_beating_service_is_never_missing() -> None:
    r = registry()
    for t in range(0, 60):
        assert r.on_beat(hb("bank", t), ALLOWED, t)[1] == []
        assert r.on_tick({"bank"}, t + 0.5, acting=True)[1] == []
    assert not r.services["bank"].missing


def test_a_silent_service_is_missing_after_the_bound_and_back_with_its_next_beat() -> None:
    r = registry()
    r.on_tick({"bank"}, 0.0, acting=True)
    r.on_beat(hb("bank", 1.0), ALLOWED, 1.0)
    assert r.on_tick({"bank"}, 1.0 + BOUND, acting=True)[1] == []
    changed, verdicts = r.on_tick({"bank"}, 1.1 + BOUND, acting=True)
    assert kinds(verdicts) == [("missing", "bank")] and changed[0].missing
    assert r.on_tick({"bank"}, 30.0, acting=True)[1] == [], "reported once"
    entry, verdicts = r.on_beat(hb("bank", 31.0), ALLOWED, 31.0)
    assert kinds(verdicts) == [("back", "bank")] and entry is not None and not entry.missing


def test_a_service_that_never_beats_is_missing_from_when_discovery_expected_it() -> None:
    r = registry()
    r.on_tick(set(), 0.0, acting=True)
    assert r.on_tick({"alarms"}, 100.0, acting=True)[1] == [], "just started: it has its bound to come up"
    assert kinds(r.on_tick({"alarms"}, 100.0 + BOUND + 0.1, acting=True)[1]) == [("missing", "alarms")]


def test_a_service_no_longer_expected_is_not_missing() -> None:
    r = registry()
    r.on_tick({"bank"}, 0.0, acting=True)
    r.on_tick({"bank"}, BOUND + 1, acting=True)
    assert r.services["bank"].missing
    assert kinds(r.on_tick(set(), BOUND + 2, acting=True)[1]) == [("back", "bank")]
    assert r.on_tick(set(), 100.0, acting=True)[1] == []


def test_nobody_is_missing_while_the_registry_does_not_act_nor_within_the_bound_after() -> None:
    r = registry()
    r.on_tick({"bank"}, 0.0, acting=True)
    r.on_beat(hb("bank", 0.0), ALLOWED, 0.0)
    assert r.on_tick({"bank"}, 100.0, acting=False)[1] == [], "latched: control services are down on purpose"
    assert r.on_tick({"bank"}, 101.0, acting=True)[1] == [], "acting again: the bound runs from now"
    assert kinds(r.on_tick({"bank"}, 101.0 + BOUND + 0.1, acting=True)[1]) == [("missing", "bank")]


def test_an_unknown_service_is_unauthorized_once_per_sender() -> None:
    r = registry()
    entry, verdicts = r.on_beat(hb("intruder", 5.0), ALLOWED, 6.0)
    assert entry is None and kinds(verdicts) == [("unauthorized", "intruder")]
    assert verdicts[0].at == 5.0, "the sender's beat time: a replay names the same FATAL occurrence"
    assert "not on the allowed list" in verdicts[0].message
    assert r.on_beat(hb("intruder", 5.5), ALLOWED, 6.5)[1] == []
    assert "intruder" not in r.services


def test_a_known_name_with_another_identity_is_unauthorized() -> None:
    r = registry()
    entry, verdicts = r.on_beat(hb("bank", 1.0, identity="mallory"), ALLOWED, 1.0)
    assert entry is None and kinds(verdicts) == [("unauthorized", "bank")]
    assert "identity 'mallory'" in verdicts[0].message
    assert "bank" not in r.services, "an impostor does not make the real service look alive"


def test_only_material_changes_are_written() -> None:
    r = registry()
    first, _ = r.on_beat(hb("bank", 1.0, phase=Phase.STARTING), ALLOWED, 1.0)
    same, _ = r.on_beat(hb("bank", 1.5, phase=Phase.STARTING), ALLOWED, 1.5)
    ready, _ = r.on_beat(hb("bank", 2.0), ALLOWED, 2.0)
    assert first is not None and same is None and ready is not None and ready.phase == "ready"
    assert r.services["bank"].seen_at == 2.0


def test_an_operator_stops_watching_a_missing_service() -> None:
    r = registry()
    r.on_tick({"bank"}, 0.0, acting=True)
    r.on_tick({"bank"}, BOUND + 1, acting=True)
    entry, verdicts = r.set_watched("bank", False, BOUND + 2)
    assert kinds(verdicts) == [("back", "bank")] and not entry.watched and not entry.missing
    assert r.on_tick({"bank"}, 100.0, acting=True)[1] == [], "unwatched: never missing"
    r.set_watched("bank", True, 101.0)
    assert kinds(r.on_tick({"bank"}, 101.5, acting=True)[1]) == [("missing", "bank")]


def test_a_service_restarted_while_the_registry_did_not_act_has_its_time_to_start() -> None:
    """The operator reset restarts the control services as the registry acts again: each is judged from its restart."""
    r = registry()
    r.on_tick({"bank"}, 0.0, acting=True)
    r.on_beat(hb("bank", 1.0), ALLOWED, 1.0)
    r.on_tick(set(), 2.0, acting=False)  # latched: the bank exits and stays down
    r.on_tick({"bank"}, 50.0, acting=False)  # the reset restarts it
    assert r.on_tick({"bank"}, 51.0, acting=True)[1] == []
    assert r.on_tick({"bank"}, 50.0 + BOUND - 0.1, acting=True)[1] == [], "judged from its restart at 50 s"
    assert kinds(r.on_tick({"bank"}, 51.0 + BOUND + 0.1, acting=True)[1]) == [("missing", "bank")]
