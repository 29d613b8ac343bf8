"""The one settings module: defaults, then the environment, then the live config topic.

Two profiles, chosen by name (``HEATER_PROFILE``):

* ``local`` — the embedded Kafka-protocol broker on 127.0.0.1. Its quirks are
  configured around here and only here: a short session timeout and heartbeat
  (JoinGroup waits about half the session timeout), the ``tansu://`` transport that
  corrects end-of-log offsets for changelog recovery, and a fetch wait well below
  Faust's hard-coded 1500 ms — short (10 ms) only for consumers on the FATAL path,
  because polling costs CPU.
* ``production`` — real Kafka (Strimzi) with its defaults; TLS/SASL settings are
  passed through from the environment.

Reading settings does no I/O beyond ``os.environ``; secrets are never held here,
only the paths where Vault credentials can be found.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

PROFILES = ("local", "production")
#: Span exporters (streams.tracing): a JSON-lines file per service, an OTLP collector, or none.
TRACE_EXPORTERS = ("file", "otlp", "none")

#: Bind addresses that listen everywhere and name no host another worker could call.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})

#: How long a fetch waits for data (ms) in the local profile. The broker's gate answers a
#: fetch as soon as data arrives (:mod:`heater.runtime.log_mirror`), so this is not a delay
#: on the FATAL path: it sets how often an idle reader polls, and each poll costs CPU in
#: the reader and in the gate (measured, the whole idle platform: 151 % of a core at 10 ms
#: on the FATAL path, 109 % at 100 ms). Only a fetch the gate passes to the broker (a
#: partition it gave up, with a warning) waits it out.
FETCH_WAIT_MS = 100
#: How long a fetch of the platform watch (alarms, latch, configuration: quiet topics every
#: service follows) waits for data. Its records are answered as they arrive, like any other
#: reader's, so this only sets how often an idle watch polls: at 100 ms the ten watches made
#: a hundred empty fetches a second, a quarter of all the requests of the idle platform. The
#: watch that trips the Pico on FATAL (the I2C adapter's) keeps :data:`FETCH_WAIT_MS`, so a
#: partition the gate gives up (its fetches then wait at the broker) stays quick there.
WATCH_FETCH_WAIT_MS = 1000


@dataclass(frozen=True)
class InputFetch:
    """How a service's input fetches wait: up to ``wait_ms`` for ``min_bytes`` (the gate answers a
    fetch as soon as that much is there, so ``min_bytes=1`` answers each record as it arrives)."""

    wait_ms: int
    min_bytes: int = 1


#: Each record answered as it arrives: inputs on the FATAL path, and every control service's.
PROMPT_INPUT = InputFetch(FETCH_WAIT_MS)
#: The readings, for a service that decides them off the FATAL limit's path (the CAN adapter
#: judges that limit as each frame arrives): a fetch takes what arrived within
#: :data:`FETCH_WAIT_MS` in one answer, or a backlog's megabyte at once. At rest that is ten
#: fetches a second for the 40 readings, not one each (measured on the idle platform: the bank
#: 9.1 → 3.6 % of a core), under load the same batches as before. Not DisasterDetector's: it
#: weighs readings against the heating job's state, another topic, and a batch of both
#: handed the job's end ahead of readings taken before it (a replayed incident decided otherwise).
READINGS_INPUT = InputFetch(FETCH_WAIT_MS, 1 << 20)
#: A rare input off the FATAL path (configuration requests; the heating job's state and the
#: registry's and exception counts' tables that the Home app shows): each record answered as it
#: arrives, and an idle reader asks once a second instead of ten (or four) times (only a fetch
#: the gate passes to the broker waits the second out).
QUIET_INPUT = InputFetch(1000)
#: What only feeds a display (the Home app, the dashboard, a display service's tables): a fetch
#: takes what arrived within a quarter second in one answer, or a backlog's megabyte at once. A
#: display shows at most one state per quarter second, and a fetch answered as each reading
#: arrived woke the broker's gate and the reading process 40 times a second per reader for nothing.
DISPLAY_INPUT = InputFetch(250, 1 << 20)


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable to fix."""


