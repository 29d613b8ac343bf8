"""Each service's own AppRole on a real OpenBao: its paths and nothing else, no root token, fresh tokens.

Uses the session's OpenBao (tests/conftest.py), provisioned like the platform's, and Vaults
of its own where a test changes a token's lifetime or restarts Vault.
"""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import hvac
import pytest
import requests

from heater.catalogue import COMPONENTS
from heater.rundir import Layout
from heater.runtime.broker import EmbeddedBroker
from heater.runtime.vault import EmbeddedVault, approle_files, provision_services, without_vault_credentials
from streams.allowlist import read_allowlist
from streams.settings import Settings
from streams.vault import RESET_SIGNING_KEY, vault_client
from streams.vault_policies import GRANTS, SERVICE_GRANTS
from heater.probes import http_json
from tests.support import ServiceProcess, metric, wait_for

PAYLOAD = base64.b64encode(b"reset record").decode()


def service_client(vault: EmbeddedVault, service: str) -> hvac.Client:
    """The client ``service`` builds from its settings, as it runs."""
    return vault_client(Settings.from_env(vault.service_env(service)))


def signature(vault: EmbeddedVault) -> str:
    return vault.admin().secrets.transit.sign_data(name=RESET_SIGNING_KEY, hash_input=PAYLOAD)["data"]["signature"]


#: What each grant lets a service do, done as the service does it.
GRANTED: dict[str, Callable[[hvac.Client, EmbeddedVault], Any]] = {
    "allowlist-read": lambda c, v: read_allowlist(c),
    "reset-sign": lambda c, v: c.secrets.transit.sign_data(name=RESET_SIGNING_KEY, hash_input=PAYLOAD),
    "reset-verify": lambda c, v: c.secrets.transit.verify_signed_data(
        name=RESET_SIGNING_KEY, hash_input=PAYLOAD, signature=signature(v)),
    "api-token-viewer": lambda c, v: c.read("identity/oidc/token/heater-viewer"),
    # The SecretsRotator's: each done on something of its own, or harmlessly (a rotated key still verifies).
    "certificates-issue": lambda c, v: c.write("pki_int/issue/heater-cli", common_name="heater-cli", ttl="1m"),
    "secret-ids-new": lambda c, v: c.list("auth/approle/role/registry/secret-id"),
    "secret-ids-lookup": lambda c, v: c.write("auth/approle/role/registry/secret-id/lookup",
                                              secret_id=approle_files(v.secrets_dir, "registry")[1].read_text()),
    "secret-ids-by-accessor": lambda c, v: c.write("auth/approle/role/registry/secret-id-accessor/lookup",
                                                   secret_id_accessor=throwaway_secret_id(v)),
    "secret-ids-destroy": lambda c, v: c.write("auth/approle/role/registry/secret-id-accessor/destroy",
                                               secret_id_accessor=throwaway_secret_id(v)),
    "api-token-key-read": lambda c, v: c.read("identity/oidc/key/heater-api"),
    "api-token-key-rotate": lambda c, v: c.write("identity/oidc/key/heater-api/rotate", verification_ttl="48h"),
    "reset-key-read": lambda c, v: c.read(f"transit/keys/{RESET_SIGNING_KEY}"),
    "reset-key-rotate": lambda c, v: c.write(f"transit/keys/{RESET_SIGNING_KEY}/rotate"),
}


def throwaway_secret_id(vault: EmbeddedVault) -> str:
    """The accessor of a new secret_id of the registry's role that nobody uses."""
    return vault.admin().write("auth/approle/role/registry/secret-id", ttl="1m")["data"]["secret_id_accessor"]

#: What no service may do.
NEVER: dict[str, Callable[[hvac.Client], Any]] = {
    "write a policy": lambda c: c.sys.create_or_update_policy("heater-registry", 'path "*" { capabilities = ["sudo", "read"] }'),
    "create a token": lambda c: c.auth.token.create(policies=["default"], ttl="1m"),
    "an operator's API token": lambda c: c.read("identity/oidc/token/heater-operator"),
    "another secret": lambda c: c.secrets.kv.v2.read_secret_version(
        path="heater/other", mount_point="secret", raise_on_deleted_version=True),
    "the AppRole of another service": lambda c: c.read("auth/approle/role/alarms/role-id"),
}


def test_every_grant_has_a_check() -> None:
    assert set(GRANTED) == set(GRANTS)


@pytest.mark.parametrize("service", sorted(SERVICE_GRANTS))
def test_a_service_reaches_its_own_paths_and_is_refused_elsewhere(vault: EmbeddedVault, service: str) -> None:
    client = service_client(vault, service)
    for grant, action in GRANTED.items():
        if grant in SERVICE_GRANTS[service]:
            assert action(client, vault), f"{service} may {grant}"
        else:
            with pytest.raises(hvac.exceptions.Forbidden):
                action(client, vault)
    for what, action in NEVER.items():
        with pytest.raises(hvac.exceptions.Forbidden):
            action(client)
            pytest.fail(f"{service} could {what}")
    assert client.token != vault.token


def test_the_platform_hands_services_their_approle_and_never_the_root_token(tmp_path: Path) -> None:
    layout = Layout.allocate(tmp_path)
    for component in COMPONENTS:
        if component.kind != "service":
            continue
        env = layout.service_env(component.name)
        assert str(layout.vault_token_file) not in env.values(), component.name
        assert not any(key.startswith("VAULT_") or key == "HEATER_VAULT_TOKEN_FILE" for key in env), component.name
        has_role = "HEATER_VAULT_ROLE_ID_FILE" in env
        assert has_role == (component.name in SERVICE_GRANTS), component.name
        if has_role:
            role_id, secret_id = approle_files(layout.secrets_dir, component.name)
            assert (env["HEATER_VAULT_ROLE_ID_FILE"], env["HEATER_VAULT_SECRET_ID_FILE"]) == (str(role_id), str(secret_id))
    inherited = without_vault_credentials({"VAULT_TOKEN": "s.mine", "VAULT_ADDR": "x", "BAO_TOKEN": "y", "PATH": "/bin"})
    assert inherited == {"PATH": "/bin"}, "supervisord (and so every service) gets none of the operator's own"


