"""The local platform's CA, in Vault's PKI engine: a root, an intermediate that issues, one role per subject.

The root signs only the intermediate; the intermediate issues every certificate. Each
subject (a service, the heating job, the operator's CLI) has a role that allows exactly its
own name, so whoever holds the right to issue for one subject cannot issue for another.
Keys are EC P-256: quick to make on a Pi. Certificates carry the subject as common name and
DNS name, and ``127.0.0.1`` (every local API listens there), and serve as server and
client certificates alike. The intermediate publishes its CRL at ``pki_int/crl/pem``
(read by every service, :mod:`streams.tls`).

Issuing and writing the files is :mod:`streams.pki`'s, shared with the SecretsRotator that
renews them.
"""

from __future__ import annotations

from pathlib import Path

import hvac

from heater.catalogue import platform_services
from streams.pki import CERT_TTL, MOUNT, ROOT_MOUNT, ca_chain, issue, issue_role, revoke
from streams.tls import CA_FILE, CERT_FILE, KEY_FILE

__all__ = ["CA_FILE", "CERT_FILE", "CERT_TTL", "CLI_SUBJECT", "KEY_FILE", "MOUNT", "ROOT_MOUNT", "ca_chain", "issue",
           "issue_all", "issue_role", "provision_pki", "revoke", "tls_dir", "tls_subjects"]

#: The subject of the operator's CLI (and of the test harness, which stands in for the operator).
CLI_SUBJECT = "heater-cli"
MAX_TTL = "720h"


def tls_subjects() -> tuple[str, ...]:
    return platform_services() + (CLI_SUBJECT,)


def tls_dir(secrets_dir: Path, subject: str) -> Path:
    """Where ``subject``'s certificate files live under a run directory's secrets."""
    return secrets_dir / "tls" / subject


def provision_pki(vault: hvac.Client, addr: str) -> None:
    """Root, intermediate, CRL address and one role per subject (idempotent: an existing CA is kept)."""
    mounts = vault.sys.list_mounted_secrets_engines().get("data", {})
    if f"{ROOT_MOUNT}/" not in mounts:
        vault.sys.enable_secrets_engine("pki", path=ROOT_MOUNT, config={"max_lease_ttl": "87600h"})
        vault.write(f"{ROOT_MOUNT}/root/generate/internal", common_name="heater local root CA",
                    key_type="ec", key_bits=256, ttl="87600h")
    if f"{MOUNT}/" not in mounts:
        vault.sys.enable_secrets_engine("pki", path=MOUNT, config={"max_lease_ttl": "8760h"})
        csr = vault.write(f"{MOUNT}/intermediate/generate/internal", common_name="heater local intermediate CA",
                          key_type="ec", key_bits=256)["data"]["csr"]
        signed = vault.write(f"{ROOT_MOUNT}/root/sign-intermediate", csr=csr, format="pem_bundle",
                             ttl="8760h")["data"]["certificate"]
        vault.write(f"{MOUNT}/intermediate/set-signed", certificate=signed)
        vault.write(f"{MOUNT}/config/urls", crl_distribution_points=[f"{addr}/v1/{MOUNT}/crl"],
                    issuing_certificates=[f"{addr}/v1/{MOUNT}/ca"])
    for subject in tls_subjects():
        vault.write(f"{MOUNT}/roles/{subject}", allowed_domains=[subject], allow_bare_domains=True,
                    allow_subdomains=False, allow_localhost=False, allow_ip_sans=True, server_flag=True,
                    client_flag=True, key_type="ec", key_bits=256, max_ttl=MAX_TTL)


def issue_all(vault: hvac.Client, secrets_dir: Path, ttl: str = CERT_TTL) -> None:
    for subject in tls_subjects():
        issue(vault, subject, tls_dir(secrets_dir, subject), ttl)
