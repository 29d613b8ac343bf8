"""Who may call which HTTP route: JWT bearer tokens with a role, checked by one aiohttp middleware.

Every route declares its access next to where it is defined, with :func:`requires`
(``@requires(Role.VIEWER)``, ``@requires(get=Role.VIEWER, post=Role.ADMIN)``) or
:func:`open_route` for the few callers that cannot present a token (liveness, readiness
and metrics: Kubernetes probes and Prometheus). The middleware refuses a route that
declares nothing (default deny), so a new route cannot slip through unprotected.

Tokens are signed JWTs from a standard issuer — locally OpenBao's identity provider
(``identity/oidc/token/heater-ROLE``) — verified against the keys it publishes (JWKS),
which are cached and fetched again only for a key id not seen yet. Only asymmetric
algorithms are accepted (never ``none`` or HS*), and the token's ``iss``, ``aud`` and
``exp`` must match. Roles are ordered: admin ⊇ operator ⊇ viewer.

Answers: no or unusable token → 401 (with ``WWW-Authenticate: Bearer``); a valid token
whose role is too low, or a route without a declared role → 403; keys unreachable → 503.
Neither the token nor any secret appears in an answer or a log line.

**Browsers** send no bearer token by themselves. A holder of a token asks for a one-time
*ticket* (``POST``, bearer only; :class:`Sessions`), valid for :data:`TICKET_TTL_S` seconds, and
opens a link carrying it. The route that takes it (declared :data:`TICKET`) exchanges it once
for a session cookie — ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's
page sends it), on the page's path only — lasting no longer than the token that asked for it.
The middleware accepts that cookie for viewer ``GET`` routes only, as a viewer whatever the
token's role: never for a ``POST`` or anything that changes state (no CSRF), never for a route
that needs more than viewer. Tickets and sessions live in the server's memory, kept only as
hashes; a restart ends them (open a new link).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Final, Iterator, Mapping, TypeVar

import aiohttp
import jwt
from aiohttp import web

from streams.tls import refusal_for

log = logging.getLogger(__name__)

#: The claim carrying the caller's role (set by the issuer's role template).
ROLE_CLAIM = "heater_role"
#: The claim naming the caller (the Vault entity's name); ``sub`` when absent.
NAME_CLAIM = "name"
#: Signature algorithms a token may use: asymmetric only, so a published key can never sign.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: Tolerated clock difference with the issuer when checking ``exp``/``iat``/``nbf``.
LEEWAY_S = 5.0
#: An unknown key id makes the verifier fetch the JWKS again, at most this often.
MIN_REFRESH_S = 10.0
JWKS_TIMEOUT_S = 3.0
ACCESS_ATTR = "__heater_access__"


class Role(enum.IntEnum):
    """What a caller may do; a higher role may do everything a lower one may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> "Role":
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}: expected one of {', '.join(r.name.lower() for r in cls)}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class _Open(enum.Enum):
    OPEN = "open"
    TICKET = "ticket"


#: Access for a route every caller may use without a token (liveness, readiness, metrics).
OPEN: Final = _Open.OPEN
#: Access for the route that exchanges a one-time browser ticket (``?ticket=``) for a session
#: cookie: the middleware redeems the ticket and lets the request through as a viewer, or refuses 401.
TICKET: Final = _Open.TICKET
Need = Role | _Open
Access = Mapping[str, Need]
F = TypeVar("F")


def requires(role: Need | None = None, **per_method: Need) -> Callable[[F], F]:
    """Declare the role a route needs: one for every method, or one per method (``get=``, ``post=``)."""
    if (role is None) == (not per_method):
        raise TypeError("requires(ROLE) or requires(get=ROLE, post=ROLE, ...), not both or neither")
    access: dict[str, Need] = {"*": role} if role is not None else {m.upper(): r for m, r in per_method.items()}

    def declare(handler: F) -> F:
        if hasattr(handler, "__func__"):
            raise TypeError("declare the role on the method's definition, not on a bound method")
        setattr(handler, ACCESS_ATTR, access)
        return handler

    return declare


