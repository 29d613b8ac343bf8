"""A service's TLS: certificates from Vault's PKI, renewed without a restart, refused when missing.

Certificates come from the session's real Vault (its PKI engine); the server is the one
every service runs (:func:`streams.tls.serve`), in this process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from heater.runtime import pki
from heater.runtime.processes import free_ports
from heater.runtime.vault import EmbeddedVault
from streams import tls
from streams.health import web_app
from streams.lifecycle import ServiceKind, ServiceSpec, ServiceStatus
from streams.settings import Settings, SettingsError
from streams.tls import TLSFiles, TLSMaterialError, certificate_facts, client_context_for, use_identity

SPEC = ServiceSpec("alarms", ServiceKind.DISPLAY)


def issued(vault: EmbeddedVault, subject: str, directory: Path) -> int:
    return pki.issue(vault.admin(), subject, directory)


async def served_serial(port: int, caller: ssl.SSLContext) -> int:
    """The serial of the certificate a new connection to ``port`` is served with."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=caller)
    try:
        return int(writer.get_extra_info("ssl_object").getpeercert()["serialNumber"], 16)
    finally:
        writer.close()


def test_a_renewed_certificate_is_served_without_a_restart(vault: EmbeddedVault, tmp_path: Path,
                                                           loop: asyncio.AbstractEventLoop) -> None:
    first = issued(vault, "alarms", tmp_path / "alarms")
    settings = Settings.from_env({"HEATER_TLS_DIR": str(tmp_path / "alarms"), "HEATER_VAULT_ADDR": vault.addr,
                                  "HEATER_WEB_PORT": str(free_ports(1)[0])})
    caller = TLSFiles(vault.cli_tls_dir).client_context()

    async def run() -> tuple[int, int, int]:
        runner = await tls.serve(web_app(SPEC, ServiceStatus), settings, "alarms")
        try:
            before = await served_serial(settings.web_port, caller)
            renewed = issued(vault, "alarms", tmp_path / "alarms")
            deadline = time.monotonic() + 5
            after = before
            while after == before and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                after = await served_serial(settings.web_port, caller)
            return before, renewed, after
        finally:
            await runner.cleanup()

    before, renewed, after = loop.run_until_complete(run())
    assert before == first and after == renewed != first


def test_a_key_caught_without_its_certificate_is_not_loaded(vault: EmbeddedVault, tmp_path: Path) -> None:
    """The rotator replaces the key before the certificate: a look in between keeps the last good pair."""
    directory = tmp_path / "bank"
    serial = issued(vault, "bank", directory)
    service = tls.ServiceTLS(TLSFiles(directory))
    spare = tmp_path / "spare"
    issued(vault, "bank", spare)
    shutil.copy(spare / pki.KEY_FILE, directory / pki.KEY_FILE)  # new key, old certificate
    assert service.reload_if_changed() is False and service.serial == serial
    shutil.copy(spare / pki.CERT_FILE, directory / pki.CERT_FILE)
    assert service.reload_if_changed() is True and service.serial == certificate_facts(spare / pki.CERT_FILE)[0]


def test_a_caller_keeps_its_last_pair_while_a_renewal_is_half_written(vault: EmbeddedVault, tmp_path: Path) -> None:
    directory = tmp_path / "cli"
    issued(vault, pki.CLI_SUBJECT, directory)
    (port,) = free_ports(1)
    use_identity([port], directory)
    url = f"https://127.0.0.1:{port}/status"
    first = client_context_for(url)
    assert client_context_for(url) is first, "kept while the files do not change"
    spare = tmp_path / "spare"
    issued(vault, pki.CLI_SUBJECT, spare)
    shutil.copy(spare / pki.KEY_FILE, directory / pki.KEY_FILE)
    assert client_context_for(url) is first
    shutil.copy(spare / pki.CERT_FILE, directory / pki.CERT_FILE)
    assert client_context_for(url) is not first
    assert client_context_for(f"http://127.0.0.1:{port}/metrics") is None


def test_a_caller_without_a_certificate_for_the_port_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tls.CLIENT_DIR_ENV, raising=False)
    (port,) = free_ports(1)
    with pytest.raises(TLSMaterialError, match="no client certificate to call https://127.0.0.1"):
        client_context_for(f"https://127.0.0.1:{port}/status")


def test_a_service_without_its_certificate_exits_78_naming_the_file(tmp_path: Path) -> None:
    env = {**os.environ, "HEATER_RUN_DIR": str(tmp_path), "HEATER_TLS_DIR": str(tmp_path / "nothing-here")}
    done = subprocess.run([sys.executable, "-m", "heater", "worker", "bank"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 78, done.stdout + done.stderr
    assert f"no tls.crt in {tmp_path / 'nothing-here'}" in done.stdout + done.stderr


def test_a_certificate_that_is_not_the_keys_is_refused_at_start(vault: EmbeddedVault, tmp_path: Path) -> None:
    issued(vault, "bank", tmp_path / "bank")
    issued(vault, "bank", tmp_path / "other")
    shutil.copy(tmp_path / "other" / pki.KEY_FILE, tmp_path / "bank" / pki.KEY_FILE)
    with pytest.raises(TLSMaterialError, match="unusable"):
        TLSFiles(tmp_path / "bank").server_context()


def test_tls_off_is_for_the_local_profile_only() -> None:
    assert Settings.from_env({"HEATER_TLS": "off"}).tls == "off"
    with pytest.raises(SettingsError, match="refused under the production profile"):
        Settings.from_env({"HEATER_PROFILE": "production", "HEATER_TLS": "off"})
    with pytest.raises(SettingsError, match="HEATER_TLS='maybe'"):
        Settings.from_env({"HEATER_TLS": "maybe"})


def test_the_crl_is_vaults_under_the_local_profile_and_none_by_default_in_production() -> None:
    local = Settings.from_env({"HEATER_VAULT_ADDR": "http://127.0.0.1:8200"})
    assert local.crl_url == "http://127.0.0.1:8200/v1/pki_int/crl/pem"
    assert Settings.from_env({"HEATER_PROFILE": "production"}).crl_url == ""


def test_the_probe_port_serves_health_but_not_the_api(vault: EmbeddedVault, tmp_path: Path,
                                                      loop: asyncio.AbstractEventLoop) -> None:
    issued(vault, "alarms", tmp_path / "alarms")
    api, probe = free_ports(2)
    settings = Settings.from_env({"HEATER_TLS_DIR": str(tmp_path / "alarms"), "HEATER_WEB_PORT": str(api),
                                  "HEATER_PROBE_PORT": str(probe), "HEATER_VAULT_ADDR": vault.addr})

    async def run() -> dict[str, int]:
        runner = await tls.serve(web_app(SPEC, ServiceStatus), settings, "alarms")
        try:
            async with aiohttp.ClientSession() as session:
                answers = {}
                for path in ("/healthz", "/readyz", "/metrics", "/status"):
                    async with session.get(f"http://127.0.0.1:{probe}{path}") as got:
                        answers[path] = got.status
                return answers
        finally:
            await runner.cleanup()

    assert loop.run_until_complete(run()) == {"/healthz": 200, "/readyz": 503, "/metrics": 200, "/status": 403}


def test_serving_needs_the_files_of_the_service(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    settings = Settings.from_env({"HEATER_RUN_DIR": str(tmp_path)})
    with pytest.raises(TLSMaterialError, match=str(tmp_path / "secrets" / "tls" / "alarms")):
        loop.run_until_complete(tls.serve(web.Application(), settings, "alarms"))
