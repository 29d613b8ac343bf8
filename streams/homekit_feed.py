"""The HomeKit bridge's backend: one WebSocket on AlarmsServer with the state the Home app shows.

AlarmsServer is the seeds' HAP backend: it already holds the active alarms and the FATAL
latch in its tables. This view adds what the bridge needs beside them — the latest reading
of every sensor (``sensorData``), the relay readback (``relayState``) and the heating job's
state (``heatingJobState``) — read by a group-less reader, so the feed never takes input
from AlarmsServer's own agents. ``GET /homekit/feed`` upgrades to a WebSocket; every
message is the whole state (small: a few sensors and the active alarms), so a client that
connects or reconnects needs no history and a lost message is repaired by the next one.
Two parts of the state are other services' decisions, shown as they made them rather
than judged again here: every service as StateRegistry last recorded it (running, halted,
missing, watched) and ExceptionsServer's counts. Both come from those services' own table
changelogs (:mod:`streams.table_mirror`): one source of truth each, pushed as it changes,
still shown while the owner restarts; ``null`` until the changelog is read to its end.
A state is pushed when something changed, at most every :data:`MIN_PUSH_GAP_S`.
The feed only shows: it accepts nothing from its clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable, Iterable, Sequence

from aiohttp import WSCloseCode, WSMsgType, web
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from streams import topics, topology
from streams.auth import Role, principal, requires
from streams.codec import DecodeError, decode
from streams.readers import follower, open_reader, poll
from streams.records import HeatingJobState, PlatformLatch, RelayState, SensorReading
from streams.settings import DISPLAY_INPUT, QUIET_INPUT, InputFetch, Settings
from streams.table_mirror import TableMirror, follow
from streams.tables.exceptions import SenderStats, totals

log = logging.getLogger(__name__)

FEED_PATH = "/homekit/feed"
FEED_VERSION = 1
#: Shortest gap between two pushes: one state covers all that changed meanwhile. Readings
#: arrive 30 times a second on an idle platform; a phone's Home app gains nothing from more
#: than a few states a second, and each push is the whole state, encoded, sent and applied.
MIN_PUSH_GAP_S = 0.25
#: How often the alarm and latch tables are compared with what was last pushed.
TABLE_POLL_S = 0.25
#: A client that does not answer the WebSocket ping within this is dropped.
HEARTBEAT_S = 5.0
#: Heating jobs remembered (to tell the newest from a late word about an older one).
JOBS_KEPT = 16

ActiveAlarms = Callable[[], Iterable[Any]]
LatchRow = Callable[[], "PlatformLatch | None"]
#: Another view of AlarmsServer that follows the live topics through this reader (the status page).
Observer = Callable[[str, "bytes | None"], None]


class FeedState:
    """What the feed knows from the topics it reads; the tables are read when a state is built."""

    def __init__(self) -> None:
        self.sensors: dict[str, dict[str, Any]] = {}
        self.relays: dict[str, Any] | None = None
        self.jobs: dict[str, dict[str, Any]] = {}  # job id → its latest state, in the order the jobs appeared

    @property
    def heating(self) -> dict[str, Any] | None:
        """The newest job's latest state: a late word about an older job (its end announced twice) never hides it."""
        return next(reversed(self.jobs.values()), None)

    def apply(self, topic: str, payload: bytes | None) -> bool:
        """Take one message; True when it changed the state (a malformed one is skipped: AlarmsServer does not own these topics)."""
        try:
            if topic == topics.SENSOR_DATA.name:
                reading = decode(payload, SensorReading)
                self.sensors[reading.sensor] = {
                    "value": reading.value, "kind": reading.kind, "unit": reading.unit,
                    "received_at": reading.received_at, "status": reading.status,
                }
            elif topic == topics.RELAY_STATE.name:
                state = decode(payload, RelayState)
                self.relays = {"power_on": state.power_on, "valve_open": state.valve_open, "spark_on": state.spark_on,
                               "trip_latched": state.trip_latched, "read_at": state.read_at}
            elif topic == topics.HEATING_STATE.name:
                job = decode(payload, HeatingJobState)
                self.jobs[job.job_id] = {"job_id": job.job_id, "state": job.state, "target_c": job.target_c,
                                         "at": job.at, "reason": job.reason}
                while len(self.jobs) > JOBS_KEPT:
                    del self.jobs[next(iter(self.jobs))]
            else:
                return False
        except DecodeError as exc:
            log.debug("homekit feed skips a message on %s: %s", topic, exc)
            return False
        return True