def open_route(handler: F) -> F:
    """Declare a route open to callers without a token."""
    return requires(OPEN)(handler)


def access_of(handler: Any) -> Access | None:
    """The access a handler declared (also through a Faust view built from a function), or None."""
    access = getattr(handler, ACCESS_ATTR, None)
    if access is None and hasattr(handler, "get"):  # faust.web.View.from_handler keeps the function as ``get``
        access = getattr(getattr(handler, "get"), ACCESS_ATTR, None)
    return access


def need_for(access: Access | None, method: str) -> Need | None:
    """The role ``method`` needs under ``access``; None when nothing is declared for it."""
    if access is None:
        return None
    method = method.upper()
    if method == "HEAD":
        method = "GET"
    return access.get(method, access.get("*"))


# -- tokens --------------------------------------------------------------------------


class TokenRefused(Exception):
    """A token that does not authenticate its bearer; the message says why (never the token)."""


class KeysUnavailable(Exception):
    """The issuer's published keys cannot be read now."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    name: str
    subject: str
    role: Role
    expires_at: float

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> "Principal":
        raw = claims.get(ROLE_CLAIM)
        if not isinstance(raw, str):
            raise PermissionError("the token grants no heater role")
        try:
            role = Role.parse(raw)
        except ValueError:
            raise PermissionError("the token grants no heater role") from None
        subject = str(claims["sub"])
        name = claims.get(NAME_CLAIM)
        return cls(name=str(name) if name else subject, subject=subject, role=role, expires_at=float(claims["exp"]))


Fetch = Callable[[str], Awaitable[Mapping[str, Any]]]


async def fetch_json(url: str) -> Mapping[str, Any]:
    """GET a JSON document (the JWKS) with a timeout."""
    timeout = aiohttp.ClientTimeout(total=JWKS_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(url) as response:
            response.raise_for_status()
            return json.loads(await response.read())


class TokenVerifier:
    """Verifies tokens against an issuer's JWKS: signature, algorithm, issuer, audience, expiry."""

    def __init__(self, jwks_url: str, issuer: str, audience: str, fetch: Fetch = fetch_json,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> Principal:
        """The caller a token authenticates; TokenRefused, PermissionError (no role) or KeysUnavailable otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenRefused("malformed token") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise TokenRefused("token algorithm not accepted (asymmetric signatures only)")
        if not isinstance(kid, str):
            raise TokenRefused("token names no signing key (kid)")
        key = await self._key(kid)
        if key.algorithm_name != algorithm:
            raise TokenRefused("token algorithm does not match its signing key")
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[algorithm], audience=self.audience, issuer=self.issuer,
                leeway=LEEWAY_S, options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("token expired") from None
        except jwt.InvalidTokenError as exc:  # PyJWT's messages name the failed check, never the token
            raise TokenRefused(f"invalid token: {exc}") from None
        return Principal.from_claims(claims)

    async def _key(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            if kid not in self._keys and self._may_refresh():
                await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            raise TokenRefused("token signed by an unknown key")
        return key

    async def preload(self) -> None:
        """Read the keys now, so that tokens verify while the issuer is away later.

        Without this a service whose first authenticated call came during a Vault outage
        could verify nothing; a failure here is only logged (the first call tries again).
        """
        async with self._lock:
            if self._keys:
                return
            try:
                await self._refresh()
            except KeysUnavailable as exc:
                log.warning("token keys not read at start: %s", exc)

    def _may_refresh(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= MIN_REFRESH_S

    async def _refresh(self) -> None:
        try:
            document = await self._fetch(self.jwks_url)
            keys = {}
            for entry in document.get("keys", []):
                try:
                    candidate = jwt.PyJWK(entry)
                except jwt.PyJWTError:
                    continue  # a key of a kind we cannot use (or an unsupported algorithm): skip it
                if entry.get("kid") and candidate.algorithm_name in ASYMMETRIC_ALGORITHMS:
                    keys[entry["kid"]] = candidate
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, AttributeError) as exc:
            raise KeysUnavailable(f"cannot read the token keys at {self.jwks_url}: {type(exc).__name__}") from None
        self._keys = keys
        self._fetched_at = self._clock()

    @classmethod
    def from_settings(cls, settings: Any) -> "TokenVerifier":
        return cls(settings.token_keys_url, settings.token_issuer, settings.auth_audience)


# -- the middleware ---------------------------------------------------------------------


#: The browser session cookie (see :class:`Sessions`).
SESSION_COOKIE = "heater_session"
#: How long a ticket may wait to be exchanged, and the most a browser session lasts.
TICKET_TTL_S = 60.0
MAX_SESSION_S = 8 * 3600.0
#: Tickets waiting at most (the oldest goes first beyond it): asking for many cannot fill memory.
MAX_TICKETS = 256
MAX_SESSIONS = 1024


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


class Sessions:
    """One server's browser sessions: one-time tickets, exchanged for a viewer session cookie.

    Only hashes of tickets and session ids are kept, so neither can be read back from here.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tickets: dict[str, tuple[Principal, float]] = {}  # hash → (who asked, until)
        self._sessions: dict[str, Principal] = {}  # hash → the viewer the cookie stands for

    def ticket(self, holder: Principal) -> str:
        """A one-time ticket for ``holder``, valid :data:`TICKET_TTL_S` seconds (and no longer than its token)."""
        self._prune()
        while len(self._tickets) >= MAX_TICKETS:
            self._tickets.pop(next(iter(self._tickets)))
        ticket = secrets.token_urlsafe(32)
        self._tickets[_digest(ticket)] = (holder, min(self._clock() + TICKET_TTL_S, holder.expires_at))
        return ticket

    def redeem(self, ticket: str) -> tuple[Principal, str] | None:
        """Exchange a ticket, once: the session's viewer and its id; None for a used, expired or unknown ticket."""
        self._prune()
        found = self._tickets.pop(_digest(ticket), None) if ticket else None
        if found is None:
            return None
        holder, until = found
        now = self._clock()
        if until <= now:
            return None
        viewer = Principal(holder.name, holder.subject, Role.VIEWER, min(holder.expires_at, now + MAX_SESSION_S))
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        session = secrets.token_urlsafe(32)
        self._sessions[_digest(session)] = viewer
        return viewer, session

    def principal(self, session: str) -> Principal | None:
        """The viewer a session cookie stands for, while it lasts."""
        found = self._sessions.get(_digest(session))
        if found is None or found.expires_at <= self._clock():
            return None
        return found

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, (_, until) in self._tickets.items() if until <= now]:
            del self._tickets[key]
        for key in [k for k, p in self._sessions.items() if p.expires_at <= now]:
            del self._sessions[key]