def test_credential_files_are_private(vault: EmbeddedVault) -> None:
    for service in SERVICE_GRANTS:
        for path in approle_files(vault.secrets_dir, service):
            assert path.stat().st_mode & 0o777 == 0o600, path
        assert path.parent.stat().st_mode & 0o077 == 0, path.parent



def open_files(pid: int) -> list[Path]:
    """What the process has open now; a descriptor it closes while we list them was not open."""
    opened = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            opened.append(Path(os.readlink(fd)))
        except FileNotFoundError:
            continue
    return opened


def contents(path: Path) -> bytes:
    """A file removed since it was listed holds nothing any more."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def test_a_running_service_holds_no_root_token(own_broker: EmbeddedBroker, vault: EmbeddedVault, run_dir: Path) -> None:
    """Its environment, and every file its environment names or it has open, are free of the root token."""
    registry = ServiceProcess("registry", own_broker.url, run_dir, vault=vault).start()
    try:
        registry.wait_ready(60)  # it read the allowed list: its AppRole works
        assert registry.proc is not None
        pid = registry.proc.pid
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert vault.token.encode() not in environ
        assert b"HEATER_VAULT_ROLE_ID_FILE" in environ
        named = [Path(entry.split(b"=", 1)[1].decode()) for entry in environ.split(b"\0") if b"=" in entry]
        files = [p for p in named + open_files(pid) if p.is_absolute() and p.is_file()]
        assert any(p.name == "secret-id" for p in files)
        for path in files:
            assert vault.token.encode() not in contents(path), path
    finally:
        registry.stop()


def test_a_short_lived_token_is_replaced_before_it_runs_out(run_dir: Path) -> None:
    with EmbeddedVault(run_dir / "vault") as own:
        provision_services(own.admin(), own.secrets_dir, token_ttl="2s")
        client = service_client(own, "registry")
        read_allowlist(client)
        first = client.token
        assert own.admin().auth.token.lookup(first)["data"]["ttl"] <= 2
        tokens = [first]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert "registry" in read_allowlist(client)  # never refused, never a gap
            tokens.append(client.token)
            time.sleep(0.2)
        assert len(set(tokens)) >= 3, "logged in again before each token ran out"
        with pytest.raises(hvac.exceptions.Forbidden):
            own.admin().auth.token.lookup(first)  # the first one did run out: reads went on with new ones


def test_after_vault_restarts_empty_the_service_logs_in_again(run_dir: Path) -> None:
    own = EmbeddedVault(run_dir / "vault").start()
    try:
        client = service_client(own, "exceptions")
        before = read_allowlist(client)
        token = client.token
        own.stop()
        with pytest.raises(requests.RequestException):
            read_allowlist(client)
        own.start()  # a dev Vault comes back empty; provisioning gives it the same credentials
        assert read_allowlist(client) == before
        assert client.token != token
    finally:
        own.stop()


def test_no_secret_in_a_service_log(own_broker: EmbeddedBroker, run_dir: Path) -> None:
    """The registry logs in with its AppRole, again as its 2-s tokens run out, and serves callers with API
    tokens: its log names none of the secret_id, role_id, Vault tokens (its own or root) and API tokens."""
    with EmbeddedVault(run_dir / "vault") as own:
        provision_services(own.admin(), own.secrets_dir, token_ttl="2s")
        registry = ServiceProcess("registry", own_broker.url, run_dir, vault=own).start()
        try:
            registry.wait_ready(60)
            presented = [registry.token("admin"), registry.token("viewer", name="vic")]
            forged = presented[0][:-6] + "AAAAAA"
            for token in presented + [forged]:
                http_json(registry.url + "/registry", timeout=5, token=token)
            time.sleep(12)  # past a refresh of the allowed list (every 10 s), with the first token expired
            assert metric(registry, "heater_dependency_down", dependency="vault") == 0
        finally:
            registry.stop()
        sample = hvac.Client(url=own.addr)
        role_file, secret_file = approle_files(own.secrets_dir, "registry")
        role_id, secret_id = role_file.read_text(), secret_file.read_text()
        sample.auth.approle.login(role_id, secret_id)
    log = registry.log_path.read_text(errors="replace")
    assert log.count("logged in to Vault with the AppRole") >= 2, log[-3000:]
    for secret in [secret_id, role_id, own.token, *presented, forged]:
        assert secret and secret not in log
    prefix = sample.token.split(".", 1)[0] + "." if "." in sample.token[:5] else sample.token[:2]
    assert not re.search(re.escape(prefix) + r"[A-Za-z0-9]{20,}", log), "a Vault token"
    assert not re.search(r"eyJ[\w-]{10,}\.eyJ[\w-]{10,}", log), "an API token"


def test_the_vault_log_shows_no_root_token(vault: EmbeddedVault) -> None:
    """Dev mode prints its root token and unseal key in a banner once it is up; the log shows neither."""
    log = wait_for(lambda: (text := vault.process.log_path.read_text(errors="replace")) and "Root Token:" in text and text,
                   15, 0.2, "the dev server's banner")
    assert "Root Token: (not shown)" in log and "Unseal Key: (not shown)" in log
    assert vault.token not in log
