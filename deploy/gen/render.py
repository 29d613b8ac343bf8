"""Everything the generator writes: relative path under ``deploy/`` → file text."""

from __future__ import annotations

import json

import yaml

from deploy.gen import heating, kafka, services, settings, vault
from deploy.gen.common import GENERATED_HEADER, dump
from streams import topology
from streams.config_rules import document_of
from streams.heater_config import HeaterLimits

OUT = "base/generated"


def render() -> dict[str, str]:
    files = {
        "kafka-topics.yaml": dump(kafka.topic_documents(), "streams/topics.py, streams/topology.py"),
        "kafka-users.yaml": dump(kafka.user_documents(), "streams/topology.py"),
        "settings.yaml": dump([settings.config_map()], "streams/settings.py"),
        "heating-job.yaml": dump(heating.documents(), "streams/heating/k8s.py"),
        "operator-certificate.yaml": dump([services.operator_certificate()], "deploy/gen/services.py"),
        "vault-network-policy.yaml": dump([vault.vault_network_policy()], "deploy/gen/vault.py"),
        "vault-setup.sh": vault.setup_script({name: services.identity(name) for name in topology.BY_NAME}),
        "heater-config.json": json.dumps(document_of(HeaterLimits()), indent=2) + "\n",
    }
    for component in services.services():
        files[f"service-{component.name}.yaml"] = dump(services.documents(component), "heater/catalogue.py, streams/topology.py")
    resources = sorted(name for name in files if name.endswith(".yaml"))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
        "configMapGenerator": [
            {"name": "heater-config", "files": ["heater.json=heater-config.json"]},
            {"name": "vault-setup", "files": ["setup.sh=vault-setup.sh"]},
        ],
    }
    files["kustomization.yaml"] = GENERATED_HEADER.format(sources="deploy/gen") + yaml.safe_dump(kustomization, sort_keys=False)
    return {f"{OUT}/{name}": text for name, text in files.items()}