def set_session_cookie(request: web.BaseRequest, response: web.StreamResponse, session: str, viewer: Principal,
                       path: str) -> None:
    """Give the browser its session: HttpOnly, SameSite=Strict, on ``path`` only, until the session ends."""
    max_age = max(1, int(viewer.expires_at - time.time()))
    response.set_cookie(SESSION_COOKIE, session, max_age=max_age, path=path, httponly=True, samesite="Strict",
                        secure=request.secure or None)


class Gate:
    """An application's verifier (built from the settings at the first request that needs it) and browser sessions."""

    def __init__(self, verifier: TokenVerifier | None = None) -> None:
        self._verifier = verifier
        self.sessions = Sessions()

    @property
    def verifier(self) -> TokenVerifier:
        if self._verifier is None:
            from streams.settings import Settings

            self._verifier = TokenVerifier.from_settings(Settings.from_env())
        return self._verifier

    @verifier.setter
    def verifier(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier


GATE = web.AppKey("heater-auth-gate", Gate)


PRINCIPAL = web.RequestKey("heater-principal", Principal)
#: The session id a ticket was exchanged for (set by the middleware on a :data:`TICKET` route).
SESSION = web.RequestKey("heater-session", str)


def refusal(status: int, reason: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="heater"'} if status == 401 else None
    return web.json_response({"error": reason}, status=status, headers=headers)


def bearer_token(request: web.BaseRequest) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


@web.middleware
async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Let a request through only with what its route declares; refuse it otherwise."""
    match = request.match_info
    browser = request.method in ("GET", "HEAD") and bearer_token(request) is None and (
        SESSION_COOKIE in request.cookies or "ticket" in request.query)
    refused = refusal_for(request, browser)
    if refused is not None:
        log.info("refused %s %s: %s", request.method, request.path, refused[1])
        return refusal(*refused)
    if match.http_exception is not None:  # no such route, or method: aiohttp's own 404/405
        return await handler(request)
    need = need_for(access_of(match.handler), request.method)
    if need is OPEN:
        return await handler(request)
    if need is None:
        log.warning("refused %s %s: the route declares no role", request.method, request.path)
        return refusal(403, "this route declares no role: refused for everyone")
    sessions = request.app[GATE].sessions
    if need is TICKET:
        opened = sessions.redeem(request.query.get("ticket", "")) if request.method in ("GET", "HEAD") else None
        if opened is None:
            log.info("refused %s %s: no valid ticket", request.method, request.path)
            return refusal(401, "this link was used already or has expired: ask for a new one (`heater dashboard`)")
        request[PRINCIPAL], request[SESSION] = opened
        log.info("browser session opened for %s (viewer)", opened[0].name)
        return await handler(request)
    token = bearer_token(request)
    if token is None and need is Role.VIEWER and request.method in ("GET", "HEAD") and SESSION_COOKIE in request.cookies:
        viewer = sessions.principal(request.cookies[SESSION_COOKIE])
        if viewer is None:
            return refusal(401, "the browser session has ended: open a new link (`heater dashboard`)")
        request[PRINCIPAL] = viewer
        return await handler(request)
    if token is None:
        return refusal(401, f"a bearer token with role {need.label} or higher is required")
    try:
        principal = await request.app[GATE].verifier.verify(token)
    except TokenRefused as exc:
        log.info("refused %s %s: %s", request.method, request.path, exc)
        return refusal(401, str(exc))
    except PermissionError as exc:
        return refusal(403, str(exc))
    except KeysUnavailable as exc:
        log.warning("refused %s %s: %s", request.method, request.path, exc)
        return refusal(503, "cannot verify tokens now: the issuer's keys are unreachable")
    if principal.role < need:
        log.info("refused %s %s to %s: role %s, needs %s", request.method, request.path, principal.name,
                 principal.role.label, need.label)
        return refusal(403, f"role {need.label} or higher is required (the token grants {principal.role.label})")
    request[PRINCIPAL] = principal
    return await handler(request)


def install(app: web.Application, verifier: TokenVerifier | None = None) -> Gate:
    """Put the middleware in front of every route of ``app`` (before it starts)."""
    gate = Gate(verifier)
    app[GATE] = gate
    app.middlewares.append(middleware)
    app.on_startup.append(_preload_keys)
    return gate


async def _preload_keys(app: web.Application) -> None:
    """At start, in the background: the keys are read before any caller needs them."""
    app[_PRELOAD] = asyncio.ensure_future(app[GATE].verifier.preload())


_PRELOAD = web.AppKey("heater-auth-preload", asyncio.Task)


def principal(request: Any) -> Principal:
    """The authenticated caller of a request the middleware let through."""
    return request[PRINCIPAL]


@dataclass(frozen=True)
class Route:
    """One route as served: method, path pattern and what it declares."""

    method: str
    path: str
    access: Access | None

    @property
    def need(self) -> Need | None:
        return need_for(self.access, self.method)


def routes(app: web.Application) -> Iterator[Route]:
    """Every route ``app`` serves (HEAD, served with GET, left out), for the auth matrix."""
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        yield Route(route.method, route.resource.canonical if route.resource else "", access_of(route.handler))