def newest_per_key(messages: Sequence[ConsumerRecord]) -> Iterable[ConsumerRecord]:
    """Each key's newest message of one partition's batch (a message without a key is kept)."""
    newest: dict[object, ConsumerRecord] = {}
    for index, message in enumerate(messages):
        newest[message.key if message.key is not None else index] = message
    return newest.values()


def alarm_rows(entries: Iterable[Any]) -> list[dict[str, Any]]:
    """Active alarms as the bridge shows them, most severe and newest first."""
    rows = [
        {"alarm_id": e.alarm.alarm_id, "severity": e.alarm.severity.value, "source": e.alarm.source,
         "code": e.alarm.code, "message": e.alarm.message, "raised_at": e.alarm.raised_at}
        for e in entries
    ]
    order = {"FATAL": 0, "CRITICAL": 1, "WARNING": 2}
    return sorted(rows, key=lambda r: (order.get(r["severity"], 3), -r["raised_at"]))


def latch_row(record: PlatformLatch | None) -> dict[str, Any]:
    if record is None:
        return {"latched": False, "reason": "", "occurrences": [], "trip_count": None, "changed_at": None}
    return {"latched": record.latched, "reason": record.reason, "occurrences": sorted(record.occurrences or {}),
            "trip_count": record.trip_count, "changed_at": record.changed_at}


def exception_counts(rows: dict[str, Any] | None) -> dict[str, Any] | None:
    """ExceptionsServer's totals from its ``exceptions-senders`` rows (None while unknown)."""
    if rows is None:
        return None
    return totals(SenderStats.from_row(row) for row in rows.values())


