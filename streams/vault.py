"""Vault (OpenBao locally) for services: the client, and transit signatures.

Secrets come only from Vault. A service logs in with its own AppRole (role_id and
secret_id from files whose paths are in the settings) and gets a token limited to its
own paths (:mod:`streams.vault_policies`); none of them is ever in the repo, a log or a
topic. hvac is blocking, so calls run in a thread with a timeout; a Vault that does not
answer is a clear ``VaultUnavailable``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import threading
import time
from pathlib import Path
from typing import Any

import hvac
import requests

from streams.settings import Settings

log = logging.getLogger(__name__)

RESET_SIGNING_KEY = "operator-reset"
TIMEOUT_S = 3.0
#: Where the AppRole auth method is mounted (locally; production's is the same path).
APPROLE_MOUNT = "approle"


def approle_files(secrets_dir: Path, service: str) -> tuple[Path, Path]:
    """Where ``service``'s role_id and secret_id are kept (the SecretsRotator replaces the secret_id there)."""
    base = secrets_dir / "approle" / service
    return base / "role-id", base / "secret-id"


class VaultUnavailable(RuntimeError):
    """Vault is missing, unreachable or refuses us; the message says which and where."""


def vault_client(settings: Settings) -> hvac.Client:
    """A client with the service's own Vault credentials: its AppRole, or a token a login agent keeps.

    One AppRole client per process and set of credentials, so repeated calls share one login.
    """
    if settings.vault_role_id_file is not None and settings.vault_secret_id_file is not None:
        return _approle_client(settings.vault_addr, settings.vault_role_id_file, settings.vault_secret_id_file)
    if settings.vault_token_file is None:
        raise VaultUnavailable("no Vault credentials: HEATER_VAULT_ROLE_ID_FILE and HEATER_VAULT_SECRET_ID_FILE are not set")
    try:
        token = settings.vault_token_file.read_text().strip()
    except OSError as exc:
        raise VaultUnavailable(f"cannot read the Vault token file {settings.vault_token_file}: {exc}") from None
    return hvac.Client(url=settings.vault_addr, token=token, timeout=TIMEOUT_S)


@functools.lru_cache(maxsize=8)
def _approle_client(addr: str, role_id_file: Path, secret_id_file: Path) -> hvac.Client:
    client = hvac.Client(url=addr, timeout=TIMEOUT_S, adapter=AppRoleAdapter, credentials=(role_id_file, secret_id_file))
    client.token = None  # never one from the environment (VAULT_TOKEN, ~/.vault-token): its own login only
    return client


class AppRoleAdapter(hvac.adapters.JSONAdapter):
    """hvac's adapter that logs in with AppRole by itself, and again before its token runs out.

    Every caller holds a plain ``hvac.Client`` for as long as it likes (a transit signer, the
    allowed list's reader): the adapter logs in before the first request, again once two thirds
    of the token's TTL have passed, and once more when Vault refuses a token it no longer knows
    (a restarted dev Vault). The credentials are read from their files at each login, so a
    rotated secret_id is used without a restart. A Vault that does not answer raises what hvac
    raises (callers turn it into :class:`VaultUnavailable`); the last good data are theirs to keep.
    """

    RENEW_AT = 2 / 3

    def __init__(self, *args: Any, credentials: tuple[Path, Path], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.credentials = credentials
        self._lock = threading.Lock()
        self._renew_at = 0.0

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if url.rstrip("/").endswith(f"auth/{APPROLE_MOUNT}/login"):
            return super().request(method, url, *args, **kwargs)
        token = self._current()
        try:
            return super().request(method, url, *args, **kwargs)
        except hvac.exceptions.Forbidden:
            if self._current(refused=token) == token:
                raise
            return super().request(method, url, *args, **kwargs)  # with the token of a fresh login

    def _current(self, refused: str | None = None) -> str:
        """The token to use: a fresh login when there is none, it is due, or Vault refused it."""
        with self._lock:
            if self.token is None or self.token == refused or time.monotonic() >= self._renew_at:
                self._login()
            return self.token

    def _login(self) -> None:
        self.token = None
        role_id, secret_id = (_read_secret(path) for path in self.credentials)
        try:
            answer = self.login(f"/v1/auth/{APPROLE_MOUNT}/login", json={"role_id": role_id, "secret_id": secret_id})
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden) as exc:
            raise VaultUnavailable(f"Vault refused the AppRole login with {self.credentials[0]}: "
                                   f"{type(exc).__name__}") from None
        ttl = float(answer["auth"]["lease_duration"] or 0)
        self._renew_at = time.monotonic() + self.RENEW_AT * ttl if ttl else float("inf")
        log.info("logged in to Vault with the AppRole in %s (token TTL %.0f s)", self.credentials[0].parent, ttl)


def _read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise VaultUnavailable(f"cannot read the Vault credential file {path}: {exc.strerror}") from None


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
#: How the signing key is made: Vault rotates it itself every day at the latest (the SecretsRotator
#: sooner), and a rotated key still verifies the tokens it signed for two days (longer than any lives).
API_TOKEN_KEY_OPTIONS = {"algorithm": "RS256", "rotation_period": "24h", "verification_ttl": "48h"}
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
        entity = ensure_entity(client, name)
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


def ensure_entity(client: hvac.Client, name: str, mount: str = "token/", alias: str | None = None) -> str:
    """The id of the entity ``name``, created if missing, with an alias ``alias`` (default: its name) on ``mount``.

    A login on that auth method whose alias name matches then acts as this entity (the
    ``name`` in the API tokens it gets): the token auth method for ``heater login``, AppRole
    (alias = the role_id) for a service.
    """
    found = client.read(f"identity/entity/name/{name}")
    if found is None:
        client.write("identity/entity", name=name)
        found = client.read(f"identity/entity/name/{name}")
    entity = found["data"]
    accessor = client.sys.list_auth_methods()["data"][mount]["accessor"]
    alias = alias or name
    if not any(a.get("mount_accessor") == accessor and a.get("name") == alias for a in entity.get("aliases") or []):
        client.write("identity/entity-alias", name=alias, canonical_id=entity["id"], mount_accessor=accessor)
    return entity["id"]


class ServiceToken:
    """A service's own API token for calling other services' views (the viewer role by default).

    Vault issues it with the service's own credentials to the entity its AppRole is bound to
    (``svc-NAME`` on the local platform); its policy allows this one role and no other.
    Kept until a minute before it expires. Awaiting the object gives a valid token or raises
    :class:`VaultUnavailable`.
    """

    RENEW_BEFORE_S = 60.0

    def __init__(self, settings: Settings, role: str = "viewer") -> None:
        self.settings = settings
        self.role = role
        self._token: str | None = None
        self._expires_at = 0.0

    async def __call__(self) -> str:
        import jwt

        if self._token is None or time.time() > self._expires_at - self.RENEW_BEFORE_S:
            token = await asyncio.wait_for(asyncio.to_thread(
                lambda: read_api_token(vault_client(self.settings), self.role)), 4 * TIMEOUT_S)
            self._expires_at = float(jwt.decode(token, options={"verify_signature": False})["exp"])
            self._token = token
        return self._token
