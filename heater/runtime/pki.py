"""The local platform's CA, in Vault's PKI engine: a root, an intermediate that issues, one role per subject.

The root signs only the intermediate; the intermediate issues every certificate. Each
subject (a service, the heating job, the operator's CLI) has a role that allows exactly its
own name, so whoever holds the right to issue for one subject cannot issue for another.
Keys are EC P-256: quick to make on a Pi. Certificates carry the subject as common name and
DNS name, and ``127.0.0.1`` (every local API listens there), and serve as server and
client certificates alike. The intermediate publishes its CRL at ``pki_int/crl/pem``
(read by every service, :mod:`streams.tls`).

Files are written the way cert-manager fills a Secret (``tls.crt`` with the intermediate,
``tls.key``, ``ca.crt``), each replaced atomically, the key before the certificate: a
service that looks between the two sees a pair that does not match and waits for the next
look (:meth:`streams.tls.ServiceTLS.reload_if_changed`).
"""

from __future__ import annotations

import os
from pathlib import Path

import hvac

from heater.catalogue import platform_services
from streams.tls import CA_FILE, CERT_FILE, KEY_FILE

ROOT_MOUNT = "pki"
MOUNT = "pki_int"
#: The subject of the operator's CLI (and of the test harness, which stands in for the operator).
CLI_SUBJECT = "heater-cli"
#: How long a certificate lives; the SecretsRotator renews it after two thirds.
CERT_TTL = "24h"
MAX_TTL = "720h"


def tls_subjects() -> tuple[str, ...]:
    return platform_services() + (CLI_SUBJECT,)


def tls_dir(secrets_dir: Path, subject: str) -> Path:
    """Where ``subject``'s certificate files live under a run directory's secrets."""
    return secrets_dir / "tls" / subject


def issue_role(subject: str) -> str:
    """The path that issues ``subject``'s certificates (one Vault policy line grants it)."""
    return f"{MOUNT}/issue/{subject}"


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


def ca_chain(vault: hvac.Client) -> str:
    """The root and the intermediate, PEM: what every party trusts."""
    root = vault.read(f"{ROOT_MOUNT}/cert/ca")["data"]["certificate"]
    intermediate = vault.read(f"{MOUNT}/cert/ca")["data"]["certificate"]
    return root.strip() + "\n" + intermediate.strip() + "\n"


def issue(vault: hvac.Client, subject: str, directory: Path, ttl: str = CERT_TTL) -> int:
    """A new certificate for ``subject`` into ``directory``; returns its serial."""
    data = vault.write(issue_role(subject), common_name=subject, alt_names=subject, ip_sans="127.0.0.1",
                       ttl=ttl)["data"]
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _replace(directory / KEY_FILE, data["private_key"])
    _replace(directory / CERT_FILE, data["certificate"].strip() + "\n" + data["issuing_ca"].strip() + "\n")
    _replace(directory / CA_FILE, ca_chain(vault))
    return int(data["serial_number"].replace(":", ""), 16)


def issue_all(vault: hvac.Client, secrets_dir: Path, ttl: str = CERT_TTL) -> None:
    for subject in tls_subjects():
        issue(vault, subject, tls_dir(secrets_dir, subject), ttl)


def revoke(vault: hvac.Client, serial: int) -> None:
    """Revoke one certificate; services refuse it from their next CRL fetch."""
    hex_serial = f"{serial:x}"
    hex_serial = ("0" * (len(hex_serial) % 2)) + hex_serial
    vault.write(f"{MOUNT}/revoke", serial_number=":".join(hex_serial[i:i + 2] for i in range(0, len(hex_serial), 2)))


def _replace(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (0600: these are secrets)."""
    temporary = path.with_name(f".{path.name}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temporary, path)
