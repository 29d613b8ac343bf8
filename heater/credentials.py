"""`heater login`: an API token for the person at the keyboard, kept where the other commands find it.

The token is a signed JWT from Vault's identity provider (:mod:`streams.auth` verifies it);
the user never handles a key. Two ways to get one:

* **Local platform** (default): whoever can read the run directory's Vault token (mode 0600,
  the platform's owner) is trusted to name the user. ``heater login --role operator`` binds
  a short-lived Vault token to the entity ``--user`` (default: the login name) and has Vault
  issue a token with that role (:func:`streams.vault.issue_api_token`).
* **Your own Vault login** (``$VAULT_TOKEN``, with ``$VAULT_ADDR``): Vault issues the token
  to your entity, and its policies decide which roles you may have (``heater-viewer``,
  ``heater-operator``, ``heater-admin``).

The token is written to ``RUN_DIR/secrets/api-token`` (mode 0600, or ``$HEATER_TOKEN_FILE``)
and never printed. The other commands read it there; a command that needs a higher role than
the saved token grants says which ``heater login`` to run.
"""

from __future__ import annotations

import getpass
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jwt

from streams.auth import NAME_CLAIM, ROLE_CLAIM, Role

#: A saved token this close to its expiry counts as expired (a command should not fail halfway).
EXPIRY_MARGIN_S = 30.0


class NotLoggedIn(Exception):
    """No saved token fit for what the command needs; the message says which login to run."""


@dataclass(frozen=True)
class Saved:
    """What a saved token says about itself (read without verifying: the services verify it)."""

    token: str
    name: str
    role: Role | None
    expires_at: float

    @classmethod
    def parse(cls, token: str) -> "Saved":
        claims: Mapping[str, Any] = jwt.decode(token, options={"verify_signature": False})
        try:
            role: Role | None = Role.parse(str(claims.get(ROLE_CLAIM, "")))
        except ValueError:
            role = None
        return cls(token, str(claims.get(NAME_CLAIM) or claims.get("sub", "?")), role, float(claims.get("exp", 0)))


def token_file(run_dir: Path) -> Path:
    """Where `heater login` keeps the token: ``$HEATER_TOKEN_FILE`` or the run directory's ``secrets/api-token``."""
    override = os.environ.get("HEATER_TOKEN_FILE")
    return Path(override) if override else run_dir / "secrets" / "api-token"


def save(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token)


def saved(run_dir: Path) -> Saved | None:
    """The saved token, if there is a readable one."""
    try:
        return Saved.parse(token_file(run_dir).read_text().strip())
    except (OSError, jwt.InvalidTokenError, ValueError):
        return None


def bearer(run_dir: Path, need: Role = Role.VIEWER) -> str:
    """The saved token if it grants ``need`` and has not expired; NotLoggedIn otherwise."""
    found = saved(run_dir)
    if found is None:
        raise NotLoggedIn(f"not logged in: run `heater login --role {need.label}`")
    if found.expires_at - EXPIRY_MARGIN_S < time.time():
        raise NotLoggedIn(f"the saved token of {found.name} has expired: run `heater login --role {need.label}`")
    if found.role is None or found.role < need:
        have = found.role.label if found.role else "none"
        raise NotLoggedIn(f"this needs role {need.label}; the saved token grants {have}: "
                          f"run `heater login --role {need.label}`")
    return found.token


def bearer_or_none(run_dir: Path, need: Role = Role.VIEWER) -> str | None:
    try:
        return bearer(run_dir, need)
    except NotLoggedIn:
        return None


def issue(run_dir: Path, role: Role, user: str | None = None) -> str:
    """A fresh token with ``role``: from your own Vault login (``$VAULT_TOKEN``) or the local platform's Vault."""
    import hvac

    from streams.vault import TIMEOUT_S, issue_api_token, read_api_token

    own = os.environ.get("VAULT_TOKEN")
    if own:
        addr = os.environ.get("VAULT_ADDR") or _local_vault_addr(run_dir)
        return read_api_token(hvac.Client(url=addr, token=own, timeout=TIMEOUT_S), role.label)
    from heater.rundir import Layout

    layout = Layout.load(run_dir)
    admin = hvac.Client(url=layout.vault_addr, token=layout.vault_token_file.read_text().strip(), timeout=TIMEOUT_S)
    return issue_api_token(admin, user or getpass.getuser(), role.label)


def _local_vault_addr(run_dir: Path) -> str:
    from heater.rundir import Layout

    return Layout.load(run_dir).vault_addr


def login(run_dir: Path, role: Role, user: str | None = None) -> Saved:
    """Issue a token with ``role`` and save it for the other commands."""
    token = issue(run_dir, role, user)
    save(token_file(run_dir), token)
    return Saved.parse(token)


def main(run_dir: Path, role: str, user: str | None) -> int:
    """`heater login`: exit 0 when a token was saved, 1 when Vault refused or is away."""
    from streams.vault import VaultUnavailable

    try:
        got = login(run_dir, Role.parse(role), user)
    except (VaultUnavailable, OSError, ValueError) as exc:
        print(f"login failed: {exc}")
        return 1
    until = time.strftime("%H:%M:%S", time.localtime(got.expires_at))
    print(f"logged in as {got.name} with role {got.role.label if got.role else '?'} until {until} "
          f"(token in {token_file(run_dir)})")
    return 0
