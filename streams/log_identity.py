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

#: How often the broker is asked. Short: an input read at an old position between the
#: broker's return and the next answer would be misjudged, so the ledger also waits for an
#: answer after any failed one (see :meth:`LogIdentity.verified`).
POLL_S = 0.2
REQUEST_TIMEOUT_S = 2.0


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
        from aiokafka.conn import create_conn

        conn: Any = None
        while True:
            try:
                if conn is None:
                    conn = await create_conn(self._host, self._port, request_timeout_ms=int(REQUEST_TIMEOUT_S * 1000))
                self._set(await cluster_id(conn))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away: unknown until it answers again
                if self.current is not None:
                    log.warning("broker at %s:%d not answering (%r): input waits for its log identity",
                                self._host, self._port, exc)
                self._set(None)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
            await asyncio.sleep(self._poll_s)

    def _set(self, identity: str | None) -> None:
        if identity != self.current and identity is not None:
            log.info("broker log identity: %s", identity)
        self.current = identity
        if identity is not None:
            self._known.set()