@dataclass(frozen=True)
class Settings:
    """Everything a heater process needs to know about where it runs."""

    profile: str = "local"
    broker_url: str = "kafka://127.0.0.1:9092"
    vault_addr: str = "http://127.0.0.1:8200"
    #: The service's AppRole credentials (files: a Kubernetes Secret's mount in production);
    #: the service logs in with them and keeps its own Vault token (streams.vault).
    vault_role_id_file: Path | None = None
    vault_secret_id_file: Path | None = None
    #: A Vault token a login agent keeps fresh in a file (production's Vault Agent sidecar).
    vault_token_file: Path | None = None
    run_dir: Path = Path(".run")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    # The hardware: python-can interface/channel, and the I2C bus (a number, or sim://host:port).
    can_interface: str = "socketcan"
    can_channel: str = "can0"
    i2c_bus: str = "1"
    #: Who this process says it is in heartbeats and reports (its certificate subject where
    #: services present certificates); the service name when unset.
    service_identity: str | None = None
    #: The Kubernetes namespace of the platform (production discovery).
    namespace: str = "heater"
    #: This process's pod (the Downward API's ``metadata.name``): the bridge reads its own image
    #: from it, so the heating Jobs it creates run exactly the image the overlay deployed.
    pod_name: str | None = None
    #: ConfigurationServer's bootstrap configuration (a ConfigMap's mount under Kubernetes).
    config_file: Path | None = None
    # Production pass-through (ignored by the local profile).
    broker_security_protocol: str = "PLAINTEXT"
    broker_ssl_cafile: str | None = None
    broker_ssl_certfile: str | None = None
    broker_ssl_keyfile: str | None = None
    broker_sasl_mechanism: str | None = None
    broker_sasl_username: str | None = None
    broker_sasl_password_file: str | None = None
    #: API tokens (streams.auth): the issuer's published keys, its ``iss`` and the ``aud`` tokens
    #: carry. Empty: the local Vault's identity provider, derived from ``vault_addr``.
    auth_jwks_url: str = ""
    auth_issuer: str = ""
    auth_audience: str = "heater"
    #: Where finished spans go (streams.tracing): ``file`` (RUN_DIR/traces), ``otlp`` or ``none``.
    trace_exporter: str = "file"
    #: mTLS on the API port (streams.tls): ``on``, or ``off`` (the local profile only, for a
    #: service run without a Vault to issue its certificate; production refuses it).
    tls: str = "on"
    #: The service's certificate, key and trusted CA (``tls.crt``, ``tls.key``, ``ca.crt``: a
    #: cert-manager Secret's mount in production). Empty: ``RUN_DIR/secrets/tls/SERVICE``.
    tls_dir: Path | None = None
    #: Revoked certificates (a PEM CRL) and how often it is fetched again. Empty under the local
    #: profile: its Vault's PKI (``VAULT/v1/pki_int/crl/pem``); empty in production: none.
    tls_crl_url: str = ""
    tls_crl_refresh_s: float = 5.0
    #: A plain-HTTP port serving only ``/healthz``, ``/readyz`` and ``/metrics`` (probes, Prometheus); 0: none.
    probe_port: int = 0
    #: The SecretsRotator (streams.secrets_rotator): how often it looks, and when it renews — once no
    #: more than this fraction of a certificate's, secret_id's or key's lifetime is left.
    rotator_interval_s: float = 60.0
    rotator_renew_before: float = 1 / 3
    #: Lifetime of the certificates and AppRole secret_ids it issues, and the rotation period of the
    #: API-token signing key and the transit key.
    rotator_cert_ttl_s: float = 24 * 3600.0
    rotator_secret_id_ttl_s: float = 24 * 3600.0
    rotator_key_period_s: float = 7 * 24 * 3600.0
    #: How long a replaced secret_id still logs in (a service may have read it just before the swap).
    rotator_grace_s: float = 300.0
    #: Where the certificates (``tls/NAME``) and AppRole credentials (``approle/NAME``) it renews are.
    #: Empty: ``RUN_DIR/secrets``. Production has neither (cert-manager, Kubernetes auth).
    rotator_secrets_dir: Path | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def tls_dir_for(self, service: str) -> Path:
        """Where ``service``'s certificate files are (streams.tls)."""
        return self.tls_dir or self.run_dir / "secrets" / "tls" / service

    @property
    def secrets_dir(self) -> Path:
        """Where the local platform keeps every service's certificate and AppRole files (the rotator renews them)."""
        return self.rotator_secrets_dir or self.run_dir / "secrets"

    @property
    def crl_url(self) -> str:
        """Where revoked certificates are published ("" for none)."""
        if self.tls_crl_url or self.profile != "local":
            return self.tls_crl_url
        return f"{self.vault_addr.rstrip('/')}/v1/pki_int/crl/pem"

    @property
    def token_issuer(self) -> str:
        """The ``iss`` API tokens must carry (default: the local Vault's identity provider)."""
        return self.auth_issuer or f"{self.vault_addr.rstrip('/')}/v1/identity/oidc"

    @property
    def token_keys_url(self) -> str:
        """Where the issuer publishes its verification keys (JWKS)."""
        return self.auth_jwks_url or f"{self.token_issuer}/.well-known/keys"

    @property
    def data_dir(self) -> Path:
        """Where RocksDB tables live: one directory per service under the run directory."""
        return self.run_dir / "data"

    @property
    def trace_dir(self) -> Path:
        """Where the ``file`` trace exporter writes one JSON-lines file of spans per service."""
        return self.run_dir / "traces"

    @property
    def broker_bootstrap(self) -> str:
        """``host:port`` for plain Kafka clients (aiokafka), without the Faust scheme."""
        return self.broker_url.split("://", 1)[-1].split("?", 1)[0]

    def with_overrides(self, **changes: Any) -> "Settings":
        """A copy with some fields replaced (used by tests and the local runtime)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from ``HEATER_*`` variables over the profile's defaults."""
        env = os.environ if env is None else env
        profile = env.get("HEATER_PROFILE", "local")
        if profile not in PROFILES:
            raise SettingsError(f"HEATER_PROFILE={profile!r}: expected one of {', '.join(PROFILES)}")
        base = cls(profile=profile)
        if profile == "local":
            base = replace(base, broker_url="tansu://127.0.0.1:9092")
        token_file = env.get("HEATER_VAULT_TOKEN_FILE")
        trace_exporter = env.get("HEATER_TRACE_EXPORTER", base.trace_exporter)
        if trace_exporter not in TRACE_EXPORTERS:
            raise SettingsError(f"HEATER_TRACE_EXPORTER={trace_exporter!r}: expected one of {', '.join(TRACE_EXPORTERS)}")
        web_port = _number(env, "HEATER_WEB_PORT", base.web_port, int)
        tls = env.get("HEATER_TLS", base.tls)
        if tls not in ("on", "off"):
            raise SettingsError(f"HEATER_TLS={tls!r}: expected on or off")
        if tls == "off" and profile != "local":
            raise SettingsError("HEATER_TLS=off is refused under the production profile: every API needs mTLS there")
        return replace(
            base,
            broker_url=env.get("HEATER_BROKER_URL", base.broker_url),
            vault_addr=env.get("HEATER_VAULT_ADDR", base.vault_addr),
            vault_role_id_file=_path(env.get("HEATER_VAULT_ROLE_ID_FILE")),
            vault_secret_id_file=_path(env.get("HEATER_VAULT_SECRET_ID_FILE")),
            vault_token_file=_path(token_file),
            run_dir=Path(env.get("HEATER_RUN_DIR", str(base.run_dir))),
            web_host=env.get("HEATER_WEB_HOST", base.web_host),
            web_port=web_port,
            can_interface=env.get("HEATER_CAN_INTERFACE", base.can_interface),
            can_channel=env.get("HEATER_CAN_CHANNEL", base.can_channel),
            i2c_bus=env.get("HEATER_I2C_BUS", base.i2c_bus),
            service_identity=env.get("HEATER_SERVICE_IDENTITY") or None,
            namespace=env.get("HEATER_NAMESPACE", base.namespace),
            pod_name=env.get("HEATER_POD_NAME") or None,
            config_file=Path(env["HEATER_CONFIG_FILE"]) if env.get("HEATER_CONFIG_FILE") else None,
            broker_security_protocol=env.get("HEATER_BROKER_SECURITY_PROTOCOL", "PLAINTEXT"),
            broker_ssl_cafile=env.get("HEATER_BROKER_SSL_CAFILE"),
            broker_ssl_certfile=env.get("HEATER_BROKER_SSL_CERTFILE"),
            broker_ssl_keyfile=env.get("HEATER_BROKER_SSL_KEYFILE"),
            broker_sasl_mechanism=env.get("HEATER_BROKER_SASL_MECHANISM"),
            broker_sasl_username=env.get("HEATER_BROKER_SASL_USERNAME"),
            broker_sasl_password_file=env.get("HEATER_BROKER_SASL_PASSWORD_FILE"),
            auth_jwks_url=env.get("HEATER_AUTH_JWKS_URL", ""),
            auth_issuer=env.get("HEATER_AUTH_ISSUER", ""),
            auth_audience=env.get("HEATER_AUTH_AUDIENCE", base.auth_audience),
            trace_exporter=trace_exporter,
            tls=tls,
            tls_dir=_path(env.get("HEATER_TLS_DIR")),
            tls_crl_url=env.get("HEATER_TLS_CRL_URL", ""),
            tls_crl_refresh_s=_number(env, "HEATER_TLS_CRL_REFRESH_S", base.tls_crl_refresh_s, float),
            probe_port=_number(env, "HEATER_PROBE_PORT", base.probe_port, int),
            rotator_interval_s=_number(env, "HEATER_ROTATOR_INTERVAL_S", base.rotator_interval_s, float),
            rotator_renew_before=_fraction(env, "HEATER_ROTATOR_RENEW_BEFORE", base.rotator_renew_before),
            rotator_cert_ttl_s=_number(env, "HEATER_ROTATOR_CERT_TTL_S", base.rotator_cert_ttl_s, float),
            rotator_secret_id_ttl_s=_number(env, "HEATER_ROTATOR_SECRET_ID_TTL_S", base.rotator_secret_id_ttl_s, float),
            rotator_key_period_s=_number(env, "HEATER_ROTATOR_KEY_PERIOD_S", base.rotator_key_period_s, float),
            rotator_grace_s=_number(env, "HEATER_ROTATOR_GRACE_S", base.rotator_grace_s, float),
            rotator_secrets_dir=_path(env.get("HEATER_ROTATOR_SECRETS_DIR")),
        )


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _number(env: Mapping[str, str], name: str, default: Any, kind: type) -> Any:
    try:
        return kind(env.get(name, default))
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number: {exc}") from None


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    value = _number(env, name, default, float)
    if not 0.0 < value < 1.0:
        raise SettingsError(f"{name}={value}: expected a fraction of a lifetime, between 0 and 1 (exclusive)")
    return value


