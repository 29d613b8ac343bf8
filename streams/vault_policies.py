"""What each service may do in Vault: one policy per service, with only the paths it uses.

The one list both the local platform (:mod:`heater.runtime.vault`, AppRole) and the
production setup (``deploy/gen/vault.py``) turn into policies, so a service's reach is
the same wherever it runs. A service that is not here gets no Vault credentials at all:
verifying API tokens needs only the issuer's published keys, which are public.
"""

from __future__ import annotations

from streams.allowlist import ALLOWLIST_PATH, MOUNT
from streams.pki import MOUNT as PKI_MOUNT
from streams.vault import API_TOKEN_KEY, APPROLE_MOUNT, RESET_SIGNING_KEY, api_token_role

#: Grant name → (path, capabilities); paths come from the modules that use them.
GRANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "allowlist-read": (f"{MOUNT}/data/{ALLOWLIST_PATH}", ("read",)),
    "reset-sign": (f"transit/sign/{RESET_SIGNING_KEY}", ("update",)),
    "reset-verify": (f"transit/verify/{RESET_SIGNING_KEY}", ("update",)),
    # streams.vault.ServiceToken: the HomeKit bridge's own viewer token for AlarmsServer's feed.
    "api-token-viewer": (f"identity/oidc/token/{api_token_role('viewer')}", ("read",)),
    # streams.secrets_rotator: every service's certificate (local profile), every AppRole's
    # secret_id (replaced, the old one destroyed by accessor), the API-token and reset keys.
    "certificates-issue": (f"{PKI_MOUNT}/issue/*", ("update",)),
    "secret-ids-new": (f"auth/{APPROLE_MOUNT}/role/+/secret-id", ("update", "list")),
    "secret-ids-lookup": (f"auth/{APPROLE_MOUNT}/role/+/secret-id/lookup", ("update",)),
    "secret-ids-by-accessor": (f"auth/{APPROLE_MOUNT}/role/+/secret-id-accessor/lookup", ("update",)),
    "secret-ids-destroy": (f"auth/{APPROLE_MOUNT}/role/+/secret-id-accessor/destroy", ("update",)),
    "api-token-key-read": (f"identity/oidc/key/{API_TOKEN_KEY}", ("read",)),
    "api-token-key-rotate": (f"identity/oidc/key/{API_TOKEN_KEY}/rotate", ("update",)),
    "reset-key-read": (f"transit/keys/{RESET_SIGNING_KEY}", ("read",)),
    "reset-key-rotate": (f"transit/keys/{RESET_SIGNING_KEY}/rotate", ("update",)),
}

#: What the SecretsRotator rotates under every profile, and what only where it issues certificates and AppRoles.
ROTATOR_KEY_GRANTS = ("api-token-key-read", "api-token-key-rotate", "reset-key-read", "reset-key-rotate")
ROTATOR_LOCAL_GRANTS = ("certificates-issue", "secret-ids-new", "secret-ids-lookup", "secret-ids-by-accessor",
                        "secret-ids-destroy")

#: Service → the grants it needs (registry, exceptions: the allowed list; operator resets:
#: alarms signs, alarms and i2c verify; homekit: a viewer token for the feed; secrets: what it rotates).
SERVICE_GRANTS: dict[str, tuple[str, ...]] = {
    "registry": ("allowlist-read",),
    "exceptions": ("allowlist-read",),
    "alarms": ("reset-sign", "reset-verify"),
    "i2c": ("reset-verify",),
    "homekit": ("api-token-viewer",),
    "secrets": ROTATOR_LOCAL_GRANTS + ROTATOR_KEY_GRANTS,
}


def policy_name(service: str) -> str:
    """The Vault policy (and, locally, the AppRole role) of ``service``: ``heater-registry``."""
    return f"heater-{service}"


#: Where production grants less: certificates are cert-manager's and services log in with their
#: Kubernetes service account, so the rotator there rotates the two keys only.
PRODUCTION_GRANTS: dict[str, tuple[str, ...]] = {"secrets": ROTATOR_KEY_GRANTS}


def policy(service: str, production: bool = False) -> str:
    """The HCL of ``service``'s policy (``production``: as the production setup writes it)."""
    grants = PRODUCTION_GRANTS.get(service, SERVICE_GRANTS[service]) if production else SERVICE_GRANTS[service]
    lines = [f'path "{GRANTS[g][0]}" {{ capabilities = {list(GRANTS[g][1])!r} }}'.replace("'", '"')
             for g in grants]
    return "\n".join(lines) + "\n"
