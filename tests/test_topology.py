"""The communication matrix (streams/topology.py) against what the code really uses.

Faust services are imported (no I/O) and their agents' subscriptions, internal topics
and table changelogs compared with the declaration; every module of a service is read
for the ``topics.NAME`` constants it names, each of which must be declared read or
written. The Kafka ACLs in ``deploy/`` are rendered from the declaration, so a topic a
service starts using without declaring it fails here, not on the Pi.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from heater import catalogue
from streams import topics, topology
from streams.platform_watch import WATCHED
from streams.worker import SERVICE_MODULES, load_service

ROOT = Path(__file__).resolve().parent.parent

#: The modules that make up each service (beyond the shared plumbing covered by WATCHED/REPORTS).
SOURCES: dict[str, tuple[str, ...]] = {
    "config": ("streams/agents/config.py",),
    "registry": ("streams/agents/registry.py",),
    "exceptions": ("streams/agents/exceptions.py",),
    "alarms": ("streams/agents/alarms.py", "streams/homekit_feed.py"),
    "bank": ("streams/agents/bank.py",),
    "disaster": ("streams/agents/disaster.py",),
    "can": ("adapters/can/service.py",),
    "i2c": ("adapters/i2c/service.py", "adapters/i2c/resets.py"),
    "homekit": ("homekit/service.py", "streams/heating/controller.py"),
    "secrets": ("streams/secrets_rotator.py",),
    "heating-job": ("streams/heating/job.py",),
}

SPEC_NAMES = {name for name, value in vars(topics).items() if isinstance(value, topics.TopicSpec)}


def named_topics(path: str) -> set[str]:
    """Topic names a module refers to as ``topics.CONSTANT`` (or through an alias of one)."""
    tree = ast.parse((ROOT / path).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "topics":
            if node.attr in SPEC_NAMES:
                found.add(getattr(topics, node.attr).name)
    return found


def test_every_platform_service_is_declared_once() -> None:
    assert [s.name for s in topology.SERVICES] == list(dict.fromkeys(s.name for s in topology.SERVICES))
    assert set(topology.BY_NAME) == set(catalogue.platform_services())
    assert set(SOURCES) == set(topology.BY_NAME)


def test_declared_topics_exist() -> None:
    for service in topology.SERVICES:
        assert set(service.produces) | set(service.consumes) <= set(topics.BY_NAME), service.name


def test_shared_plumbing_matches_the_platform_watch() -> None:
    assert set(WATCHED) == set(topology.WATCHED)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_topic_a_service_names_is_declared(name: str) -> None:
    service = topology.BY_NAME[name]
    used = set().union(*(named_topics(path) for path in SOURCES[name]))
    assert used <= service.reads | service.writes, sorted(used - service.reads - service.writes)


@pytest.mark.parametrize("name", sorted(SERVICE_MODULES))
def test_faust_apps_match_the_declaration(name: str) -> None:
    declared = topology.BY_NAME[name]
    app = load_service(name).app
    assert declared.faust and app.conf.id == topology.app_id(name) == declared.group
    changelogs = {table.changelog_topic.get_topic_name() for table in app.tables.values()}
    assert changelogs == set(declared.changelogs)
    subscribed = set().union(*(agent.channel.topics for agent in app.agents.values()))
    assert set(declared.consumes) == subscribed | set(_side_readers(name))


def _side_readers(name: str) -> tuple[str, ...]:
    """Topics a Faust service reads outside its agents (plain readers), by design."""
    return {
        "alarms": (topics.SENSOR_DATA.name, topics.HEATING_STATE.name),  # the HomeKit feed, readings_end()
    }.get(name, ())


def test_only_faust_services_have_tables_and_groups() -> None:
    for service in topology.SERVICES:
        assert service.faust == (service.name in SERVICE_MODULES), service.name
        if not service.faust:
            assert service.tables == () and service.group is None
