"""Which log the broker is serving, so a stateful service knows when its input started over.

The local broker keeps its logs in memory: every start begins empty, at offset 0, while a
service's state still holds positions in the old logs. Comparing offsets cannot tell the
two apart (the new log may already be longer than the old position), so the broker says
it instead: the gate starts it with a new cluster id each time
(:func:`heater.runtime.broker.run_broker`), and a position is recorded together with the
id of the log it counts in. A real Kafka cluster never starts its logs over; there the
ledger has no identity to follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

#: How often the broker is asked while its connection holds. A broker that starts over
#: closes every connection first (its process, or the gate in front of it, is a new one),
#: and the identity is unknown from the moment this connection closes until a new answer
#: (see :meth:`LogIdentity.verified`): an input read at an old position in between is not
#: judged. The poll only backs that up; every poll wakes this service, the gate and the
#: broker (at 0.2 s, five services made a quarter of the idle platform's metadata traffic; at
#: 1 s, six made 6 of its 159 requests a second).
POLL_S = 5.0
REQUEST_TIMEOUT_S = 2.0
#: How soon a broker that is away is asked again.
RETRY_S = 0.2


async def cluster_id(conn: Any) -> str:
    """The broker's cluster id, from a metadata request naming no topic."""
    from aiokafka.protocol.metadata import MetadataRequest

    answer = await asyncio.wait_for(conn.send(MetadataRequest([], False)), REQUEST_TIMEOUT_S)
    return str(answer.cluster_id)


class LogIdentity:
    """The broker's current log identity, kept fresh by polling on one connection.

    ``current`` is ``None`` while the broker does not answer: whatever answers next may be
    a new log, so nothing is judged against an old position until it has answered.
    """

    def __init__(self, bootstrap: str, poll_s: float = POLL_S) -> None:
        host, _, port = bootstrap.rpartition(":")
        self._host, self._port = host, int(port)
        self._poll_s = poll_s
        self.current: str | None = None
        self._known = asyncio.Event()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin polling (idempotent; the first caller's loop runs it)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._poll())

    async def verified(self) -> str:
        """The identity, once the broker has answered since it last failed to."""
        self.start()
        while self.current is None:
            self._known.clear()
            await self._known.wait()
        return self.current

    async def _poll(self) -> None:
        conn: Any = None
        while True:
            if conn is None:
                conn = await self._connect()
                if conn is None:
                    await asyncio.sleep(RETRY_S)
                    continue
            try:
                self._set(await cluster_id(conn))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away: unknown until it answers again
                self._unknown(repr(exc))
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
                await asyncio.sleep(RETRY_S)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self._poll_s)
            if self._closed.is_set():
                conn = None  # closed under us: ask again, on a new connection, at once

    async def _connect(self) -> Any:
        """A new connection to the broker, or None (identity unknown) while it does not take one."""
        from aiokafka.conn import create_conn

        self._closed.clear()
        try:
            return await create_conn(self._host, self._port, request_timeout_ms=int(REQUEST_TIMEOUT_S * 1000),
                                     on_close=self._on_close)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._unknown(repr(exc))
            return None

    def _on_close(self, conn: Any, reason: Any) -> None:
        """The connection closed (the broker went, or is starting over): unknown from now."""
        self._unknown(f"connection closed ({reason})")
        self._closed.set()

    def _unknown(self, why: str) -> None:
        if self.current is not None:
            log.warning("broker at %s:%d not answering (%s): input waits for its log identity", self._host, self._port, why)
        self._set(None)

    def _set(self, identity: str | None) -> None:
        if identity != self.current and identity is not None:
            log.info("broker log identity: %s", identity)
        self.current = identity
        if identity is not None:
            self._known.set()
