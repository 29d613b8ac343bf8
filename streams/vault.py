"""Vault (OpenBao locally) for services: the client, and transit signatures.

Secrets come only from Vault; the token comes from a file whose path is in the
settings, never from the repo, a log or a topic. hvac is blocking, so calls run in a
thread with a timeout; a Vault that does not answer is a clear ``VaultUnavailable``.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import hvac
import requests

from streams.settings import Settings

RESET_SIGNING_KEY = "operator-reset"
TIMEOUT_S = 3.0


class VaultUnavailable(RuntimeError):
    """Vault is missing, unreachable or refuses us; the message says which and where."""


def vault_client(settings: Settings) -> hvac.Client:
    if settings.vault_token_file is None:
        raise VaultUnavailable("HEATER_VAULT_TOKEN_FILE is not set: no Vault credentials")
    try:
        token = settings.vault_token_file.read_text().strip()
    except OSError as exc:
        raise VaultUnavailable(f"cannot read the Vault token file {settings.vault_token_file}: {exc}") from None
    return hvac.Client(url=settings.vault_addr, token=token, timeout=TIMEOUT_S)


class TransitSigner:
    """Sign and verify with a Vault transit key (the private key never leaves Vault)."""

    def __init__(self, client: hvac.Client, key: str = RESET_SIGNING_KEY) -> None:
        self.client = client
        self.key = key

    async def sign(self, payload: bytes) -> str:
        answer = await self._call(
            self.client.secrets.transit.sign_data, name=self.key, hash_input=_b64(payload)
        )
        return answer["data"]["signature"]

    async def verify(self, payload: bytes, signature: str) -> bool:
        try:
            answer = await self._call(
                self.client.secrets.transit.verify_signed_data,
                name=self.key,
                hash_input=_b64(payload),
                signature=signature,
            )
        except hvac.exceptions.InvalidRequest:
            return False  # a malformed signature is simply not valid
        return bool(answer["data"]["valid"])

    async def _call(self, fn: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, **kwargs), TIMEOUT_S + 1)
        except (requests.RequestException, asyncio.TimeoutError, hvac.exceptions.VaultDown) as exc:
            raise VaultUnavailable(f"Vault at {self.client.url} did not answer: {exc}") from None
        except hvac.exceptions.Forbidden as exc:
            raise VaultUnavailable(f"Vault refused transit/{self.key}: {exc}") from None


def _b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode()


# -- API tokens from Vault's identity provider (streams.auth verifies them) -----------------

#: The signing key of API tokens, the OIDC role per platform role, and the token role that
#: binds a Vault token to a named entity (see ``heater.runtime.vault.provision_identity``).
API_TOKEN_KEY = "heater-api"
API_TOKEN_ROLE_PREFIX = "heater-"
IDENTITY_TOKEN_ROLE = "heater-identity"


def api_token_role(role: str) -> str:
    """The OIDC role (and the Vault policy) that issues tokens with ``role``: ``heater-operator``."""
    return API_TOKEN_ROLE_PREFIX + role


def read_api_token(client: hvac.Client, role: str) -> str:
    """A signed API token with ``role`` for the entity of ``client``'s token (its policies must allow it)."""
    try:
        answer = client.read(f"identity/oidc/token/{api_token_role(role)}")
    except hvac.exceptions.Forbidden:
        raise VaultUnavailable(f"Vault refuses an API token with role {role} to this identity") from None
    except (requests.RequestException, hvac.exceptions.VaultDown) as exc:
        raise VaultUnavailable(f"Vault at {client.url} did not answer: {type(exc).__name__}") from None
    except hvac.exceptions.InvalidRequest as exc:  # e.g. a token without an entity (root)
        raise VaultUnavailable(f"Vault cannot issue an API token for this Vault token: {exc}") from None
    return answer["data"]["token"]


def issue_api_token(client: hvac.Client, name: str, role: str, ttl: str = "5m") -> str:
    """As an administrator of Vault (``client``): an API token with ``role`` for the entity ``name``.

    Makes sure the entity exists with an alias on the token auth method, creates a short-lived
    Vault token bound to it with the role's policy, and has Vault issue the signed token with it.
    Used for the local platform's users (``heater login``) and its services' own calls.
    """
    try:
        entity = _ensure_entity(client, name)
        child = client.write(f"auth/token/create/{IDENTITY_TOKEN_ROLE}", policies=[api_token_role(role)],
                             entity_alias=name, ttl=ttl, no_default_policy=True)
    except (requests.RequestException, hvac.exceptions.VaultDown) as exc:
        raise VaultUnavailable(f"Vault at {client.url} did not answer: {type(exc).__name__}") from None
    except hvac.exceptions.VaultError as exc:
        raise VaultUnavailable(f"Vault refused to bind a token to {name!r}: {type(exc).__name__}") from None
    assert child["auth"]["entity_id"] == entity, "the Vault token is bound to another entity"
    bound = hvac.Client(url=client.url, token=child["auth"]["client_token"], timeout=TIMEOUT_S)
    try:
        return read_api_token(bound, role)
    finally:
        try:
            bound.auth.token.revoke_self()
        except Exception:  # the short-lived Vault token expires anyway
            pass


def _ensure_entity(client: hvac.Client, name: str) -> str:
    """The id of the entity ``name``, created with an alias on the token auth method if missing."""
    found = client.read(f"identity/entity/name/{name}")
    if found is None:
        client.write("identity/entity", name=name)
        found = client.read(f"identity/entity/name/{name}")
    entity = found["data"]
    accessor = client.sys.list_auth_methods()["data"]["token/"]["accessor"]
    if not any(a.get("mount_accessor") == accessor for a in entity.get("aliases") or []):
        client.write("identity/entity-alias", name=name, canonical_id=entity["id"], mount_accessor=accessor)
    return entity["id"]


class ServiceToken:
    """A service's own API token for calling other services' views (the viewer role by default).

    Issued for the entity ``svc-NAME`` with the service's Vault credentials, kept until a minute
    before it expires. Awaiting the object gives a valid token or raises :class:`VaultUnavailable`.
    """

    RENEW_BEFORE_S = 60.0

    def __init__(self, settings: Settings, service: str, role: str = "viewer") -> None:
        self.settings = settings
        self.entity = f"svc-{service}"
        self.role = role
        self._token: str | None = None
        self._expires_at = 0.0

    async def __call__(self) -> str:
        import time

        import jwt

        if self._token is None or time.time() > self._expires_at - self.RENEW_BEFORE_S:
            token = await asyncio.wait_for(asyncio.to_thread(
                lambda: issue_api_token(vault_client(self.settings), self.entity, self.role)), 4 * TIMEOUT_S)
            self._expires_at = float(jwt.decode(token, options={"verify_signature": False})["exp"])
            self._token = token
        return self._token
