"""The one consistency mechanism of every stateful service: state, input position and owed effects together.

A Faust service changes several table keys per input and sends effects (alarms, commands);
Faust writes each key to RocksDB at once and to its changelog later, commits input offsets
on its own schedule, and nothing ties these together. After kill -9 a worker could come
back with half a step applied, its consumer past or before its state, and effects sent
for state it no longer holds, or owed for state it holds but never sent.

The :class:`Ledger` of a service closes that gap with one row, written **first** in every
step that changes anything:

* ``seq`` — the step's number;
* ``positions`` — per input partition, the offset of the first message the state does not
  hold yet;
* ``writes`` — every table write of the step (the redo record);
* ``effects`` — the messages the step owes (topic, key, value bytes, as sent), and whether
  the broker has confirmed them (``settled``);
* ``log`` — the identity of the broker's log the positions count in (local profile: the
  broker starts empty on every start; see :mod:`streams.log_identity`).

One RocksDB put is atomic, so after kill -9 the row is either the old one or the new one.
On start the worker trusts its local store over the changelog tail (see
:mod:`streams.tables.bulk_restore`), re-applies the row's writes (a half-applied step is
completed), sends its unsettled effects again (the same bytes: the same ids, so receivers
keep one of each) and sends its consumer to the row's positions. Input the state already
holds is passed over; input it does not hold is decided again, identically.

A step's effects are awaited before the next step's row is written, and before the row
is marked settled; a refused send is sent again (:func:`streams.delivery.deliver`), never
dropped. Input partitions are tracked one by one, so a topic with several partitions is
handled, not assumed away. When the broker's log identity changes, every position is in
a log that no longer exists: input follows the new log from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, MutableMapping

import faust
from faust.streams import _current_event, current_event
from faust.types import TP
from prometheus_client import Counter

from streams.alarm_client import AlarmClient
from streams.delivery import RETRIABLE, deliver
from streams.log_identity import LogIdentity
from streams.metrics import MESSAGES_SENT, REFUSALS
from streams import tracing

log = logging.getLogger(__name__)

ROW_KEY = "ledger"
#: A ledger's table is named ``<service><LEDGER_SUFFIX>`` (the pre-start restore looks for it).
LEDGER_SUFFIX = "-ledger"
#: A step that changes nothing still records its position at least this often, so a restart
#: does not replay a long run of no-op input.
CHECKPOINT_EVERY_S = 1.0
#: Messages fetched before the consumer was sent to the state's position are passed over
#: for this long before it is sent there again.
REPOSITION_PATIENCE_S = 2.0
#: A message at most this far behind the state is passed over without moving the consumer.
#: Such messages were fetched before the consumer was last moved, or are on their way to
#: the agent while the consumer already reads beyond them: sending it to the state's
#: position would move it *back*, and it would fetch again what it had already delivered
#: (measured after a restart: every reading delivered twice, each duplicate moving the
#: consumer back again, for a second or more). Reading on passes them sooner.
SKIP_WITHOUT_SEEKING = 1000
#: How often owed effects are checked for confirmation when no new step comes.
SETTLE_EVERY_S = 0.2
#: A grouping ledger commits a run of inputs that owe nothing once this many are grouped ...
GROUP_MAX_INPUTS = 500
#: ... or once the oldest of them waited this long, whichever comes first. Readings arrive
#: 40 a second when all is quiet: committed one by one (without ``quiet_runs``), each cost
#: a ledger row, a state row and a produce request (a quarter of the bank's CPU, and as
#: much again in the broker).
GROUP_MAX_AGE_S = 0.2

SKIPPED = Counter("heater_ledger_skipped_total", "Input messages passed over as already held by the state", ["service"])
SEEKS = Counter("heater_ledger_input_seeks_total", "Times an input was not where the state ends and was sent there",
                ["service", "direction"])
RESENT = Counter("heater_ledger_effects_resent_total", "Owed effects sent again at start-up", ["service"])
LOG_RESTARTS = Counter("heater_ledger_log_restarts_total", "Times the broker's log was found to have started over",
                       ["service"])


def tp_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


# -- the row --------------------------------------------------------------------------


@dataclass
class Write:
    """One table write of a step; ``data`` is the value as the table stores it in JSON form."""

    table: str
    key: str
    data: Any = None
    deleted: bool = False

    def to_row(self) -> dict[str, Any]:
        return {"t": self.table, "k": self.key, "d": self.data, "x": self.deleted}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Write":
        return cls(row["t"], row["k"], row.get("d"), bool(row.get("x")))


@dataclass(frozen=True)
class Effect:
    """A message a step owes: sent as these exact bytes however often it is sent."""

    topic: str
    key: str
    value: str
    #: The W3C ``traceparent`` of the step that owed it (:mod:`streams.tracing`); "" for none.
    traceparent: str = ""

    def to_row(self) -> list[str]:
        return [self.topic, self.key, self.value] + ([self.traceparent] if self.traceparent else [])

    def headers(self) -> tracing.Headers:
        return [(tracing.TRACEPARENT, self.traceparent.encode())] if self.traceparent else []


@dataclass
class LedgerRow:
    seq: int = 0
    positions: dict[str, int] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    settled: bool = True
    log: str = ""  # "": no identity known (a real Kafka cluster, whose logs never start over)

    def to_row(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "positions": dict(self.positions), "writes": [w.to_row() for w in self.writes],
            "effects": [e.to_row() for e in self.effects], "settled": self.settled, "log": self.log,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | None) -> "LedgerRow":
        if not row:
            return cls()
        return cls(
            seq=int(row.get("seq", 0)),
            positions={k: int(v) for k, v in (row.get("positions") or {}).items()},
            writes=[Write.from_row(w) for w in row.get("writes") or ()],
            effects=[Effect(*e) for e in row.get("effects") or ()],
            settled=bool(row.get("settled", True)),
            log=str(row.get("log") or ""),
        )


# -- the position rule (plain, tested without Kafka) ----------------------------------


class Verdict(str, enum.Enum):
    ADMIT = "admit"
    HELD = "held"  # the state holds it already: pass over
    AHEAD = "ahead"  # input skipped past the state: send the consumer back


def judge(expected: int | None, offset: int) -> Verdict:
    """Where a message stands against the state's position for its partition."""
    if expected is None or offset == expected:
        return Verdict.ADMIT
    return Verdict.HELD if offset < expected else Verdict.AHEAD


