"""Faust's routing of a table-key request between two workers of one service, over mTLS, with real processes.

Two StateRegistry workers run in one consumer group against a real broker (the test's own)
and the session's real OpenBao: each in its own run directory (its own RocksDB store), both
with the service's one identity (its AppRole, its certificate from Vault's PKI). The
registry's tables have one partition, so exactly one worker owns ``registry-services`` (the
one Faust's assignor gives the active partition); the other holds it as a standby and must
forward ``GET /table/registry-services/{key}/`` to the owner (Faust's router, through
``app.http_client``, which presents the service's certificate: :mod:`streams.web_driver`).

What is shown:

1. the key, asked of the worker that does not own it, comes back with the owner's value;
   the owner's log shows it served the request to the caller's token, arriving with the
   service's own client certificate (the other worker's), not the harness's;
2. a forward carries the caller's authority and nothing more: a request without a token
   (or with a forged one) is refused, and the service's certificate without a token
   gets nothing from the owner either (no worker-to-worker exemption to launder through);
3. the certificate is what lets the forward in: the owner refuses the same request with
   the caller's valid token over HTTPS without a client certificate, and over plain HTTP.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from heater.probes import http_json
from heater.runtime.broker import EmbeddedBroker
from heater.runtime.pki import CLI_SUBJECT
from heater.runtime.vault import EmbeddedVault
from streams.records import Heartbeat
from streams.settings import Settings, canonical_url, faust_options
from streams.tls import TLSFiles
from tests.support import ServiceProcess, produce, run, try_get, wait_for

SERVICE = "registry"
TABLE = "registry-services"
#: The service whose beat the test sends: on the registry's allowed list, so it gets a row.
BEATING = "can"
#: Two workers starting and joining one group (each waits out the other's rebalance).
READY_S = 90.0
OWNER_KNOWN_S = 60.0


def beat(instance: str) -> bytes:
    return Heartbeat(service=BEATING, instance=instance, phase="ready", at=time.time(), identity=BEATING).dumps()


@pytest.fixture
def workers(own_broker: EmbeddedBroker, vault: EmbeddedVault, run_dir: Path) -> Iterator[list[ServiceProcess]]:
    """Two workers of the registry: own run directories (own stores), one Vault identity."""
    started = [ServiceProcess(SERVICE, own_broker.url, run_dir / f"worker-{n}", vault=vault) for n in (1, 2)]
    try:
        for worker in started:
            worker.start()
        for worker in started:
            worker.wait_ready(READY_S)
        yield started
    finally:
        for worker in started:
            worker.stop()


def owner_url(worker: ServiceProcess, key: str) -> str | None:
    """The URL Faust's router on ``worker`` names as the owner of ``key`` (None while it knows none)."""
    answer = try_get(f"{worker.url}/router/{TABLE}/{key}/", worker.token("viewer"))
    return answer[1] if answer is not None and answer[0] == 200 and isinstance(answer[1], str) else None


def served_lines(worker: ServiceProcess, key: str) -> list[str]:
    """The lines of ``worker``'s log saying it served ``key`` of the table itself."""
    return [line for line in worker.log_path.read_text(errors="replace").splitlines()
            if f"table {TABLE} key {key} served" in line]


def get_with(url: str, context: ssl.SSLContext | None, token: str | None) -> tuple[int, Any]:
    """GET ``url`` with exactly this TLS client context and token (what a forwarding worker could send)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_each_worker_is_named_by_its_own_https_url() -> None:
    """What the assignor tells the other workers: this worker's port, HTTPS unless TLS is off, never a wildcard."""
    env = {"HEATER_WEB_PORT": "7001"}
    assert canonical_url(Settings.from_env(env)) == "https://127.0.0.1:7001"
    assert canonical_url(Settings.from_env({**env, "HEATER_TLS": "off"})) == "http://127.0.0.1:7001"
    everywhere = Settings.from_env({**env, "HEATER_WEB_HOST": "0.0.0.0"})
    assert canonical_url(everywhere) == f"https://{socket.gethostname()}:7001"
    assert faust_options(everywhere, SERVICE)["canonical_url"] == canonical_url(everywhere)


def test_a_key_another_worker_owns_is_forwarded_over_mtls_with_the_callers_token(
    workers: list[ServiceProcess], own_broker: EmbeddedBroker, vault: EmbeddedVault
) -> None:
    instance = f"{BEATING}-{uuid.uuid4().hex[:8]}"
    key_path = f"/table/{TABLE}/{BEATING}/"

    def row_on(worker: ServiceProcess) -> Any:
        run(produce(own_broker.bootstrap, "heartbeats", [beat(instance)], key=BEATING.encode()))
        status, body = http_json(worker.url + key_path, timeout=5, token=worker.token("viewer"))
        return status == 200 and body["value"]["instance"] == instance and body

    # Both workers agree on which of them owns the key: Faust's assignment, not the test's choice.
    by_url = {w.url: w for w in workers}
    owners = wait_for(lambda: (found := {owner_url(w, BEATING) for w in workers}) and len(found) == 1
                      and None not in found and found, OWNER_KNOWN_S, 0.5, "both workers naming one owner")
    (named,) = owners
    assert named.startswith("https://"), f"the router names the owner by a URL a client can call: {named}"
    owner = by_url[named]
    (other,) = [w for w in workers if w is not owner]

    # 1. Asked of the worker that does not own it: the owner's value, the owner served it.
    before = len(served_lines(owner, BEATING))
    forwarded = wait_for(lambda: row_on(other), 30, 0.5, "the key read through the worker that does not own it")
    direct = http_json(owner.url + key_path, timeout=5, token=owner.token("viewer"))[1]
    assert forwarded["value"]["instance"] == direct["value"]["instance"] == instance
    assert not served_lines(other, BEATING), "the other worker never served the key from its own (standby) store"
    lines = served_lines(owner, BEATING)
    assert len(lines) > before
    forward_line = lines[before]
    assert "to harness (viewer)" in forward_line, forward_line
    assert re.search(rf"client certificate CN={SERVICE}\b", forward_line), \
        f"the forward arrived with the service's own certificate: {forward_line}"
    direct_line = served_lines(owner, BEATING)[-1]
    assert f"client certificate CN={CLI_SUBJECT}" in direct_line, f"a direct call shows the harness's: {direct_line}"

    # 2. The forward carries the caller's authority, nothing more.
    served_before = len(served_lines(owner, BEATING))
    for token in (None, "not-a-token"):
        status, _ = http_json(other.url + key_path, timeout=5, token=token)
        assert status == 401, f"token {token!r} through the other worker: {status}"
    worker_identity = TLSFiles(Path(owner.env["HEATER_TLS_DIR"])).client_context()
    status, _ = get_with(owner.url + key_path, worker_identity, None)
    assert status == 401, "the service's certificate alone (what a forward presents) grants nothing"
    status, _ = get_with(owner.url + key_path, worker_identity, owner.token("viewer"))
    assert status == 200, "the service's certificate with the caller's token: what a forward is"
    assert len(served_lines(owner, BEATING)) == served_before + 1, "only the forward with a token was served"

    # 3. Without the certificate the owner refuses the same request, the caller's valid token notwithstanding.
    no_certificate = ssl.create_default_context(cafile=str(Path(owner.env["HEATER_TLS_DIR"]) / "ca.crt"))
    status, body = get_with(owner.url + key_path, no_certificate, owner.token("viewer"))
    assert status == 401 and b"client certificate" in body
    plain = owner.url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        get_with(plain + key_path, None, owner.token("viewer"))
    assert len(served_lines(owner, BEATING)) == served_before + 1

