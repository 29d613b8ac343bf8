"""The local broker's gate: one client connection, passed through to the broker binary.

Each request goes to the broker in order, and each answer goes back to the client in the
order the requests came, as Kafka requires. Two things happen on the way
(:mod:`heater.runtime.log_mirror` says why):

- Produce requests and their answers feed the gate's copy of the logs;
- a Fetch the copy can answer is answered by the gate, at once if data is there, else when
  data arrives or the client's fetch wait is over — never by the broker's listing;
- a ListOffsets asking for ends and starts the copy knows is answered by the gate; the
  broker answers the rest of it.

The first answer of a librdkafka connection is made readable to it
(:mod:`heater.runtime.api_versions`). A frame that does not read closes the connection;
the client reconnects, as it would after any broker hiccup.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from heater.runtime import kafka_wire as wire
from heater.runtime.api_versions import is_flexible_api_versions, strip_tagged_fields
from heater.runtime.log_mirror import LogMirror

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Largest frame a client may send (the broker's own limit is about this).
MAX_FRAME_BYTES = 100 * 1024 * 1024
#: How long a closed client's connection to the broker stays open for the answers it is owed.
DRAIN_TIMEOUT_S = 10.0
#: How often the copy is checked for gaps (a fraction of its ``GAP_TIMEOUT_S``).
GAP_CHECK_S = 0.1


class FrameError(ConnectionError):
    """A frame that cannot be a Kafka frame (its length is impossible)."""


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One frame's body (without its length prefix)."""
    prefix = await reader.readexactly(4)
    (length,) = struct.unpack(">i", prefix)
    if not 0 < length <= MAX_FRAME_BYTES:
        raise FrameError(f"a frame of {length} bytes")
    return await reader.readexactly(length)