def restart_position(expected: int, earliest: int) -> int:
    """Where input resumes for a partition whose state ends at ``expected``.

    ``expected < earliest``: retention removed input the state never read; it is gone, so
    input resumes at the log's start (logged as an error by the caller).
    """
    return max(expected, earliest)


def same_log(recorded: str, current: str | None) -> bool:
    """Whether positions recorded in log ``recorded`` count in the log the broker serves now.

    An empty record (no identity known when written) or an unknown current identity is no
    evidence of a new log.
    """
    return not recorded or current is None or recorded == current


# -- table views that route writes through the step -------------------------------------


class Tracked(MutableMapping[str, Any]):
    """A table whose writes go through the ledger's current step.

    Reads see the step's own writes first (or a grouped run's, not yet committed), then
    the table. Outside a step the table is read-only: a write there would escape the row.
    """

    def __init__(self, ledger: "Ledger", table: faust.Table) -> None:
        self._ledger = ledger
        self.table = table
        ledger._tables[table.name] = table

    @property
    def name(self) -> str:
        return self.table.name

    def _overlay(self) -> dict[str, Write]:
        step = self._ledger.current or self._ledger._open
        return {} if step is None else step.overlay.get(self.table.name, {})

    def __getitem__(self, key: str) -> Any:
        write = self._overlay().get(key)
        if write is None:
            with on_partition_zero():
                return self.table[key]
        if write.deleted:
            raise KeyError(key)
        return decode_value(self.table, write.data)

    def __setitem__(self, key: str, value: Any) -> None:
        self._ledger.require_step().put(self.table, key, value)

    def __delitem__(self, key: str) -> None:
        self[key]  # KeyError when absent, as a dict
        self._ledger.require_step().delete(self.table, key)

    def __iter__(self) -> Iterator[str]:
        overlay = self._overlay()
        with on_partition_zero():
            keys = list(self.table.keys())
        for key in keys:
            if key not in overlay:
                yield key
        for key, write in overlay.items():
            if not write.deleted:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def values(self) -> Any:  # type: ignore[override]
        """All values; outside a step one pass over the table (views scan whole tables)."""
        if self._overlay():
            return [self[key] for key in self]
        with on_partition_zero():
            return list(self.table.values())

    def items(self) -> Any:  # type: ignore[override]
        if self._overlay():
            return [(key, self[key]) for key in self]
        with on_partition_zero():
            return list(self.table.items())

    def __contains__(self, key: object) -> bool:
        write = self._overlay().get(key)  # type: ignore[call-overload]
        if write is not None:
            return not write.deleted
        with on_partition_zero():
            return key in self.table


