"""Vault (OpenBao locally) for services: the client, and transit signatures.

Secrets come only from Vault; the token comes from a file whose path is in the
settings, never from the repo, a log or a topic. hvac is blocking, so calls run in a
thread with a timeout; a Vault that does not answer is a clear ``VaultUnavailable``.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import hvac
import requests

from streams.settings import Settings

RESET_SIGNING_KEY = "operator-reset"
TIMEOUT_S = 3.0


class VaultUnavailable(RuntimeError):
    """Vault is missing, unreachable or refuses us; the message says which and where."""


def vault_client(settings: Settings) -> hvac.Client:
    if settings.vault_token_file is None:
        raise VaultUnavailable("HEATER_VAULT_TOKEN_FILE is not set: no Vault credentials")
    try:
        token = settings.vault_token_file.read_text().strip()
    except OSError as exc:
        raise VaultUnavailable(f"cannot read the Vault token file {settings.vault_token_file}: {exc}") from None
    return hvac.Client(url=settings.vault_addr, token=token, timeout=TIMEOUT_S)


class TransitSigner:
    """Sign and verify with a Vault transit key (the private key never leaves Vault)."""

    def __init__(self, client: hvac.Client, key: str = RESET_SIGNING_KEY) -> None:
        self.client = client
        self.key = key

    async def sign(self, payload: bytes) -> str:
        answer = await self._call(
            self.client.secrets.transit.sign_data, name=self.key, hash_input=_b64(payload)
        )
        return answer["data"]["signature"]

    async def verify(self, payload: bytes, signature: str) -> bool:
        try:
            answer = await self._call(
                self.client.secrets.transit.verify_signed_data,
                name=self.key,
                hash_input=_b64(payload),
                signature=signature,
            )
        except hvac.exceptions.InvalidRequest:
            return False  # a malformed signature is simply not valid
        return bool(answer["data"]["valid"])

    async def _call(self, fn: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, **kwargs), TIMEOUT_S + 1)
        except (requests.RequestException, asyncio.TimeoutError, hvac.exceptions.VaultDown) as exc:
            raise VaultUnavailable(f"Vault at {self.client.url} did not answer: {exc}") from None
        except hvac.exceptions.Forbidden as exc:
            raise VaultUnavailable(f"Vault refused transit/{self.key}: {exc}") from None


def _b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode()
