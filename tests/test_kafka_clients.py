"""Every plain Kafka client comes from :mod:`streams.kafka_clients`, with the profile's security."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

from streams import kafka_clients
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("streams", "adapters", "heater", "homekit", "simulator", "deploy")
CLIENTS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}
#: The only modules that may construct a client: the factory, and the local broker's own
#: runtime (it exists only in the local profile, where the broker is plaintext on 127.0.0.1).
ALLOWED = {"streams/kafka_clients.py", "heater/runtime/broker.py"}


def constructions(path: Path) -> list[int]:
    """Lines of ``path`` that call a Kafka client class (by name or attribute)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if called in CLIENTS:
                lines.append(node.lineno)
    return lines


def test_no_module_but_the_factory_builds_a_kafka_client() -> None:
    found = {
        f"{path.relative_to(ROOT)}:{line}"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if str(path.relative_to(ROOT)) not in ALLOWED
        for line in constructions(path)
    }
    assert not found, f"build these clients with streams.kafka_clients: {sorted(found)}"


def test_every_client_gets_the_bootstrap_and_the_security(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    production = Settings(profile="production", broker_url="kafka://kafka.heater:9093").with_overrides(
        broker_security_protocol="SASL_SSL", broker_sasl_username="heater", broker_sasl_password_file=str(secret))

    async def build() -> tuple[Any, Any]:  # aiokafka clients belong to a running loop
        return kafka_clients.producer(settings=production), kafka_clients.consumer("other:9093", settings=production)

    producer, consumer = asyncio.run(build())
    assert producer.client._bootstrap_servers == "kafka.heater:9093"
    assert consumer._client._bootstrap_servers == "other:9093"
    for client in (producer.client, consumer._client):
        assert client._security_protocol == "SASL_SSL" and client._ssl_context is not None
        assert client._sasl_plain_username == "heater"
    assert kafka_clients.options(settings=Settings(broker_url="tansu://127.0.0.1:9999")) == {
        "bootstrap_servers": "127.0.0.1:9999"}


def test_security_follows_the_profile(tmp_path: Path) -> None:
    assert kafka_clients.security(Settings()) == {}
    production = Settings(profile="production")
    assert kafka_clients.security(production) == {"security_protocol": "PLAINTEXT"}
    ssl_only = kafka_clients.security(production.with_overrides(broker_security_protocol="SSL"))
    assert ssl_only["security_protocol"] == "SSL" and ssl_only["ssl_context"] is not None
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    sasl = kafka_clients.security(production.with_overrides(
        broker_security_protocol="SASL_SSL", broker_sasl_username="heater", broker_sasl_password_file=str(secret)))
    assert sasl["security_protocol"] == "SASL_SSL" and sasl["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (sasl["sasl_plain_username"], sasl["sasl_plain_password"]) == ("heater", "s3cret")
    assert sasl["ssl_context"] is not None