def encode_value(table: faust.Table, value: Any) -> Any:
    """The JSON form of a value: a record as its own JSON text, anything else as it is."""
    if isinstance(value, faust.Record):
        return value.dumps().decode()
    return value


def decode_value(table: faust.Table, data: Any) -> Any:
    value_type = table.value_type
    if isinstance(value_type, type) and issubclass(value_type, faust.Record):
        return value_type.loads(data.encode() if isinstance(data, str) else data)
    return data


# -- the step -----------------------------------------------------------------------


class Step:
    """What one input does (or, grouped, a run of inputs): its table writes and the messages it owes, committed together."""

    def __init__(self, ledger: "Ledger") -> None:
        self.ledger = ledger
        self.message: Any | None = None
        #: Per input partition, the offset after the newest message this step covers.
        self.positions: dict[str, int] = {}
        self.overlay: dict[str, dict[str, Write]] = {}
        self.effects: list[Effect] = []
        self.inputs = 0
        self.opened_at = time.monotonic()

    def cover(self, message: Any | None) -> None:
        """This step now also decides ``message`` (the current input)."""
        self.message = message
        if message is not None:
            self.positions[tp_key(message.topic, message.partition)] = message.offset + 1
            self.inputs += 1

    @property
    def position(self) -> tuple[str, int] | None:
        """Where this step's input stands: ("topic:partition", offset); None outside an input."""
        if self.message is None:
            return None
        return tp_key(self.message.topic, self.message.partition), self.message.offset

    @property
    def writes(self) -> list[Write]:
        """The last write of every key: a key written by several grouped inputs is stored once."""
        return [write for table in self.overlay.values() for write in table.values()]

    def put(self, table: faust.Table, key: str, value: Any) -> None:
        self._record(Write(table.name, key, encode_value(table, value)))

    def delete(self, table: faust.Table, key: str) -> None:
        self._record(Write(table.name, key, deleted=True))

    def _record(self, write: Write) -> None:
        self.overlay.setdefault(write.table, {})[write.key] = write

    async def owe(self, topic: str, key: bytes, value: bytes) -> None:
        """Owe a message (the signature of :data:`streams.alarm_client.Sender`): sent once the row is written."""
        self.effects.append(Effect(topic, key.decode(), value.decode(), tracing.traceparent()))

    def alarms(self, client: AlarmClient) -> AlarmClient:
        """The service's alarm client, its sends owed by this step (its latch rules unchanged)."""
        return AlarmClient(client.source, self.owe, client._watch)

    @property
    def changes(self) -> bool:
        return bool(self.overlay or self.effects)


# -- the ledger ---------------------------------------------------------------------