def faust_options(settings: Settings, service: str, input_fetch: InputFetch = PROMPT_INPUT) -> dict[str, Any]:
    """Faust ``App`` configuration for one service under the chosen profile."""
    options: dict[str, Any] = {
        "broker": settings.broker_url,
        "store": "rocksdb://",
        "datadir": str(settings.data_dir / service),
        "web_enabled": True,
        # Faust's table views, extended (streams.table_views) and served by the platform's driver.
        "web": "heater://",
        "web_tables_enabled": True,
        "web_bind": settings.web_host,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "canonical_url": canonical_url(settings),
        "topic_allow_declare": True,
        "topic_disable_leader": True,
        # No linger: aiokafka keeps one request in flight per broker and sends what queued
        # meanwhile in the next, so batches form under load by themselves. A linger only
        # held every alarm and changelog row back (measured: FATAL → cut p50 18 → 13 ms,
        # and the bank decides more readings a second, not fewer).
        "producer_linger": 0.0,
        "table_cleanup_interval": 30.0,
        # A changelog row the broker refuses is sent again, or the service crashes (never dropped).
        "Table": "streams.delivery:ReliableTable",
    }
    if settings.profile == "local":
        options.update(
            broker=_with_query(settings.broker_url, fetch_wait_ms=input_fetch.wait_ms,
                               fetch_min_bytes=input_fetch.min_bytes),
            broker_session_timeout=2.0,
            broker_heartbeat_interval=0.5,
            broker_rebalance_timeout=10.0,
            broker_request_timeout=10.0,
            stream_recovery_delay=0.0,
            broker_commit_interval=1.0,
            # The local broker starts empty on every start, so a worker living through one
            # finds its tables' changelogs shorter than what its local store holds. Faust calls
            # that inconsistent and crashes; here the local store is the truth (the ledger
            # follows the new log; see streams.consistency and streams.tables.bulk_restore).
            recovery_consistency_check=False,
            TableManager="streams.tables.manager:LocalTableManager",
        )
    else:
        options.update(production_security(settings))
    return options


