"""A test issuer of API tokens: an RSA key, its JWKS, and tokens with any role, signed by it.

For in-process tests of the auth middleware (no Vault): :func:`authorize` points an
application's gate at a verifier that reads this issuer's JWKS from memory.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any, Mapping

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from streams import auth

ISSUER = "http://127.0.0.1:1/v1/identity/oidc"
AUDIENCE = "heater"
KID = "test-key-1"


@functools.lru_cache(maxsize=None)
def private_key(kid: str = KID) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(*kids: str) -> dict[str, Any]:
    """The issuer's published keys (``kids``: default the one test key)."""
    keys = []
    for kid in kids or (KID,):
        entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key(kid).public_key()))
        keys.append({**entry, "kid": kid, "alg": "RS256", "use": "sig"})
    return {"keys": keys}


def token(role: str | None = "viewer", name: str = "alice", ttl: float = 300.0, kid: str = KID,
          **overrides: Any) -> str:
    """A signed token; ``overrides`` replace claims (``None`` removes one)."""
    now = time.time()
    claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"entity-{name}", "name": name,
                              "iat": int(now), "exp": int(now + ttl), "heater_role": role}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, private_key(kid), algorithm="RS256", headers={"kid": kid})


def headers(role: str | None = "viewer", **kwargs: Any) -> Mapping[str, str]:
    return {"Authorization": f"Bearer {token(role, **kwargs)}"}


class Fetches:
    """An in-memory JWKS endpoint that counts its fetches."""

    def __init__(self, document: Mapping[str, Any] | None = None) -> None:
        self.document = document or jwks()
        self.count = 0

    async def __call__(self, url: str) -> Mapping[str, Any]:
        self.count += 1
        return self.document


def verifier(fetch: Fetches | None = None) -> auth.TokenVerifier:
    return auth.TokenVerifier("memory://jwks", ISSUER, AUDIENCE, fetch=fetch or Fetches())


def authorize(app: web.Application, fetch: Fetches | None = None) -> web.Application:
    """Make ``app`` verify tokens of this test issuer."""
    app[auth.GATE].verifier = verifier(fetch)
    return app
