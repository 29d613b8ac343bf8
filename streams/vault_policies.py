"""What each service may do in Vault: one policy per service, with only the paths it uses.

The one list both the local platform (:mod:`heater.runtime.vault`, AppRole) and the
production setup (``deploy/gen/vault.py``) turn into policies, so a service's reach is
the same wherever it runs. A service that is not here gets no Vault credentials at all:
verifying API tokens needs only the issuer's published keys, which are public.
"""

from __future__ import annotations

from streams.allowlist import ALLOWLIST_PATH, MOUNT
from streams.vault import RESET_SIGNING_KEY, api_token_role

#: Grant name → (path, capabilities); paths come from the modules that use them.
GRANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "allowlist-read": (f"{MOUNT}/data/{ALLOWLIST_PATH}", ("read",)),
    "reset-sign": (f"transit/sign/{RESET_SIGNING_KEY}", ("update",)),
    "reset-verify": (f"transit/verify/{RESET_SIGNING_KEY}", ("update",)),
    # streams.vault.ServiceToken: the HomeKit bridge's own viewer token for AlarmsServer's feed.
    "api-token-viewer": (f"identity/oidc/token/{api_token_role('viewer')}", ("read",)),
}

#: Service → the grants it needs (registry, exceptions: the allowed list; operator resets:
#: alarms signs, alarms and i2c verify; homekit: a viewer token for the feed).
SERVICE_GRANTS: dict[str, tuple[str, ...]] = {
    "registry": ("allowlist-read",),
    "exceptions": ("allowlist-read",),
    "alarms": ("reset-sign", "reset-verify"),
    "i2c": ("reset-verify",),
    "homekit": ("api-token-viewer",),
}


def policy_name(service: str) -> str:
    """The Vault policy (and, locally, the AppRole role) of ``service``: ``heater-registry``."""
    return f"heater-{service}"


def policy(service: str) -> str:
    """The HCL of ``service``'s policy."""
    lines = [f'path "{GRANTS[g][0]}" {{ capabilities = {list(GRANTS[g][1])!r} }}'.replace("'", '"')
             for g in SERVICE_GRANTS[service]]
    return "\n".join(lines) + "\n"
