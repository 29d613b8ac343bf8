"""The bridge's end of the feed: a WebSocket to AlarmsServer, reconnected with backoff.

Every message is the platform's whole state, so reconnecting needs no history. While
the connection is down the bridge is told at once (``on_down``), so every accessory shows
a fault instead of a stale value; the aiohttp heartbeat notices a feed that stopped
answering without closing. Each connection presents a bearer token (the viewer role) from
``token``; the feed closes a connection when its token expires, and the next one takes a
fresh token.
"""

from __future__ import annotations

import asyncio
import json
import logging
from ssl import SSLContext
from typing import Awaitable, Callable, Iterator

import aiohttp

from homekit.snapshot import Snapshot

log = logging.getLogger(__name__)

#: Pauses between connection attempts (the last repeats).
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
HEARTBEAT_S = 2.0


def backoff() -> Iterator[float]:
    yield from BACKOFF_S
    while True:
        yield BACKOFF_S[-1]


class FeedClient:
    """Follows the feed forever: ``on_state`` for every snapshot, ``on_down`` once per lost connection."""

    def __init__(self, url: str, on_state: Callable[[Snapshot], None], on_down: Callable[[str], None],
                 token: Callable[[], Awaitable[str]] | None = None, ssl: SSLContext | None = None) -> None:
        """``ssl``: the bridge's client context for a ``wss`` feed (its own certificate, the platform CA)."""
        self.url = url
        self.ssl = ssl
        self.token = token
        self.on_state = on_state
        self.on_down = on_down
        self.connected = False
        self.connects = 0

    async def run(self) -> None:
        delays = backoff()
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    headers = {"Authorization": f"Bearer {await self.token()}"} if self.token else None
                    async with session.ws_connect(self.url, heartbeat=HEARTBEAT_S, headers=headers, ssl=self.ssl or True,
                                                  timeout=aiohttp.ClientWSTimeout(ws_close=2.0)) as ws:
                        self.connected, self.connects = True, self.connects + 1
                        log.info("feed %s connected", self.url)
                        delays = backoff()
                        async for message in ws:
                            if message.type == aiohttp.WSMsgType.TEXT:
                                self._take(message.data)
                            elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                                break
                    reason = "the feed closed the connection"
                except asyncio.CancelledError:
                    raise
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError, RuntimeError) as exc:
                    # str(), not repr(): a handshake error's repr carries the request headers (the token)
                    reason = f"cannot reach the feed: {type(exc).__name__}: {exc}"
                self._lost(reason)
                await asyncio.sleep(next(delays))

    def _take(self, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            log.warning("feed sent a message that is not JSON; skipped")
            return
        if isinstance(data, dict) and data.get("type") == "state":
            self.on_state(Snapshot(data))

    def _lost(self, reason: str) -> None:
        if self.connected:
            log.warning("feed %s lost: %s", self.url, reason)
        self.connected = False
        self.on_down(reason)
