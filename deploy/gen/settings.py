"""The ``heater-settings`` ConfigMap: the production profile's ``HEATER_*`` variables, for every pod."""

from __future__ import annotations

from typing import Any

from deploy.gen.common import KAFKA_BOOTSTRAP, KAFKA_CA_DIR, NAMESPACE, PROBE_PORT, RUN_DIR, TLS_DIR, WEB_PORT, meta
from deploy.gen.vault import VAULT_ADDR
from streams.heating.k8s import JobTemplate

NAME = JobTemplate(image="").env_config_maps[0]

VALUES: dict[str, str] = {
    "HEATER_PROFILE": "production",
    "HEATER_BROKER_URL": f"kafka://{KAFKA_BOOTSTRAP}",
    "HEATER_BROKER_SECURITY_PROTOCOL": "SSL",
    "HEATER_BROKER_SSL_CAFILE": f"{KAFKA_CA_DIR}/ca.crt",
    "HEATER_VAULT_ADDR": VAULT_ADDR,
    "HEATER_RUN_DIR": RUN_DIR,
    "HEATER_WEB_HOST": "0.0.0.0",
    "HEATER_WEB_PORT": str(WEB_PORT),
    # The API needs a client certificate from the platform CA; every pod mounts its own Secret here.
    "HEATER_TLS": "on",
    "HEATER_TLS_DIR": TLS_DIR,
    "HEATER_PROBE_PORT": str(PROBE_PORT),
    "HEATER_NAMESPACE": NAMESPACE,
    # hvac (requests) trusts the platform CA for Vault's TLS through this.
    "REQUESTS_CA_BUNDLE": f"{TLS_DIR}/ca.crt",
}


def config_map() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(NAME, "settings"), "data": dict(VALUES)}
