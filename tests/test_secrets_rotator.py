"""The SecretsRotator as a process, against a real OpenBao and broker.

The module has a Vault of its own (the platform's helper, :class:`EmbeddedVault`): the
rotator gives every secret_id a short TTL and rotates the session Vault's keys, which the
other modules' services must not inherit. It checks Vault and the broker before anything,
renews certificates, secret_ids, the API-token key and the transit key at short intervals,
and a client calling a real service's API over mTLS meanwhile sees no failed request.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import hvac
import pytest

from heater.probes import http_json
from heater.runtime import pki
from heater.runtime.broker import EmbeddedBroker
from heater.runtime.processes import free_port
from heater.runtime.services import ServiceProcess
from heater.runtime.vault import EmbeddedVault, provision_services
from streams.tls import certificate_facts
from streams.vault import RESET_SIGNING_KEY, approle_files, issue_api_token

#: Short lives, so that everything rotates within a few seconds (the API-token key: see test_the_key_period_...).
FAST = {
    "HEATER_ROTATOR_INTERVAL_S": "0.5",
    "HEATER_ROTATOR_RENEW_BEFORE": "0.5",
    "HEATER_ROTATOR_CERT_TTL_S": "8",
    "HEATER_ROTATOR_SECRET_ID_TTL_S": "8",
    "HEATER_ROTATOR_KEY_PERIOD_S": "24",
    "HEATER_ROTATOR_GRACE_S": "2",
}
LOAD_S = 15.0


@pytest.fixture(scope="module")
def own_vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedVault]:
    with EmbeddedVault(tmp_path_factory.mktemp("rotator-vault")) as running:
        yield running


def rotator(vault: EmbeddedVault, broker_url: str, run_dir: Path, **env: str) -> ServiceProcess:
    return ServiceProcess("secrets", broker_url, run_dir, {"HEATER_ROTATOR_SECRETS_DIR": str(vault.secrets_dir), **env},
                          vault=vault)


def run_once(vault: EmbeddedVault, run_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`heater worker secrets` to its end (it should not get far)."""
    process = rotator(vault, "tansu://127.0.0.1:1", run_dir, **env)
    return subprocess.run([sys.executable, "-m", "heater", "worker", "secrets"], env=process.env, capture_output=True,
                          text=True, timeout=90)


def test_it_refuses_to_start_when_vault_is_unreachable(own_vault: EmbeddedVault, broker: EmbeddedBroker,
                                                       run_dir: Path) -> None:
    away = f"http://127.0.0.1:{free_port()}"
    done = run_once(own_vault, run_dir, HEATER_VAULT_ADDR=away, HEATER_BROKER_URL=broker.url)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"Vault at {away} is unreachable" in done.stdout + done.stderr


