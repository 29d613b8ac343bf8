"""API tokens from the local OpenBao's identity provider, verified as the services verify them.

Uses the session's real OpenBao (tests/conftest.py), provisioned like the platform's.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import hvac
import pytest

from heater import credentials
from heater.rundir import Layout
from streams.auth import Role, TokenRefused, TokenVerifier
from streams.settings import Settings
from streams.vault import ServiceToken, VaultUnavailable, ensure_entity, issue_api_token, read_api_token

pytestmark = pytest.mark.asyncio(loop_scope="session")


def verifier(vault) -> TokenVerifier:  # type: ignore[no-untyped-def]
    return TokenVerifier.from_settings(Settings.from_env({"HEATER_VAULT_ADDR": vault.addr}))


def admin(vault) -> hvac.Client:  # type: ignore[no-untyped-def]
    return hvac.Client(url=vault.addr, token=vault.token)


async def test_a_token_issued_for_an_entity_carries_its_name_and_role(vault) -> None:  # type: ignore[no-untyped-def]
    for role in Role:
        principal = await verifier(vault).verify(issue_api_token(admin(vault), "alice", role.label))
        assert (principal.name, principal.role) == ("alice", role)


async def test_a_role_policy_reaches_its_role_and_the_lower_ones_only(vault) -> None:  # type: ignore[no-untyped-def]
    child = admin(vault).write("auth/token/create/heater-identity", policies=["heater-operator"],
                               entity_alias="bob", ttl="1m", no_default_policy=True)
    bob = hvac.Client(url=vault.addr, token=child["auth"]["client_token"])
    assert (await verifier(vault).verify(read_api_token(bob, "viewer"))).role is Role.VIEWER
    assert (await verifier(vault).verify(read_api_token(bob, "operator"))).role is Role.OPERATOR
    with pytest.raises(VaultUnavailable, match="refuses"):
        read_api_token(bob, "admin")


async def test_another_issuer_or_audience_is_refused(vault) -> None:  # type: ignore[no-untyped-def]
    token = issue_api_token(admin(vault), "alice", "viewer")
    other = TokenVerifier(verifier(vault).jwks_url, "http://127.0.0.1:1/v1/identity/oidc", "heater")
    with pytest.raises(TokenRefused, match="issuer"):
        await other.verify(token)
    with pytest.raises(TokenRefused, match="(?i)audience"):
        await TokenVerifier(verifier(vault).jwks_url, verifier(vault).issuer, "not-heater").verify(token)


async def test_a_rotated_key_still_verifies_old_and_new_tokens(vault) -> None:  # type: ignore[no-untyped-def]
    check = verifier(vault)
    before = issue_api_token(admin(vault), "alice", "viewer")
    await check.verify(before)
    admin(vault).write("identity/oidc/key/heater-api/rotate")
    after = issue_api_token(admin(vault), "alice", "viewer")
    check._fetched_at = None  # as if MIN_REFRESH_S had passed
    assert (await check.verify(after)).name == "alice"
    assert (await check.verify(before)).name == "alice"


async def test_service_token_is_issued_once_and_reused(vault) -> None:  # type: ignore[no-untyped-def]
    """The bridge's own token comes with its AppRole, as its entity, with the viewer role it is allowed."""
    settings = Settings.from_env(vault.service_env("homekit"))
    source = ServiceToken(settings)
    first = await source()
    assert await source() == first
    assert (await verifier(vault).verify(first)).name == "svc-homekit"


async def test_heater_login_saves_a_private_token_for_the_other_commands(vault, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.delenv("HEATER_TOKEN_FILE", raising=False)
    layout = Layout(run_dir=tmp_path, ports={"vault": vault.port})
    layout.save()
    layout.vault_token_file.parent.mkdir(parents=True, exist_ok=True)
    layout.vault_token_file.write_text(vault.token)
    with pytest.raises(credentials.NotLoggedIn, match="heater login --role operator"):
        credentials.bearer(tmp_path, Role.OPERATOR)
    assert credentials.main(tmp_path, "viewer", "dora") == 0
    path = credentials.token_file(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert credentials.bearer(tmp_path, Role.VIEWER)
    with pytest.raises(credentials.NotLoggedIn, match="grants viewer"):
        credentials.bearer(tmp_path, Role.OPERATOR)
    saved = credentials.login(tmp_path, Role.OPERATOR, "dora")
    assert (saved.name, saved.role) == ("dora", Role.OPERATOR)
    assert credentials.bearer(tmp_path, Role.OPERATOR) == saved.token


async def test_login_with_your_own_vault_token_gets_what_its_policies_allow(vault, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ensure_entity(admin(vault), "erin")  # people have named entities (e.g. from their OIDC or LDAP login)
    child = admin(vault).write("auth/token/create/heater-identity", policies=["heater-viewer"],
                               entity_alias="erin", ttl="1m", no_default_policy=True)
    monkeypatch.setenv("VAULT_TOKEN", child["auth"]["client_token"])
    monkeypatch.setenv("VAULT_ADDR", vault.addr)
    monkeypatch.setenv("HEATER_TOKEN_FILE", str(tmp_path / "token"))
    assert credentials.login(tmp_path, Role.VIEWER).name == "erin"
    assert credentials.main(tmp_path, "operator", None) == 1
