"""mTLS on every service's API: its own certificate, client certificates from the platform CA, revocation.

A service reads three files from its TLS directory (:meth:`Settings.tls_dir_for`): ``tls.crt``
(its certificate and the intermediate), ``tls.key`` and ``ca.crt`` (the CA it trusts) — the
keys of a cert-manager Secret, so production mounts one as it is. Locally they come from
Vault's PKI (:mod:`heater.runtime.pki`). Whoever renews them (cert-manager, the
SecretsRotator) writes new files; the service sees them within a second and loads them into
its live contexts, so it never restarts for a new certificate and open connections carry on.

The API port asks every caller for a certificate (``CERT_OPTIONAL``: the handshake itself
refuses one from another CA, and a caller without one gets an HTTP answer that says so
rather than a bare handshake failure). :func:`refusal_for` is the check the auth middleware
makes first: a certificate is required, and a revoked one (by serial, from the CRL fetched
every few seconds) is refused. A second, plain port (``HEATER_PROBE_PORT``) serves only
``/healthz``, ``/readyz`` and ``/metrics``, for callers that cannot present a certificate:
the kubelet's probes and Prometheus. A browser holding a session (opened with a one-time
ticket, itself asked for over mTLS with a token) reads viewer pages without a certificate.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from aiohttp import web

log = logging.getLogger(__name__)

CERT_FILE, KEY_FILE, CA_FILE = "tls.crt", "tls.key", "ca.crt"
#: What the plain probe port serves; everything else there is refused.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: How often the files are looked at for a renewed certificate.
RELOAD_CHECK_S = 1.0
CRL_TIMEOUT_S = 3.0


class TLSMaterialError(OSError):
    """A certificate, key or CA is missing or unusable; the message names the file."""


@dataclass(frozen=True)
class TLSFiles:
    """A TLS directory: certificate, key, trusted CA."""

    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE

    def stamp(self) -> tuple[float, ...] | None:
        """Changes whenever one of the files is replaced (None while one is missing)."""
        try:
            return tuple(p.stat().st_mtime_ns for p in (self.cert, self.key, self.ca))
        except FileNotFoundError:
            return None

    def server_context(self) -> ssl.SSLContext:
        """For the API port: this certificate, and callers' certificates from the CA (asked, checked)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_OPTIONAL
        self._load(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """For calling another service: its certificate must chain to the CA; this one is presented."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks the name; trusts only the platform CA
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(context)
        return context

    def _load(self, context: ssl.SSLContext) -> None:
        for path in (self.cert, self.key, self.ca):
            if not path.is_file():
                raise TLSMaterialError(f"no {path.name} in {self.directory}: the service's certificate is not issued")
        try:
            context.load_verify_locations(cafile=str(self.ca))
            context.load_cert_chain(str(self.cert), str(self.key))
        except (ssl.SSLError, ValueError) as exc:
            raise TLSMaterialError(f"the certificate in {self.directory} is unusable: {exc}") from None


def serials_of_crl(pem: bytes) -> frozenset[int]:
    """The serial numbers a PEM (or DER) CRL revokes."""
    from cryptography import x509

    crl = x509.load_pem_x509_crl(pem) if pem.lstrip().startswith(b"-----") else x509.load_der_x509_crl(pem)
    return frozenset(entry.serial_number for entry in crl)


def certificate_facts(path: Path) -> tuple[int, float]:
    """(serial, expiry as a Unix time) of the first certificate in a PEM file."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.serial_number, cert.not_valid_after_utc.timestamp()


class ServiceTLS:
    """A service's live TLS contexts: reloaded when the files change, and the revoked serials."""

    def __init__(self, files: TLSFiles, crl_url: str = "", crl_refresh_s: float = 5.0) -> None:
        self.files = files
        self.crl_url = crl_url
        self.crl_refresh_s = crl_refresh_s
        self.server = files.server_context()
        self.client = files.client_context()
        self._stamp = files.stamp()
        self.revoked: frozenset[int] = frozenset()
        self.crl_fetched_at: float | None = None
        self.reloads = 0
        self.serial, self.expires_at = certificate_facts(files.cert)

    @classmethod
    def from_settings(cls, settings: Any, service: str) -> "ServiceTLS | None":
        """The service's TLS (None when ``HEATER_TLS=off``); :class:`TLSMaterialError` without its files."""
        if settings.tls == "off":
            log.warning("%s: HEATER_TLS=off: the API is plain HTTP without client certificates", service)
            return None
        return cls(TLSFiles(settings.tls_dir_for(service)), settings.crl_url, settings.tls_crl_refresh_s)

    def reload_if_changed(self) -> bool:
        """Load renewed files into the live contexts; a half-written pair is left for the next look."""
        stamp = self.files.stamp()
        if stamp is None or stamp == self._stamp:
            return False
        try:
            self.files.server_context()  # the new key and certificate belong together, or nothing changes
            serial, expires_at = certificate_facts(self.files.cert)
        except (TLSMaterialError, ValueError, OSError) as exc:
            log.warning("renewed certificate in %s not loaded yet: %s", self.files.directory, exc)
            return False
        for context in (self.server, self.client):
            context.load_verify_locations(cafile=str(self.files.ca))
            context.load_cert_chain(str(self.files.cert), str(self.files.key))
        self._stamp, self.serial, self.expires_at = stamp, serial, expires_at
        self.reloads += 1
        log.info("certificate reloaded from %s: serial %x, valid for %.0f s", self.files.directory, serial,
                 expires_at - time.time())
        return True

    def is_revoked(self, serial: int) -> bool:
        return serial in self.revoked

    async def refresh_crl(self) -> None:
        """Fetch the revoked serials; on failure the last list stays (logged)."""
        if not self.crl_url:
            return
        import aiohttp

        try:
            timeout = aiohttp.ClientTimeout(total=CRL_TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(self.crl_url) as response:
                response.raise_for_status()
                self.revoked = serials_of_crl(await response.read())
            self.crl_fetched_at = time.time()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            log.warning("revoked certificates not refreshed from %s: %s", self.crl_url, exc)

    async def run(self) -> None:
        """Forever: look for renewed files every second, fetch the CRL every ``crl_refresh_s``."""
        next_crl = 0.0
        while True:
            self.reload_if_changed()
            if time.monotonic() >= next_crl:
                await self.refresh_crl()
                next_crl = time.monotonic() + self.crl_refresh_s
            await asyncio.sleep(RELOAD_CHECK_S)


TLS = web.AppKey("heater-tls", ServiceTLS)


def install(app: web.Application, tls: ServiceTLS | None) -> None:
    """Make ``app``'s middleware demand client certificates (before it starts), and keep ``tls`` fresh."""
    if tls is None:
        return
    app[TLS] = tls

    async def keep_fresh(app: web.Application) -> Any:
        if app.get(TLS) is not tls:  # served again without it
            yield
            return
        await tls.refresh_crl()
        task = asyncio.ensure_future(tls.run())
        yield
        task.cancel()

    app.cleanup_ctx.append(keep_fresh)


def refusal_for(request: web.BaseRequest, browser: bool) -> tuple[int, str] | None:
    """Why ``request`` is refused for what it came through (None: let the role check decide).

    ``browser``: a cookie or ticket request a browser makes, which needs no certificate.
    """
    tls: ServiceTLS | None = request.app.get(TLS)
    if tls is None:
        return None
    if not request.secure:
        if request.path in PROBE_PATHS:
            return None
        return 403, "this port serves only /healthz, /readyz and /metrics: the API is on HTTPS, with a client certificate"
    peer = request.transport.get_extra_info("peercert") if request.transport is not None else None
    if not peer:
        return None if browser else (401, "a client certificate from the platform CA is required")
    if tls.is_revoked(int(peer["serialNumber"], 16)):
        return 403, "the client certificate is revoked"
    return None


def peer_subject(request: web.BaseRequest) -> str:
    """The caller's client certificate as ``CN=name`` (``none`` without one), for a log line."""
    peer = request.transport.get_extra_info("peercert") if request.transport is not None else None
    if not peer:
        return "none"
    names = [value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"]
    return f"CN={names[0]}" if names else "CN=?"


def sites(runner: web.BaseRunner, settings: Any, tls: ServiceTLS | None) -> list[web.TCPSite]:
    """The API site (HTTPS when ``tls``) and, when a probe port is set, the plain probe site."""
    out = [web.TCPSite(runner, settings.web_host, settings.web_port, ssl_context=tls.server if tls else None)]
    if settings.probe_port:
        out.append(web.TCPSite(runner, settings.web_host, settings.probe_port))
    return out


async def start_sites(runner: web.BaseRunner, settings: Any, tls: ServiceTLS | None) -> None:
    for site in sites(runner, settings, tls):
        await site.start()


async def serve(app: web.Application, settings: Any, service: str) -> web.AppRunner:
    """Serve ``app`` on the service's API port (mTLS unless off) and its probe port; the runner to clean up."""
    tls = ServiceTLS.from_settings(settings, service)
    install(app, tls)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await start_sites(runner, settings, tls)
    return runner


# -- callers ---------------------------------------------------------------------------

#: Port → the client identity (a TLS directory) a caller in this process uses there.
_IDENTITY_FOR_PORT: dict[int, Path] = {}
_CONTEXTS: dict[Path, tuple[tuple[float, ...] | None, ssl.SSLContext]] = {}
#: The client identity for every other HTTPS port (the operator's CLI: ``RUN_DIR/secrets/tls/cli``).
CLIENT_DIR_ENV = "HEATER_CLIENT_TLS_DIR"


def use_identity(ports: Iterable[int], directory: Path) -> None:
    """Call these local ports with the certificate in ``directory`` (each platform has its own CA)."""
    for port in ports:
        _IDENTITY_FOR_PORT[port] = directory


def client_context_for(url: str) -> ssl.SSLContext | None:
    """The client context for an ``https``/``wss`` URL (None for plain ones): kept until its files change."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "wss"):
        return None
    directory = _IDENTITY_FOR_PORT.get(parts.port or 443) or (Path(os.environ[CLIENT_DIR_ENV])
                                                              if os.environ.get(CLIENT_DIR_ENV) else None)
    if directory is None:
        raise TLSMaterialError(f"no client certificate to call {parts.scheme}://{parts.netloc}: "
                               f"set {CLIENT_DIR_ENV} or run `heater login`")
    files = TLSFiles(directory)
    stamp = files.stamp()
    kept = _CONTEXTS.get(directory)
    if kept is None or kept[0] != stamp:
        try:
            kept = (stamp, files.client_context())
        except TLSMaterialError:
            if kept is None:
                raise
            return kept[1]  # caught between a renewed key and its certificate: the last pair still works
        _CONTEXTS[directory] = kept
    return kept[1]