def framed(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


@dataclass
class _Forwarded:
    correlation_id: int
    answer: asyncio.Future[bytes]
    on_answer: Callable[[bytes], bytes] | None


class GateSession:
    """One client connection and its connection to the broker binary."""

    def __init__(self, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 broker: tuple[asyncio.StreamReader, asyncio.StreamWriter], mirror: LogMirror | None) -> None:
        self.client_reader, self.client_writer = client
        self.broker_reader, self.broker_writer = broker
        self.mirror = mirror
        self._forwarded: collections.deque[_Forwarded] = collections.deque()
        self._replies: asyncio.Queue[Awaitable[bytes | None]] = asyncio.Queue()

    async def run(self) -> None:
        requests = asyncio.ensure_future(self._requests())
        answers = asyncio.ensure_future(self._answers())
        replies = asyncio.ensure_future(self._reply())
        tasks = [requests, answers, replies]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if not answers.done():
                await self._drain(answers)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for pending in self._forwarded:
                pending.answer.cancel()
            self.client_writer.close()
            self.broker_writer.close()

    async def _drain(self, answers: asyncio.Future[None]) -> None:
        """The client is gone: the broker's answers to what it had sent still feed the copy.

        A producer killed right after sending has records in the log that only the answer
        tells the copy about; without it the copy would wait for them (see ``GAP_TIMEOUT_S``).
        """
        deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT_S
        while self._forwarded and not answers.done() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)

    # -- client → gate --------------------------------------------------------------------

    async def _requests(self) -> None:
        first = True
        try:
            while True:
                frame = await read_frame(self.client_reader)
                self._replies.put_nowait(self._route(frame, first))
                first = False
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass  # the client went away
        except (FrameError, wire.WireError) as exc:
            log.warning("closing a client connection: %s", exc)

    def _route(self, frame: bytes, first: bool) -> Awaitable[bytes | None]:
        api_key, api_version, correlation_id = struct.unpack_from(">hhi", frame)
        if first and is_flexible_api_versions(frame):
            return self._forward(frame, correlation_id, strip_tagged_fields)
        if self.mirror is None:
            return self._forward(frame, correlation_id)
        if api_key == wire.FETCH and api_version in wire.FETCH_VERSIONS:
            try:
                fetch = wire.read_fetch(wire.request_header(frame), frame)
            except wire.WireError:
                return self._forward(frame, correlation_id)  # the broker says what is wrong with it
            if fetch.sessionless and self.mirror.can_serve(fetch.partitions):
                return asyncio.ensure_future(self._serve(fetch, correlation_id, frame))
        elif api_key == wire.LIST_OFFSETS and api_version in wire.LIST_OFFSETS_VERSIONS:
            return self._list_offsets(frame, correlation_id)
        elif api_key == wire.PRODUCE:
            return self._produce(frame, api_version, correlation_id)
        elif api_key == wire.DELETE_TOPICS:
            self._deleting(frame)
        return self._forward(frame, correlation_id)

    def _produce(self, frame: bytes, api_version: int, correlation_id: int) -> Awaitable[bytes | None]:
        mirror = self.mirror
        assert mirror is not None
        try:
            produce = wire.read_produce(wire.request_header(frame), frame)
        except wire.WireError as exc:
            mirror.give_up(f"a Produce the gate cannot read ({exc})")
            if _acks(frame) == 0:
                return self._send_only(frame)
            return self._forward(frame, correlation_id)
        if produce.acks == 0:
            mirror.give_up("a Produce with acks=0 (no answer, so no offsets)")
            return self._send_only(frame)
        sent = {(p.topic, p.partition): p.records for p in produce.partitions}

        def keep(answer: bytes) -> bytes:
            try:
                appended = wire.read_produce_answer(api_version, answer)
            except wire.WireError as exc:
                mirror.give_up(f"a Produce answer the gate cannot read ({exc})")
                return answer
            for entry in appended:
                records = sent.get((entry.topic, entry.partition))
                if entry.error_code == wire.NO_ERROR and records is not None:
                    mirror.acknowledged(entry.topic, entry.partition, entry.base_offset, records)
            return answer

        return self._forward(frame, correlation_id, keep)

    def _list_offsets(self, frame: bytes, correlation_id: int) -> Awaitable[bytes | None]:
        """What the copy knows from it, the rest from the broker, in one answer."""
        mirror = self.mirror
        assert mirror is not None
        try:
            header = wire.request_header(frame)
            request = wire.read_list_offsets(header, frame)
        except wire.WireError:
            return self._forward(frame, correlation_id)  # the broker says what is wrong with it
        known = mirror.offsets(request.partitions)
        if not known:
            return self._forward(frame, correlation_id)
        ours = [wire.FoundOffset(q.topic, q.partition, wire.NO_ERROR, -1, offset) for q, offset in known.items()]
        rest = [question for question in request.partitions if question not in known]
        if not rest:
            return _ready(framed(wire.list_offsets_answer(request.version, correlation_id, ours)))

        def merge(answer: bytes) -> bytes:
            try:
                throttle_ms, theirs = wire.read_list_offsets_answer(request.version, answer)
            except wire.WireError as exc:
                log.warning("a ListOffsets answer the gate cannot read (%s): passed on as it came", exc)
                return answer
            return wire.list_offsets_answer(request.version, correlation_id, theirs + ours, throttle_ms)

        return self._forward(wire.list_offsets_request(frame, header, request, rest), correlation_id, merge)

    def _deleting(self, frame: bytes) -> None:
        assert self.mirror is not None
        try:
            self.mirror.forget_topics(wire.read_deleted_topics(wire.request_header(frame), frame))
        except wire.WireError as exc:
            self.mirror.give_up(f"a DeleteTopics the gate cannot read ({exc})")

    def _forward(self, frame: bytes, correlation_id: int,
                 on_answer: Callable[[bytes], bytes] | None = None) -> asyncio.Future[bytes]:
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._forwarded.append(_Forwarded(correlation_id, answer, on_answer))
        self.broker_writer.write(framed(frame))
        return answer

    def _send_only(self, frame: bytes) -> asyncio.Future[None]:
        """A request the broker does not answer (Produce with acks=0): nothing goes back."""
        self.broker_writer.write(framed(frame))
        return _ready(None)

    async def _serve(self, fetch: wire.Fetch, correlation_id: int, frame: bytes) -> bytes:
        mirror = self.mirror
        assert mirror is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + fetch.max_wait_ms / 1000
        while True:
            if not mirror.can_serve(fetch.partitions):
                return await self._forward(frame, correlation_id)
            served, size = mirror.serve(fetch.partitions, fetch.max_bytes)
            left = deadline - loop.time()
            if size >= fetch.min_bytes or left <= 0:
                return wire.fetch_answer(fetch.version, correlation_id, served)
            await mirror.wait_for_growth(fetch.partitions, left, fetch.max_wait_ms)

    # -- broker → gate → client -----------------------------------------------------------

    async def _answers(self) -> None:
        try:
            while True:
                body = await read_frame(self.broker_reader)
                correlation_id = wire.response_correlation_id(body)
                if not self._forwarded or self._forwarded[0].correlation_id != correlation_id:
                    raise wire.WireError(f"the broker answered {correlation_id}, which was not asked next")
                pending = self._forwarded.popleft()
                if pending.on_answer is not None:
                    body = pending.on_answer(body)
                if not pending.answer.done():
                    pending.answer.set_result(framed(body))
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass  # the broker went away
        except (FrameError, wire.WireError) as exc:
            log.warning("closing a broker connection: %s", exc)

    async def _reply(self) -> None:
        try:
            while True:
                reply = await self._replies.get()
                data = await reply
                if data is not None:
                    self.client_writer.write(data)
                    await self.client_writer.drain()
        except ConnectionError:
            pass  # the client went away


def _ready(reply: T) -> asyncio.Future[T]:
    """A reply known at once, in the queue of replies like any other."""
    done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    done.set_result(reply)
    return done


def _acks(frame: bytes) -> int | None:
    """The acks of a Produce (v3+) that does not read otherwise; None if even that does not."""
    try:
        header = wire.request_header(frame)
        (transactional_id_length,) = struct.unpack_from(">h", frame, header.body_at)
        return struct.unpack_from(">h", frame, header.body_at + 2 + max(transactional_id_length, 0))[0]
    except (struct.error, wire.WireError):
        return None


class Gate:
    """Accepts client connections and opens one to the broker binary for each."""

    def __init__(self, broker_port: int, mirror: LogMirror | None) -> None:
        self.broker_port = broker_port
        self.mirror = mirror
        self._checking: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Watch the copy for gaps that do not close (in the running event loop)."""
        if self.mirror is not None:
            self._checking = asyncio.ensure_future(self._check_gaps(self.mirror))

    @staticmethod
    async def _check_gaps(mirror: LogMirror) -> None:
        while True:
            await asyncio.sleep(GAP_CHECK_S)
            mirror.check_gaps()

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            broker = await asyncio.open_connection("127.0.0.1", self.broker_port)
        except OSError:
            writer.close()
            return
        await GateSession((reader, writer), broker, self.mirror).run()