def test_it_refuses_to_start_when_the_broker_is_unreachable(own_vault: EmbeddedVault, run_dir: Path) -> None:
    port = free_port()
    done = run_once(own_vault, run_dir, HEATER_BROKER_URL=f"tansu://127.0.0.1:{port}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"broker 127.0.0.1:{port} unreachable at start-up" in done.stdout + done.stderr


def test_it_refuses_a_key_period_its_verifiers_could_not_follow(own_vault: EmbeddedVault, run_dir: Path) -> None:
    """Vault publishes the next API-token key one rotation ahead; services fetch keys at most every 10 s."""
    done = run_once(own_vault, run_dir, HEATER_ROTATOR_KEY_PERIOD_S="12", HEATER_ROTATOR_RENEW_BEFORE="0.5")
    assert done.returncode == 78, done.stdout + done.stderr
    assert "rotates the API-token key every 6 s: it must be more than 10 s" in done.stdout + done.stderr


def test_a_failed_renewal_is_reported_and_the_rest_goes_on(own_vault: EmbeddedVault, broker: EmbeddedBroker,
                                                           run_dir: Path) -> None:
    """A TLS directory for a subject the PKI has no role for: its renewal fails, the others' go on."""
    stray = own_vault.secrets_dir / "tls" / "stray"
    pki.issue(own_vault.admin(), "registry", stray, ttl="8s")  # due at once; there is no role to renew it as "stray"
    provision_services(own_vault.admin(), own_vault.secrets_dir)
    process = rotator(own_vault, broker.url, run_dir, **FAST).start()
    try:
        process.wait_ready(60)
        deadline = time.monotonic() + 20
        failed: dict[str, str] = {}
        while time.monotonic() < deadline and "certificate/stray" not in failed:
            failed = process.get("/rotation")[1]["failed_last_round"]
            time.sleep(0.3)
        assert "certificate/stray" in failed, failed
        assert rotations(process).get("certificate/failed", 0) >= 1
        assert re.search(r"raised WARNING \S*rotation-failed\S*stray", process.log_path.read_text())
    finally:
        process.stop()
        for name in (pki.CERT_FILE, pki.KEY_FILE, pki.CA_FILE):
            (stray / name).unlink()
        stray.rmdir()


class Platform:
    """A rotator at short intervals, and the registry (a Faust service) whose API the client calls."""

    def __init__(self, vault: EmbeddedVault, broker: EmbeddedBroker, run_dir: Path) -> None:
        self.vault = vault
        admin = vault.admin()
        provision_services(admin, vault.secrets_dir)  # as `heater up` does: secret_ids a stopped rotator let expire
        for subject in pki.tls_subjects():  # lives as short as the rotator's, so that it renews them at once
            pki.issue(admin, subject, pki.tls_dir(vault.secrets_dir, subject), ttl=FAST["HEATER_ROTATOR_CERT_TTL_S"] + "s")
        self.signed_before = admin.secrets.transit.sign_data(name=RESET_SIGNING_KEY,
                                                             hash_input=base64.b64encode(b"reset").decode())
        self.rotator = rotator(vault, broker.url, run_dir / "secrets", **FAST).start()
        self.rotator.wait_ready(60)
        self.registry = ServiceProcess("registry", broker.url, run_dir / "registry", vault=vault).start()
        self.registry.wait_ready(90)

    def stop(self) -> None:
        for process in (self.registry, self.rotator):
            process.stop()


@pytest.fixture(scope="module")
def platform(own_vault: EmbeddedVault, broker: EmbeddedBroker,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    running = Platform(own_vault, broker, tmp_path_factory.mktemp("rotator-platform"))
    yield running
    running.stop()


def rotations(process: ServiceProcess) -> dict[str, float]:
    """``heater_rotations_total`` by ``kind/outcome`` from the rotator's probe port."""
    import urllib.request

    text = urllib.request.urlopen(process.probe_url + "/metrics", timeout=2).read().decode()
    return {f"{m[0]}/{m[1]}": float(m[2])
            for m in re.findall(r'heater_rotations_total\{kind="([^"]+)",outcome="([^"]+)"\} (\S+)', text)}


def test_it_is_ready_and_shows_what_expires_when(platform: Platform) -> None:
    status, body = platform.rotator.get("/rotation")
    assert status == 200
    kinds = {item["kind"] for item in body["items"]}
    assert kinds == {"certificate", "secret-id", "api-token-key", "transit-key"}
    names = {item["name"] for item in body["items"] if item["kind"] == "certificate"}
    assert set(pki.tls_subjects()) <= names
    assert http_json(platform.rotator.probe_url + "/readyz")[0] == 200
    assert platform.rotator.get("/status")[1]["service"] == "secrets"


def test_rotation_under_load_fails_no_request(platform: Platform) -> None:
    """A client calls the registry's API over mTLS with fresh API tokens, and logs in with the registry's AppRole,
    while certificates (the registry's, the client's), secret_ids, the API-token key and the transit key rotate."""
    vault, registry = platform.vault, platform.registry
    admin = vault.admin()
    role_file, secret_file = approle_files(vault.secrets_dir, "registry")
    before = rotations(platform.rotator)
    served_serials, client_serials, secret_ids, tokens = set(), set(), set(), set()
    failures: list[str] = []
    calls = logins = 0
    token, token_at = None, 0.0
    deadline = time.monotonic() + LOAD_S
    while time.monotonic() < deadline:
        if token is None or time.monotonic() - token_at > 1.0:  # fresh tokens: each new signing key is used at once
            token, token_at = issue_api_token(admin, "load", "viewer"), time.monotonic()
            tokens.add(token)
        try:
            status, body = http_json(registry.url + "/status", timeout=5, token=token)
        except OSError as exc:
            status, body = 0, {"error": repr(exc)}
        calls += 1
        if status != 200:
            failures.append(f"GET /status: {status} {body}")
        served_serials.add(certificate_facts(pki.tls_dir(vault.secrets_dir, "registry") / pki.CERT_FILE)[0])
        client_serials.add(certificate_facts(vault.cli_tls_dir / pki.CERT_FILE)[0])
        secret_id = secret_file.read_text().strip()
        secret_ids.add(secret_id)
        try:
            hvac.Client(url=vault.addr, timeout=5).auth.approle.login(role_file.read_text().strip(), secret_id)
            logins += 1
        except hvac.exceptions.VaultError as exc:
            failures.append(f"AppRole login: {type(exc).__name__}")
        time.sleep(0.05)
    after = rotations(platform.rotator)
    renewed = {kind: after.get(f"{kind}/renewed", 0) - before.get(f"{kind}/renewed", 0)
               for kind in ("certificate", "secret-id", "api-token-key", "transit-key")}
    assert failures == [], f"{len(failures)} of {calls} calls/logins failed: {failures[:5]}"
    assert calls > 50 and logins > 50
    assert renewed["certificate"] >= 2 * len(pki.tls_subjects()), renewed
    assert renewed["secret-id"] >= 2 * 8, renewed  # every AppRole, at least twice
    assert renewed["api-token-key"] >= 1 and renewed["transit-key"] >= 1, renewed
    assert len(served_serials) >= 3 and len(client_serials) >= 3 and len(secret_ids) >= 3
    assert after.get("secret-id/destroyed", 0) > before.get("secret-id/destroyed", 0), "replaced ones are destroyed"
    assert rotations(platform.rotator).get("certificate/failed", 0) == 0
    # The reset signature made before any transit rotation still verifies with the rotated key.
    verified = admin.secrets.transit.verify_signed_data(name=RESET_SIGNING_KEY, hash_input=base64.b64encode(b"reset").decode(),
                                                         signature=platform.signed_before["data"]["signature"])
    assert verified["data"]["valid"] is True
    # No secret in any log: not the secret_ids, the API tokens, a private key, or Vault's root token.
    logs = "".join(path.read_text(errors="replace") for path in (platform.rotator.log_path, platform.registry.log_path))
    assert "PRIVATE KEY" not in logs and vault.token not in logs
    leaked = [s for s in secret_ids | tokens if s in logs]
    assert not leaked, f"{len(leaked)} secret(s) in the logs"
