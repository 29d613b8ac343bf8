"""Certificates from Vault's PKI engine, written the way cert-manager fills a Secret.

Shared by the local platform's provisioning (:mod:`heater.runtime.pki`, which also sets up
the CA) and the SecretsRotator (:mod:`streams.secrets_rotator`, which renews them). The
intermediate ``pki_int`` issues every certificate; each subject has a role that allows
exactly its own name. Certificates carry the subject as common name and DNS name, and
``127.0.0.1`` (every local API listens there).

Files (``tls.crt`` with the intermediate, ``tls.key``, ``ca.crt``) are each replaced
atomically — written beside, then renamed — the key before the certificate: a service that
looks between the two sees a pair that does not match and waits for the next look
(:meth:`streams.tls.ServiceTLS.reload_if_changed`).
"""

from __future__ import annotations

import os
from pathlib import Path

import hvac

from streams.tls import CA_FILE, CERT_FILE, KEY_FILE

ROOT_MOUNT = "pki"
MOUNT = "pki_int"
#: How long a certificate lives; the SecretsRotator renews it when a third is left.
CERT_TTL = "24h"


def issue_role(subject: str) -> str:
    """The path that issues ``subject``'s certificates (one Vault policy line grants it)."""
    return f"{MOUNT}/issue/{subject}"


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
    replace_private(directory / KEY_FILE, data["private_key"])
    replace_private(directory / CERT_FILE, data["certificate"].strip() + "\n" + data["issuing_ca"].strip() + "\n")
    replace_private(directory / CA_FILE, ca_chain(vault))
    return int(data["serial_number"].replace(":", ""), 16)


def revoke(vault: hvac.Client, serial: int) -> None:
    """Revoke one certificate; services refuse it from their next CRL fetch."""
    hex_serial = f"{serial:x}"
    hex_serial = ("0" * (len(hex_serial) % 2)) + hex_serial
    vault.write(f"{MOUNT}/revoke", serial_number=":".join(hex_serial[i:i + 2] for i in range(0, len(hex_serial), 2)))


def replace_private(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (0600: these are secrets)."""
    temporary = path.with_name(f".{path.name}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temporary, path)