def canonical_url(settings: Settings) -> str:
    """This worker's API as the other workers of its service call it: ``https`` unless ``HEATER_TLS=off``.

    Faust's assignor tells every worker of a group each one's canonical URL, and its router
    forwards a table-key request to the URL of the worker that owns the key (``/router/``
    names it). Left to Faust, every worker came out as ``http://HOSTNAME:6066`` whatever its
    web port: two workers on one host claimed one URL, the assignor's map kept one of them,
    and a key had no owner (503 from either). And the API port serves HTTPS only
    (:mod:`streams.tls`). A wildcard bind address (production's ``0.0.0.0``) names no one:
    the host's name stands for it there, as in Faust's default.
    """
    scheme = "http" if settings.tls == "off" else "https"
    host = settings.web_host if settings.web_host not in WILDCARD_HOSTS else socket.gethostname()
    return f"{scheme}://{host}:{settings.web_port}"


def _with_query(url: str, **params: Any) -> str:
    base, _, query = url.partition("?")
    pairs = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
    pairs.update({k: str(v) for k, v in params.items()})
    return base + "?" + "&".join(f"{k}={v}" for k, v in sorted(pairs.items()))


def production_security(settings: Settings) -> dict[str, Any]:
    """TLS/SASL for real Kafka, built only when asked for, so a local run never needs certs."""
    import ssl

    import faust

    protocol = settings.broker_security_protocol.upper()
    if protocol == "PLAINTEXT":
        return {}
    context: ssl.SSLContext | None = None
    if "SSL" in protocol:
        context = ssl.create_default_context(cafile=settings.broker_ssl_cafile)
        if settings.broker_ssl_certfile and settings.broker_ssl_keyfile:
            context.load_cert_chain(settings.broker_ssl_certfile, settings.broker_ssl_keyfile)
    if protocol == "SSL":
        return {"broker_credentials": faust.SSLCredentials(context)}
    if not (settings.broker_sasl_username and settings.broker_sasl_password_file):
        raise SettingsError(
            "HEATER_BROKER_SASL_USERNAME and HEATER_BROKER_SASL_PASSWORD_FILE are required "
            f"for HEATER_BROKER_SECURITY_PROTOCOL={protocol}"
        )
    password = Path(settings.broker_sasl_password_file).read_text().strip()
    return {
        "broker_credentials": faust.SASLCredentials(
            username=settings.broker_sasl_username,
            password=password,
            mechanism=settings.broker_sasl_mechanism or "SCRAM-SHA-512",
            ssl_context=context,
        )
    }