class HomeKitFeed:
    """Follows the topics, watches the tables, and pushes the whole state to every connected client."""

    def __init__(self, active_alarms: ActiveAlarms, latch: LatchRow) -> None:
        self.state = FeedState()
        self._active_alarms = active_alarms
        self._latch = latch
        self._clients: set[web.WebSocketResponse] = set()
        self._changed = asyncio.Event()
        self._seq = 0
        self._tables_seen = ""
        self._tasks: list[asyncio.Task[None]] = []
        self.registry = TableMirror(topology.REGISTRY_SERVICES)
        self.exceptions = TableMirror(topology.EXCEPTION_COUNTS)
        #: Told every live message (topic, value); they may follow :attr:`extra_topics` too.
        self.observers: list[Observer] = []
        self.extra_topics: list[str] = []

    async def start(self) -> None:
        """Open the reader (live data from the end; the last heating state from the compacted log) and push on change."""
        bootstrap = Settings.from_env().broker_bootstrap
        live = await open_reader(bootstrap, [topics.SENSOR_DATA.name, topics.RELAY_STATE.name, *self.extra_topics],
                                 from_end=True, fetch_wait_ms=DISPLAY_INPUT.wait_ms,
                                 fetch_min_bytes=DISPLAY_INPUT.min_bytes)
        jobs = await open_reader(bootstrap, [topics.HEATING_STATE.name], from_end=False,
                                 fetch_wait_ms=QUIET_INPUT.wait_ms, fetch_min_bytes=QUIET_INPUT.min_bytes)
        self._tasks = [asyncio.ensure_future(self._follow(live, DISPLAY_INPUT, newest_only=True)),
                       asyncio.ensure_future(self._follow(jobs, QUIET_INPUT)),
                       asyncio.ensure_future(self._watch_tables()), asyncio.ensure_future(self._push()),
                       follow(self.registry, bootstrap, self._changed.set),
                       follow(self.exceptions, bootstrap, self._changed.set)]

    async def _follow(self, reader: AIOKafkaConsumer, fetch: InputFetch, newest_only: bool = False) -> None:
        """Apply what each fetch brings; with ``newest_only`` only each key's newest message of it.

        The live topics are keyed by what they describe (a sensor, the relay board, a service),
        and the state and the status page keep only each one's latest: on a flooded bus the
        readings of one fetch were decoded one by one, twice, to be overwritten (a fifth of
        a core at 9,000 readings a second, which the sensor bank and DisasterDetector lacked).
        Not the heating jobs' reader: a late word about an older job shares the key of the
        newest job's state and must not replace it (:attr:`FeedState.heating`).
        """
        broker = follower("homekit feed")
        try:
            while True:
                batches = await poll(reader, fetch.wait_ms * 2, broker)
                for tp, messages in batches.items():
                    for message in newest_per_key(messages) if newest_only else messages:
                        for observe in self.observers:
                            observe(tp.topic, message.value)
                        if self.state.apply(tp.topic, message.value):
                            self._changed.set()
        finally:
            await reader.stop()

    async def _watch_tables(self) -> None:
        while True:
            seen = json.dumps([alarm_rows(self._active_alarms()), latch_row(self._latch())], sort_keys=True)
            if seen != self._tables_seen:
                self._tables_seen = seen
                self._changed.set()
            await asyncio.sleep(TABLE_POLL_S)

    def snapshot(self) -> dict[str, Any]:
        """The whole state as one feed message."""
        return {
            "type": "state", "version": FEED_VERSION, "seq": self._seq, "at": time.time(),
            "sensors": self.state.sensors, "relays": self.state.relays, "heating": self.state.heating,
            "alarms": alarm_rows(self._active_alarms()), "latch": latch_row(self._latch()),
            "services": self.registry.rows, "exceptions": exception_counts(self.exceptions.rows),
        }

    async def _push(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            self._seq += 1
            if self._clients:
                text = json.dumps(self.snapshot())
                await asyncio.gather(*(self._send(ws, text) for ws in list(self._clients)))
            await asyncio.sleep(MIN_PUSH_GAP_S)

    async def _send(self, ws: web.WebSocketResponse, text: str) -> None:
        try:
            await ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:
            log.info("homekit feed: client gone (%s)", exc)
            self._clients.discard(ws)

    async def handle(self, request: web.Request, until: float | None = None) -> web.WebSocketResponse:
        """One client: the current state at once, then every change, until it goes.

        ``until``: when the client's token expires (epoch seconds); the feed closes then (1008,
        policy violation), so the client connects again with a fresh token.
        """
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S)
        await ws.prepare(request)
        expiry = None
        if until is not None:
            expiry = asyncio.get_running_loop().call_later(
                max(0.0, until - time.time()),
                lambda: asyncio.ensure_future(ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"token expired")))
        await ws.send_str(json.dumps(self.snapshot()))
        self._clients.add(ws)
        log.info("homekit feed: client %s connected (%d)", request.remote, len(self._clients))
        try:
            async for message in ws:  # the feed reads nothing; this loop notices the client closing
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            if expiry is not None:
                expiry.cancel()
            self._clients.discard(ws)
            log.info("homekit feed: client %s gone (%d left)", request.remote, len(self._clients))
        return ws

    async def close(self) -> None:
        for ws in list(self._clients):
            await ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def register(service: Any, active_alarms: ActiveAlarms, latch: LatchRow) -> HomeKitFeed:
    """Serve the feed on a :class:`~streams.app.HeaterService`'s web server, started with its self-check."""
    feed = HomeKitFeed(active_alarms, latch)

    @requires(Role.VIEWER)
    async def view(web_: Any, request: web.Request) -> web.WebSocketResponse:
        return await feed.handle(request, principal(request).expires_at)

    service.app.page(FEED_PATH)(view)
    service.add_startup_check(feed.start)

    async def close_clients(app: Any, **kwargs: Any) -> None:
        await feed.close()  # an open WebSocket would hold the web server's shutdown

    service.app.on_before_shutdown.connect(close_clients)
    return feed
