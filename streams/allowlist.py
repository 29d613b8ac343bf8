"""The services allowed on the platform, from Vault: name → identity.

A heartbeat or an exception report names its sender; the registry and the exceptions
server check it against this list, kept in Vault's KV store (``secret/heater/services``)
so that admitting a new service is an administrator's act, not a code change. The
identity is the sender's certificate subject once services present certificates; until
then it is the service name the process was started as.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Mapping

import hvac
import requests

from streams.resilience import Dependency, DependencyDown
from streams.settings import Settings
from streams.vault import TIMEOUT_S, VaultUnavailable, vault_client

log = logging.getLogger(__name__)

ALLOWLIST_PATH = "heater/services"
MOUNT = "secret"


def read_allowlist(client: hvac.Client) -> dict[str, str]:
    """The allowed services as Vault holds them (blocking)."""
    answer = client.secrets.kv.v2.read_secret_version(path=ALLOWLIST_PATH, mount_point=MOUNT, raise_on_deleted_version=True)
    data = answer["data"]["data"]
    return {str(name): str(identity) for name, identity in data.items()}


def write_allowlist(client: hvac.Client, allowed: Mapping[str, str]) -> None:
    client.secrets.kv.v2.create_or_update_secret(path=ALLOWLIST_PATH, secret=dict(allowed), mount_point=MOUNT)


async def load_allowlist(settings: Settings | None = None) -> dict[str, str]:
    """The allowed services; :class:`VaultUnavailable` (with where and why) when Vault cannot say."""
    client = vault_client(settings or Settings.from_env())
    try:
        return await asyncio.wait_for(asyncio.to_thread(read_allowlist, client), TIMEOUT_S + 1)
    except (requests.RequestException, asyncio.TimeoutError, hvac.exceptions.VaultDown) as exc:
        raise VaultUnavailable(f"Vault at {client.url} did not answer for {MOUNT}/{ALLOWLIST_PATH}: {exc}") from None
    except hvac.exceptions.InvalidPath:
        raise VaultUnavailable(f"Vault has no allowed-services list at {MOUNT}/{ALLOWLIST_PATH}") from None
    except hvac.exceptions.Forbidden as exc:
        raise VaultUnavailable(f"Vault refused {MOUNT}/{ALLOWLIST_PATH}: {exc}") from None


async def refreshed_allowlist(vault: Dependency, current: dict[str, str]) -> dict[str, str]:
    """Vault's list again, through the service's Vault dependency; the last good list while Vault is away.

    A sender is then still judged by the list it was last allowed by, rather than by none
    (which would make every service a stranger) — Vault's outage alarm says it may be stale.
    """
    try:
        allowed = await vault.call(load_allowlist)
    except DependencyDown as exc:
        log.warning("allowed services not refreshed, the last good list stays in force: %s", exc)
        return current
    if allowed != current:
        log.info("allowed services now: %s", ", ".join(sorted(allowed)))
    return allowed


def is_allowed(allowed: Mapping[str, str], service: str, identity: str) -> bool:
    """A sender is allowed when its name is listed with that identity."""
    return allowed.get(service) == identity


__all__ = ["ALLOWLIST_PATH", "is_allowed", "load_allowlist", "read_allowlist", "refreshed_allowlist", "write_allowlist"]
