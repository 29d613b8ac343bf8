"""Every plain Kafka client of the platform, built one way: the profile's bootstrap and security.

Faust builds its own clients from :func:`streams.settings.faust_options`. Every other
client — the readers that follow the latch and sensor data, the adapters' and HomeKit's
producers, the table restore, the I2C reset gate, the CLI tools — comes from here. So the
production profile's TLS (or SASL) reaches all of them: a client built by hand would speak
plaintext to a TLS-only listener and never connect. The local profile is plaintext on
127.0.0.1. A test keeps every other module from constructing a client itself.
"""

from __future__ import annotations

from typing import Any, Iterable, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.settings import Settings

ConsumerT = TypeVar("ConsumerT", bound=AIOKafkaConsumer)
#: ``host:port``, a list of them, or None for the settings' own.
Bootstrap = str | list[str] | None


def security(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments for the broker's TLS/SASL, from the settings the services use.

    The production profile's credentials are built once, in :mod:`streams.settings`, for
    Faust; Faust's own converter turns them into aiokafka arguments.
    """
    if settings.profile != "production":
        return {}
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.settings import production_security

    return dict(credentials_to_aiokafka_auth(production_security(settings).get("broker_credentials")))


def options(bootstrap: Bootstrap = None, settings: Settings | None = None) -> dict[str, Any]:
    """Bootstrap servers (``bootstrap`` over the settings') and security, for any client."""
    settings = settings or Settings.from_env()
    return {"bootstrap_servers": bootstrap or settings.broker_bootstrap, **security(settings)}


def producer(bootstrap: Bootstrap = None, *, settings: Settings | None = None, **kwargs: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**options(bootstrap, settings), **kwargs)


def consumer(bootstrap: Bootstrap = None, *, settings: Settings | None = None,
             cls: type[ConsumerT] = AIOKafkaConsumer, **kwargs: Any) -> ConsumerT:  # type: ignore[assignment]
    return cls(**options(bootstrap, settings), **kwargs)


def admin(bootstrap: Bootstrap = None, *, settings: Settings | None = None, **kwargs: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**options(bootstrap, settings), **kwargs)


async def log_ends(consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition], *, follow: bool = True,
                   settings: Settings | None = None) -> dict[TopicPartition, int]:
    """Where each partition's log ends now (the next offset to be written).

    The local broker's ``ListOffsets(latest)`` answer can lag its log, so under the local
    profile the answer is checked against the log's tail
    (:func:`streams.transport.true_end_offsets`; ``follow`` as there). A Kafka cluster's
    answer is taken as it is.
    """
    partitions = list(partitions)
    reported = await consumer.end_offsets(partitions)
    if (settings or Settings.from_env()).profile != "local":
        return dict(reported)
    from streams.transport import true_end_offsets

    return await true_end_offsets(consumer, reported, follow=follow)
