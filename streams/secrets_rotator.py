"""The SecretsRotator (`heater worker secrets`): renews what expires before it does.

A plain asyncio service on :class:`~streams.edge.EdgeService` (health, readiness, metrics,
heartbeats, its alarm). Before anything else it checks that Vault answers with its own
AppRole and knows the keys it rotates, then that the broker answers; either missing is an
error naming which and where, and the exit code ``DEPENDENCY_MISSING``. It is ready once
its first round has gone through.

Every ``HEATER_ROTATOR_INTERVAL_S`` it describes everything that expires as records
(:mod:`streams.rotation_rules` decides, without I/O, what is due) and renews what is:

* the certificate of every service (local profile: each directory under
  ``SECRETS/tls/``), issued by Vault's PKI and written file by file, atomically, key first
  (:mod:`streams.pki`); services load it within a second without a restart
  (:mod:`streams.tls`). In production cert-manager renews certificates.
* the AppRole secret_id of every service (local profile: ``SECRETS/approle/NAME``): a new
  one with a TTL is written where the service reads it at its next login; the old ones are
  destroyed by accessor once the grace period after the swap has passed.
* the API-token signing key (Vault's identity OIDC key ``heater-api``): rotated with its
  verification TTL, so tokens signed with the previous key still verify until they expire.
* the transit key that signs operator resets: a new version signs, the older ones still verify.

A failed renewal raises ``rotation-failed`` (WARNING, subject ``KIND/NAME``), cleared by the
next successful one. No secret, token or key is ever logged: only kinds, names and times.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import hvac
import requests
from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from streams import exitcodes
from streams import rotation_rules as rules
from streams.auth import MIN_REFRESH_S, Role, requires
from streams.edge import EdgeService
from streams.lifecycle import Phase, ServiceKind, ServiceSpec
from streams.pki import issue, replace_private
from streams.records import Severity
from streams.settings import Settings
from streams.tls import CERT_FILE
from streams.vault import API_TOKEN_KEY, APPROLE_MOUNT, RESET_SIGNING_KEY, VaultUnavailable, approle_files, vault_client

log = logging.getLogger(__name__)

SPEC = ServiceSpec("secrets", ServiceKind.DISPLAY,
                   description="SecretsRotator: certificates, AppRole secret_ids and signing keys renewed before expiry")
ALARM_CODE = "rotation-failed"
#: A Vault call that takes longer than this is a failed round (hvac blocks; it runs in a thread).
CALL_TIMEOUT_S = 15.0

ROTATIONS = Counter("heater_rotations_total", "Renewals the SecretsRotator attempted, by kind and outcome",
                    ["kind", "outcome"])
NEXT_EXPIRY = Gauge("heater_rotation_next_expiry_seconds",
                    "Seconds until the first of the rotator's certificates, secret_ids and keys of a kind expires",
                    ["kind"])
NEXT_DUE = Gauge("heater_rotation_next_due_seconds", "Seconds until the rotator renews something next")


class RotationError(RuntimeError):
    """One renewal failed; the message names what and why, never a secret."""


def check_vault(client: hvac.Client, settings: Settings) -> None:
    """Vault answers, our AppRole logs in, and the keys we rotate exist: else :class:`VaultUnavailable`."""
    where = settings.vault_addr
    try:
        client.sys.read_health_status(method="GET")
    except (requests.RequestException, hvac.exceptions.VaultError) as exc:
        raise VaultUnavailable(f"Vault at {where} is unreachable: {type(exc).__name__}") from None
    for path in (f"identity/oidc/key/{API_TOKEN_KEY}", f"transit/keys/{RESET_SIGNING_KEY}"):
        try:
            found = client.read(path)
        except hvac.exceptions.Forbidden:
            raise VaultUnavailable(f"Vault at {where} refuses {path} to the rotator's credentials") from None
        except (requests.RequestException, hvac.exceptions.VaultError) as exc:
            raise VaultUnavailable(f"Vault at {where} could not read {path}: {type(exc).__name__}") from None
        if found is None:
            raise VaultUnavailable(f"Vault at {where} has no {path}: run the Vault setup first")


@dataclass
class RoundResult:
    items: list[rules.Item] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class SecretsRotator:
    """Describe, decide, renew: one round at a time (Vault calls in a thread)."""

    def __init__(self, service: EdgeService, client: hvac.Client, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.client = client
        self.clock = clock
        self.settings = service.settings
        self.local = self.settings.profile == "local"
        self.state_file = self.settings.data_dir / SPEC.name / "rotation.json"
        self.last: RoundResult | None = None
        self.rounds = 0
        self.alarmed: set[str] = set()

    def install(self) -> None:
        self.service.web.router.add_get("/rotation", self.rotation_view)
        self.service.status.reason = "first rotation round not done yet"

    # -- the running body --------------------------------------------------------------

    async def body(self, service: EdgeService) -> None:
        while True:
            await self.round()
            await asyncio.sleep(self.settings.rotator_interval_s)

    async def round(self) -> RoundResult:
        """One round: renew what is due, then report it (metrics, alarms, readiness)."""
        try:
            result = await asyncio.wait_for(asyncio.to_thread(self.rotate_due), CALL_TIMEOUT_S * 4)
        except (VaultUnavailable, requests.RequestException, hvac.exceptions.VaultError, asyncio.TimeoutError,
                OSError) as exc:
            result = RoundResult(failed={"vault": f"{type(exc).__name__}: {exc}" if isinstance(exc, VaultUnavailable)
                                         else type(exc).__name__})
            log.error("rotation round failed: %s", result.failed["vault"])
        self.last = result
        self.rounds += 1
        await self._report(result)
        return result

    async def _report(self, result: RoundResult) -> None:
        now = self.clock()
        for kind in rules.KINDS:
            first = rules.next_expiry(i for i in result.items if i.kind == kind)
            if first is not None:
                NEXT_EXPIRY.labels(kind).set(first.expires_at - now)
        if result.items:
            NEXT_DUE.set(min(i.renew_at(self.settings.rotator_renew_before) for i in result.items) - now)
        if "vault" not in result.failed and self.service.status.phase is Phase.STARTING:
            self.service.mark_ready()
        alarms = self.service.alarms
        if alarms is None:
            return
        for subject, why in result.failed.items():
            if subject in self.alarmed:
                continue
            try:
                await alarms.raise_alarm(ALARM_CODE, Severity.WARNING, f"renewing {subject} failed: {why}",
                                         subject=subject)
                self.alarmed.add(subject)
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                log.error("could not raise %s for %s: %s", ALARM_CODE, subject, exc)
        if "vault" in result.failed:
            return  # nothing else was looked at: what failed before is not known to work now
        for subject in sorted(self.alarmed - set(result.failed)):
            try:
                if await alarms.clear_alarm(ALARM_CODE, subject, reason="renewed, or no longer due"):
                    self.alarmed.discard(subject)
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                log.error("could not clear %s for %s: %s", ALARM_CODE, subject, exc)

    # -- describe and renew (blocking: runs in a thread) -------------------------------

    def rotate_due(self) -> RoundResult:
        result = RoundResult()
        describers: list[tuple[str, Callable[[], list[tuple[rules.Item, Callable[[], None]]]]]] = [
            (rules.API_TOKEN_KEY, self._api_token_key), (rules.TRANSIT_KEY, self._transit_key)]
        if self.local:
            describers = [(rules.CERTIFICATE, self._certificates), (rules.SECRET_ID, self._secret_ids)] + describers
        for kind, describe in describers:
            try:
                found = describe()
            except (VaultUnavailable, requests.RequestException, hvac.exceptions.VaultError, OSError, ValueError) as exc:
                result.failed[kind] = _why(exc)
                ROTATIONS.labels(kind, "failed").inc()
                log.error("rotation: cannot describe the %ss: %s", kind, result.failed[kind])
                continue
            items = {item.name: (item, renew) for item, renew in found}
            result.items.extend(item for item, _ in found)
            for item in rules.due((i for i, _ in found), self.clock(), self.settings.rotator_renew_before):
                subject = f"{item.kind}/{item.name}"
                try:
                    items[item.name][1]()
                except (VaultUnavailable, requests.RequestException, hvac.exceptions.VaultError, OSError, ValueError,
                        KeyError) as exc:
                    result.failed[subject] = _why(exc)
                    ROTATIONS.labels(kind, "failed").inc()
                    log.error("rotation of %s failed: %s", subject, result.failed[subject])
                    continue
                result.renewed.append(subject)
                ROTATIONS.labels(kind, "renewed").inc()
                log.info("renewed %s, %.0f s before it expired", subject, item.expires_at - self.clock())
        if self.local:
            self._destroy_stale_secret_ids(result)
        return result

    def _certificates(self) -> list[tuple[rules.Item, Callable[[], None]]]:
        from cryptography import x509

        out = []
        base = self.settings.secrets_dir / "tls"
        ttl = self.settings.rotator_cert_ttl_s
        for directory in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
            path = directory / CERT_FILE
            if not path.is_file():
                continue
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            item = rules.certificate_item(directory.name, cert.not_valid_before_utc.timestamp(),
                                          cert.not_valid_after_utc.timestamp(), ttl)
            out.append((item, lambda d=directory: self._issue(d)))
        return out

    def _issue(self, directory: Path) -> None:
        issue(self.client, directory.name, directory, ttl=f"{int(self.settings.rotator_cert_ttl_s)}s")

    def _secret_ids(self) -> list[tuple[rules.Item, Callable[[], None]]]:
        out = []
        base = self.settings.secrets_dir / "approle"
        for directory in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
            role = directory.name
            _, secret_file = approle_files(self.settings.secrets_dir, role)
            current = self._current_secret_id(role, secret_file)
            if current is None:  # Vault does not know the one on file (destroyed, expired): replace it now
                now = self.clock()
                item = rules.Item(rules.SECRET_ID, role, now - 1, now)
            else:
                item = rules.secret_id_item(role, current, self.settings.rotator_secret_id_ttl_s)
            out.append((item, lambda r=role, f=secret_file: self._new_secret_id(r, f)))
        return out

    def _role(self, role: str) -> str:
        return f"auth/{APPROLE_MOUNT}/role/{role}"

    def _current_secret_id(self, role: str, secret_file: Path) -> rules.SecretIdRecord | None:
        answer = self.client.write(f"{self._role(role)}/secret-id/lookup", secret_id=secret_file.read_text().strip())
        if not isinstance(answer, dict) or not answer.get("data"):
            return None
        return _secret_id_record(answer["data"])

    def _new_secret_id(self, role: str, secret_file: Path) -> None:
        answer = self.client.write(f"{self._role(role)}/secret-id", ttl=f"{int(self.settings.rotator_secret_id_ttl_s)}s")
        replace_private(secret_file, answer["data"]["secret_id"])

    def _destroy_stale_secret_ids(self, result: RoundResult) -> None:
        base = self.settings.secrets_dir / "approle"
        for directory in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
            role = directory.name
            try:
                current = self._current_secret_id(role, approle_files(self.settings.secrets_dir, role)[1])
                if current is None:
                    continue
                listed = self.client.list(f"{self._role(role)}/secret-id") or {}
                records = [current]
                for accessor in listed.get("data", {}).get("keys", []):
                    if accessor == current.accessor:
                        continue
                    found = self.client.write(f"{self._role(role)}/secret-id-accessor/lookup",
                                              secret_id_accessor=accessor)
                    if isinstance(found, dict) and found.get("data"):
                        records.append(_secret_id_record(found["data"]))
                for accessor in rules.stale_secret_ids(records, current.accessor, self.clock(),
                                                       self.settings.rotator_grace_s):
                    self.client.write(f"{self._role(role)}/secret-id-accessor/destroy", secret_id_accessor=accessor)
                    ROTATIONS.labels(rules.SECRET_ID, "destroyed").inc()
                    log.info("destroyed a replaced secret_id of %s after the grace period", role)
            except (VaultUnavailable, requests.RequestException, hvac.exceptions.VaultError, OSError) as exc:
                result.failed[f"{rules.SECRET_ID}/{role}"] = _why(exc)
                log.error("replaced secret_ids of %s not destroyed: %s", role, _why(exc))

    def _api_token_key(self) -> list[tuple[rules.Item, Callable[[], None]]]:
        """Vault tells no creation time for this key: the rotator keeps when it rotated it (or first saw it)."""
        state = self._state()
        rotated_at = state.setdefault(rules.API_TOKEN_KEY, self.clock())
        self._save_state(state)
        item = rules.key_item(rules.API_TOKEN_KEY, API_TOKEN_KEY, rotated_at, self.settings.rotator_key_period_s)
        return [(item, self._rotate_api_token_key)]

    def _rotate_api_token_key(self) -> None:
        path = f"identity/oidc/key/{API_TOKEN_KEY}"
        verification_ttl = (self.client.read(path) or {}).get("data", {}).get("verification_ttl")
        if not verification_ttl:
            raise RotationError(f"{path} has no verification TTL: tokens signed with the old key would stop verifying")
        self.client.write(f"{path}/rotate", verification_ttl=verification_ttl)
        state = self._state()
        state[rules.API_TOKEN_KEY] = self.clock()
        self._save_state(state)

    def _transit_key(self) -> list[tuple[rules.Item, Callable[[], None]]]:
        data = self.client.read(f"transit/keys/{RESET_SIGNING_KEY}")["data"]
        latest = data["keys"][str(data["latest_version"])]
        created = rules.parse_vault_time(latest["creation_time"] if isinstance(latest, dict) else latest)
        item = rules.key_item(rules.TRANSIT_KEY, RESET_SIGNING_KEY, created, self.settings.rotator_key_period_s)
        return [(item, self._rotate_transit_key)]

    def _rotate_transit_key(self) -> None:
        self.client.write(f"transit/keys/{RESET_SIGNING_KEY}/rotate")

    def _state(self) -> dict[str, float]:
        try:
            return {k: float(v) for k, v in json.loads(self.state_file.read_text()).items()}
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict[str, float]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_name(self.state_file.name + ".new")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, self.state_file)

    # -- view --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now, before = self.clock(), self.settings.rotator_renew_before
        last = self.last or RoundResult()
        return {
            "profile": self.settings.profile,
            "interval_s": self.settings.rotator_interval_s,
            "renew_before": before,
            "rounds": self.rounds,
            "items": [i.as_dict(before, now) for i in sorted(last.items, key=lambda i: i.renew_at(before))],
            "renewed_last_round": last.renewed,
            "failed_last_round": last.failed,
        }

    @requires(Role.VIEWER)
    async def rotation_view(self, request: web.Request) -> web.Response:
        """``/rotation``: what expires when, what the last round renewed or failed to."""
        return web.json_response(self.snapshot())


def _secret_id_record(data: dict[str, Any]) -> rules.SecretIdRecord:
    return rules.SecretIdRecord(data["secret_id_accessor"], rules.parse_vault_time(data.get("creation_time")),
                                rules.parse_vault_time(data.get("expiration_time")))


def _why(exc: BaseException) -> str:
    """What went wrong, without echoing a request (hvac's messages may quote one)."""
    if isinstance(exc, (VaultUnavailable, RotationError)):
        return str(exc)
    if isinstance(exc, hvac.exceptions.VaultError):
        return f"Vault refused: {type(exc).__name__}"
    return type(exc).__name__ + (f": {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else "")


def main() -> int:
    """Run the SecretsRotator; the process exit code (see :mod:`streams.exitcodes`)."""
    logging.basicConfig(level=os.environ.get("HEATER_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    every = rules.rotated_every(settings.rotator_key_period_s, settings.rotator_renew_before)
    if every <= MIN_REFRESH_S:
        # Vault publishes the next API-token key one rotation ahead; a service fetches the keys again
        # at most every MIN_REFRESH_S, so a key used sooner after its publication could be unknown to it.
        log.error("secrets: HEATER_ROTATOR_KEY_PERIOD_S=%g with HEATER_ROTATOR_RENEW_BEFORE=%g rotates the API-token "
                  "key every %g s: it must be more than %g s", settings.rotator_key_period_s,
                  settings.rotator_renew_before, every, MIN_REFRESH_S)
        return exitcodes.CONFIG
    try:
        client = vault_client(settings)
        check_vault(client, settings)
    except VaultUnavailable as exc:
        log.error("secrets: %s", exc)
        return exitcodes.DEPENDENCY_MISSING
    service = EdgeService(SPEC, settings)
    rotator = SecretsRotator(service, client)
    rotator.install()
    return service.run(rotator.body)
