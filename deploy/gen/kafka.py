"""Strimzi ``KafkaTopic``s and ``KafkaUser``s from the topic declaration and the communication matrix."""

from __future__ import annotations

from typing import Any

from deploy.gen.common import KAFKA_CLUSTER, NAMESPACE, kube_name, labels
from streams import topics, topology

STRIMZI = "kafka.strimzi.io/v1beta2"


def changelog_specs() -> tuple[topics.TopicSpec, ...]:
    """Faust's table changelogs, laid out as Faust declares them: one partition, compacted."""
    return tuple(topics.TopicSpec(name, partitions=1, compacted=True, purpose="table changelog")
                 for name in topology.internal_topics())


def kafka_topic(spec: topics.TopicSpec) -> dict[str, Any]:
    return {
        "apiVersion": STRIMZI,
        "kind": "KafkaTopic",
        "metadata": {
            "name": kube_name(spec.name),
            "namespace": NAMESPACE,
            "labels": {"strimzi.io/cluster": KAFKA_CLUSTER, **labels("kafka-topics", "kafka")},
            "annotations": {"heater.local/purpose": spec.purpose},
        },
        "spec": {
            "topicName": spec.name,
            "partitions": spec.partitions,
            "replicas": 1,
            "config": dict(spec.config),
        },
    }


def topic_documents() -> list[dict[str, Any]]:
    return [kafka_topic(spec) for spec in (*topics.ALL_TOPICS, *changelog_specs())]


def _acl(kind: str, name: str, operations: list[str]) -> dict[str, Any]:
    return {"resource": {"type": kind, "name": name, "patternType": "literal"}, "operations": operations, "host": "*"}


def acls(service: topology.ServiceTopics) -> list[dict[str, Any]]:
    """Least privilege: Read where it consumes, Write where it produces, Create only its own changelogs."""
    rules = []
    own = set(service.changelogs)
    for name in sorted(service.reads | service.writes):
        operations = ["Describe"]
        if name in service.reads:
            operations.append("Read")
        if name in service.writes:
            operations.append("Write")
        if name in own:
            operations.append("Create")  # a changelog the broker lost is declared again by the service
        rules.append(_acl("topic", name, sorted(operations)))
    if service.group is not None:
        rules.append(_acl("group", service.group, ["Describe", "Read"]))
    return rules


def kafka_user(service: topology.ServiceTopics) -> dict[str, Any]:
    """A TLS client user: the User Operator issues its certificate into a Secret of the same name."""
    return {
        "apiVersion": STRIMZI,
        "kind": "KafkaUser",
        "metadata": {
            "name": service.name,
            "namespace": NAMESPACE,
            "labels": {"strimzi.io/cluster": KAFKA_CLUSTER, **labels(service.name, "kafka-user")},
        },
        "spec": {
            "authentication": {"type": "tls"},
            "authorization": {"type": "simple", "acls": acls(service)},
        },
    }


def user_documents() -> list[dict[str, Any]]:
    return [kafka_user(service) for service in topology.SERVICES]