class Ledger:
    """A service's row of state position and owed effects, and the gate on its input."""

    def __init__(self, app: faust.App, service: str, *, log_identity: LogIdentity | None = None,
                 group_inputs: bool = False, quiet_runs: bool = False) -> None:
        self.app = app
        self.service = service
        self.group_inputs = group_inputs
        self.quiet_runs = quiet_runs
        self.table = app.Table(f"{service}{LEDGER_SUFFIX}", key_type=str, value_type=None, partitions=1,
                               help="state position and owed effects (streams.consistency)")
        self._tables: dict[str, faust.Table] = {}
        self.row = LedgerRow()
        self.current: Step | None = None
        self._open: Step | None = None  # grouped inputs decided but not yet committed
        self.recovered = asyncio.Event()
        self._lock = asyncio.Lock()
        self._expected: dict[str, int] = {}
        #: Where input starts on a partition the row names no position for: None (the group's
        #: offsets) for a state without history; 0 for one with history, which decided nothing
        #: of that partition yet (a run a crash left uncommitted may have been counted in the
        #: group's offsets: its inputs must be decided again).
        self._unnamed_from: int | None = None
        self._moved_at: dict[str, float] = {}
        self._futures: list[tuple[Effect, Any]] = []
        self._row_written_at = 0.0
        self._identity = log_identity
        self._log = ""  # the log identity the positions count in
        self._following = asyncio.Lock()
        self._rebalances = self._sought_after = 0
        self._count_rebalances()
        self._send: Callable[[Effect], Any] = self._send_with_app

    def _count_rebalances(self) -> None:
        """Count the rebalances Faust ends: each one sends the inputs to the group's committed offsets.

        Those are not the state's positions (and after a broker restart they belong to the
        old log): the settler sends the inputs back to where the state ends.
        """
        ended = getattr(self.app, "on_rebalance_end", None)
        if ended is None:
            return

        def on_rebalance_end() -> None:
            ended()
            self._rebalances += 1

        self.app.on_rebalance_end = on_rebalance_end  # type: ignore[method-assign]

    def tracked(self, table: faust.Table) -> Tracked:
        return Tracked(self, table)

    def require_step(self) -> Step:
        if self.current is None:
            raise RuntimeError(f"{self.service}: a table write outside a ledger step would escape the row")
        return self.current

    @property
    def positions(self) -> dict[str, int]:
        return dict(self._expected)

    # -- start-up --------------------------------------------------------------------

    async def recover(self) -> None:
        """Complete the last step, send what it still owes, and put the input where the state ends.

        Runs once the tables are recovered (a start-up self-check), before any other
        start-up action reads them.
        """
        with on_partition_zero():
            self.row = LedgerRow.from_row(self.table.get(ROW_KEY))
        for write in self.row.writes:
            self._apply(write)
        self._expected = dict(self.row.positions)
        self._unnamed_from = 0 if self.row.seq > 0 else None
        self._log = self.row.log
        if self._identity is not None:
            current = await self._identity.verified()
            if not same_log(self._log, current):
                self._new_log(current)
            self._log = current
        if not self.row.settled:
            RESENT.labels(self.service).inc(len(self.row.effects))
            for effect in self.row.effects:
                self._futures.append((effect, await self._send(effect)))
            await self._settle()
        await self.seek_to_positions()
        log.info("%s ledger: step %d recovered (%d write(s) re-applied, %d effect(s) %s); input resumes at %s",
                 self.service, self.row.seq, len(self.row.writes), len(self.row.effects),
                 "already settled" if self.row.settled else "sent again",
                 f"{self._expected}, other partitions "
                 f"{'from their start' if self._unnamed_from is not None else 'at the group offsets'}")
        self.recovered.set()

    async def seek_to_positions(self) -> None:
        """Send each input partition the state has read to where the state ends (or where the log restarted).

        A state with history sends the input partitions its row does not name to their
        start (:attr:`_unnamed_from`).
        """
        consumer = self.app.consumer
        if self._unnamed_from is not None:
            changelogs = self.app.tables.changelog_topics
            for tp in consumer.assignment():
                if tp.topic not in changelogs:
                    self._expected.setdefault(tp_key(tp.topic, tp.partition), self._unnamed_from)
        for key, expected in list(self._expected.items()):
            topic, _, partition = key.rpartition(":")
            tp = TP(topic, int(partition))
            if tp not in consumer.assignment():
                continue
            earliest = (await consumer.earliest_offsets(tp)).get(tp, 0)
            resume = restart_position(expected, earliest)
            if resume != expected:
                self._input_lost(key, expected, earliest)
            await self._seek(tp, resume)

    def _input_lost(self, key: str, expected: int, earliest: int) -> None:
        log.error("%s: %s offsets %d..%d are gone from the log (retention): resuming at %d",
                  self.service, key, expected, earliest - 1, earliest)
        self._expected[key] = earliest

    def _new_log(self, current: str) -> None:
        """Every position counts in a log that is gone: input follows the new one from its start."""
        LOG_RESTARTS.labels(self.service).inc()
        log.error("%s: the broker's log started over (%s, was %s): input follows the new log from its start; "
                  "the state's positions %s belonged to the old one", self.service, current, self._log or "unknown",
                  self._expected)
        self._expected = {key: 0 for key in self._expected}
        self.row.positions = dict(self._expected)
        if self._open is not None:
            self._open.positions.clear()  # they count in the old log too
        self._moved_at.clear()

    # -- input ---------------------------------------------------------------------

    async def admit(self, message: Any) -> bool:
        """True for the next message the state does not hold; others are passed over (and the input moved)."""
        await self.recovered.wait()
        if self._identity is not None and self._identity.current != self._log:
            await self.follow_restarted_logs(wait=True)
        key = tp_key(message.topic, message.partition)
        expected = self._expected.get(key, self._unnamed_from)
        verdict = judge(expected, message.offset)
        if verdict == Verdict.ADMIT:
            self._expected[key] = message.offset + 1
            self._moved_at.pop(key, None)
            return True
        if verdict == Verdict.HELD:
            SKIPPED.labels(self.service).inc()
            if expected - message.offset <= SKIP_WITHOUT_SEEKING:  # type: ignore[operator]
                log.debug("%s: %s at offset %d, behind the state (next %d): passed over",
                          self.service, key, message.offset, expected)
                return False
        moved = self._moved_at.get(key)
        if moved is None or time.monotonic() - moved > REPOSITION_PATIENCE_S:
            await self._move(message, key, expected)  # type: ignore[arg-type]
        return False

    async def _move(self, message: Any, key: str, expected: int) -> None:
        tp = message.tp
        if message.offset > expected:
            earliest = (await self.app.consumer.earliest_offsets(tp)).get(tp, 0)
            if earliest > expected:
                self._input_lost(key, expected, earliest)
                expected = earliest
            log.warning("%s: %s at offset %d, ahead of the state (next %d): rewinding",
                        self.service, key, message.offset, expected)
            direction = "back"
        else:
            log.info("%s: %s at offset %d, behind the state (next %d): skipping what the state holds",
                     self.service, key, message.offset, expected)
            direction = "forward"
        SEEKS.labels(self.service, direction).inc()
        self._moved_at[key] = time.monotonic()
        await self._seek(tp, expected)

    async def _seek(self, tp: Any, offset: int) -> None:
        """Move one input partition, on the consumer's own thread.

        Faust's ``seek`` moves aiokafka's position from the calling thread while the
        consumer thread may be fetching for that partition (seen: a ``KeyError`` in
        ``fetched_records`` that crashed the worker); ``seek_wait`` runs it on that thread.
        """
        await self.app.consumer.seek_wait({tp: offset})

    def backlog(self, tp: Any) -> int:
        """Messages on the broker not yet admitted for one input partition (0 when unknown)."""
        expected = self._expected.get(tp_key(tp.topic, tp.partition))
        highwater = self.app.consumer.highwater(tp)
        if expected is None or highwater is None:
            return 0
        return max(0, highwater - expected)

    # -- steps ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def step(self, covers_event: bool = True, partition: str | None = None) -> AsyncIterator[Step]:
        """One input's writes and effects, committed as a unit on leaving the block.

        Must run inside the agent's stream iteration (the message is the current event's).
        An exception inside the block commits nothing: the service fails, and the input
        is decided again after the restart.

        A grouping ledger (``group_inputs``) keeps a step that owes nothing open while more
        input waits on the broker, and the next input continues it: one row and one write
        per key for the whole run instead of one per input, up to ``GROUP_MAX_INPUTS``
        inputs or ``GROUP_MAX_AGE_S`` (a run no input continues is committed by the
        settler). That is what lets a service work through a backlog (after a restart) at
        the rate it arrives. With ``quiet_runs`` the run stays open with no input waiting
        too, so a quiet bus costs no write per reading. A step that owes an effect commits
        at once, with the run before it, so an alarm waits for nothing. Until committed, a
        run is decided again after a crash. A run holds the inputs of one partition: an
        input of another partition commits it first, so a replay decides the run's inputs
        in the order they were decided.

        A replay also meets input of other partitions that came after the run, and may
        decide some of it before the run's inputs: ``quiet_runs`` is only for a service
        whose decisions do not depend on that order (the bank: one reading partition, and
        ticks judged only when no reading waits). DisasterDetector's do (a heating job's
        start and the readings after it): it commits as soon as no input of the partition
        waits, as before.

        ``covers_event=False``: the step covers no input by itself; the caller covers each
        message it decides with :meth:`Step.cover` (a batch of inputs, in their order), all
        of ``partition`` ("topic:partition").
        """
        event = current_event() if covers_event else None
        message = event.message if event is not None else None
        where = tp_key(message.topic, message.partition) if message is not None else partition
        async with self._lock:
            if self._open is not None and where is not None and set(self._open.positions) - {where}:
                ended, self._open = self._open, None
                await self._commit(ended, checkpoint=True)
            step, self._open = self._open or Step(self), None
            if covers_event:
                step.cover(message)
            self.current = step
            try:
                yield step
            finally:
                self.current = None
            if self._may_group(step):
                self._open = step
                return
            await self._commit(step)

    def _may_group(self, step: Step) -> bool:
        """Whether the next input may continue ``step`` instead of it being committed now."""
        message = step.message
        return (self.group_inputs and not step.effects and message is not None
                and step.inputs < GROUP_MAX_INPUTS and time.monotonic() - step.opened_at < GROUP_MAX_AGE_S
                and (self.quiet_runs or self.backlog(message.tp) > 0))

    async def commit_open(self) -> None:
        """Commit a grouped run that no input continued (the settler calls this)."""
        if self._open is None or time.monotonic() - self._open.opened_at < GROUP_MAX_AGE_S:
            return
        async with self._lock:
            step, self._open = self._open, None
            if step is not None:
                await self._commit(step)

    async def _commit(self, step: Step, checkpoint: bool = False) -> None:
        """Write the step's row; one that changes nothing only now and then, or when ``checkpoint``.

        A run ended by another partition's input is a checkpoint even if it changed nothing:
        replayed after that input, its inputs would no longer be decided in their order.
        """
        # Only this step's own inputs move: another agent's message may be admitted and
        # waiting for the lock, and the row must not claim the state holds it.
        positions = dict(self.row.positions) | step.positions
        if not step.changes and not checkpoint and time.monotonic() - self._row_written_at < CHECKPOINT_EVERY_S:
            return  # a replay of it is a no-op too; the position is recorded with the next change
        await self._settle()
        writes = step.writes
        self.row = LedgerRow(self.row.seq + 1, positions, writes, step.effects, settled=not step.effects,
                             log=self._log)
        self._write_row()
        for write in writes:
            self._apply(write)
        for effect in step.effects:
            self._futures.append((effect, await self._send(effect)))

    def _write_row(self) -> None:
        with on_partition_zero():
            self.table[ROW_KEY] = self.row.to_row()
        self._row_written_at = time.monotonic()

    def _apply(self, write: Write) -> None:
        table = self._tables[write.table]
        with on_partition_zero():
            if write.deleted:
                table.pop(write.key, None)
            else:
                table[write.key] = decode_value(table, write.data)

    async def _send_with_app(self, effect: Effect) -> Any:
        return await self.app.send(effect.topic, key=effect.key.encode(), value=effect.value.encode(),
                                   key_serializer="raw", value_serializer="raw", headers=effect.headers() or None)

    async def _settle(self) -> None:
        """Wait until the broker confirmed every owed effect; a refused one is sent again."""
        futures, self._futures = self._futures, []
        for effect, future in futures:
            try:
                await future
            except RETRIABLE as exc:  # refused or lost: sent again until confirmed, or the service fails
                REFUSALS.labels(self.service, effect.topic).inc()
                log.error("%s: effect on %s refused (%r): sending it again", self.service, effect.topic, exc)
                await deliver(lambda effect=effect: self._send(effect), f"{self.service} effect on {effect.topic}",
                              service=self.service, topic=effect.topic)
            else:
                MESSAGES_SENT.labels(self.service, effect.topic).inc()

    async def settle_now(self) -> None:
        """Mark the owed effects settled once confirmed (a timer calls this between steps)."""
        if self.row.settled or self.current is not None or not self.recovered.is_set():
            return
        async with self._lock:
            if self.row.settled:
                return
            await self._settle()
            self.row.settled = True
            self.row.writes = []
            self._write_row()

    def owed_keys(self) -> list[str]:
        """Keys of the effects written but not yet confirmed by the broker."""
        return [] if self.row.settled else sorted({e.key for e in self.row.effects})

    def run_settler(self) -> None:
        """Settle owed effects in the background when no step comes to do it, and follow a log
        that started over under a running worker."""
        @self.app.timer(interval=SETTLE_EVERY_S)
        async def settle_owed() -> None:
            await self.commit_open()
            await self.settle_now()
            await self.follow_restarted_logs()
            await self.after_rebalance()

    async def after_rebalance(self) -> None:
        """Once a rebalance has ended, send every input the state has read to where the state ends."""
        if self._rebalances == self._sought_after or not self.recovered.is_set():
            return
        self._sought_after = self._rebalances
        await self.seek_to_positions()

    async def follow_restarted_logs(self, wait: bool = False) -> None:
        """Send every input to the start of the broker's new log, when its log identity changed.

        A worker that lives through a broker restart keeps reading at positions in the old
        log, and Faust drops every message below them without a word: the gate never sees
        one. With ``wait`` (input about to be judged) an unknown identity is waited for.
        """
        if self._identity is None or not self.recovered.is_set():
            return
        current = await self._identity.verified() if wait else self._identity.current
        if current is None or current == self._log:
            return
        async with self._following:
            if current == self._log:
                return
            self._new_log(current)
            self._log = self.row.log = current
            consumer = self.app.consumer
            for key in self._expected:
                topic, _, partition = key.rpartition(":")
                tp = TP(topic, int(partition))
                if tp in consumer.assignment():
                    await self._seek(tp, 0)


class _Message:
    topic = "__ledger__"
    partition = 0


class _Event:
    message = _Message()


_EVENT = _Event()


@contextlib.contextmanager
def on_partition_zero() -> Iterator[None]:
    """Read and write the ledger's tables in partition 0, whatever input is being handled.

    Faust picks a table's partition from the current event (co-partitioning). A service
    that keeps a ledger runs as one worker holding every input partition, and its tables
    have one partition; the stand-in event says so, and also lets the ledger write at
    start-up and between steps, outside any event.
    """
    token = _current_event.set(weakref.ref(_EVENT))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)
