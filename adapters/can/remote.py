"""Reading the simulated bus's wire a chunk at a time.

The local platform's CAN bus is python-can-remote: a websocket from the simulator's bus
server, one websocket frame per CAN frame.  python-can-remote's own ``recv`` takes one
frame per call with three system calls (a ``select`` and two reads), and each of them
releases the interpreter, which the adapter's busy event loop may take meanwhile: on a
saturated bus (about 9,000 frames/s) that is some 27,000 chances a second for the reader
thread to wait, and a frame over the limit queues behind them.  A SocketCAN socket on the Pi
costs one read per frame in the kernel; this reader brings the simulation nearer to it by
reading whatever has arrived in one read and decoding every complete frame in it.

The wire format is python-can-remote 0.3's (``can.binary+json.v1``): binary frames carry
one CAN frame (type byte 1, then ``>dIBB`` timestamp, id, DLC, flags, then the data);
text frames carry JSON events, of which ``error`` ends reception as python-can-remote's
own reader does; PING is answered, CLOSE ends the connection.  :func:`binary_frame` writes
the same frames, for the simulator's bus server.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import struct
from typing import Callable

import can
from can_remote.client import RemoteBus
from can_remote.protocol import (
    BINARY_MESSAGE_TYPE, BINARY_MSG_STRUCT, IS_BRS, IS_ERROR_FRAME, IS_ESI, IS_EXTENDED_ID, IS_FD, IS_REMOTE_FRAME,
    RemoteError,
)
from can_remote.websocket import BINARY, CLOSE, PING, PONG, TEXT, WebSocket, WebsocketClosed

log = logging.getLogger(__name__)

#: Bytes taken off the socket per read: at 9,000 frames/s of 25 bytes a read holds ~1 s of bus.
READ_BYTES = 256 * 1024
#: The largest websocket frame accepted: the server's are ~25 bytes (a CAN FD frame ~90, an
#: event a few hundred). A longer length means the stream is not what this reader speaks.
MAX_FRAME_BYTES = 64 * 1024
#: How long :meth:`RemoteFrameReader.finish` waits for the rest of a frame cut by a stop.
FINISH_TIMEOUT_S = 0.5

Receive = Callable[[float], list[can.Message]]


class RemoteWireError(can.CanOperationError):
    """The bytes from the bus server are not python-can-remote's websocket frames."""


def receiver_for(bus: can.BusABC) -> tuple[Receive, Callable[[], list[can.Message]]]:
    """How to take frames off ``bus``: ``receive(timeout)`` → every frame that arrived (maybe
    none), and ``finish()`` → the frames of a last read cut short by a stop."""
    if isinstance(bus, RemoteBus):
        reader = RemoteFrameReader(bus.remote_protocol._ws)
        return reader.receive, reader.finish

    def receive_one(timeout: float) -> list[can.Message]:
        message = bus.recv(timeout)
        return [] if message is None else [message]

    return receive_one, list


class RemoteFrameReader:
    """Takes python-can-remote's websocket frames off its connection to the bus server in chunks.

    One reader thread only.  Between calls the buffer holds at most the start of one frame;
    :meth:`finish` completes it, so that the bus's own close handshake reads from a frame
    boundary.
    """

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._socket = websocket.socket
        self._buffer = bytearray()
        self._chunk = bytearray(READ_BYTES)
        #: Frames and events that carried no CAN frame for this reader; of them, malformed ones.
        self.ignored = 0
        self.malformed = 0
        #: What ended reception in a read that also completed frames (they go out first).
        self._ended: Exception | None = None

    def receive(self, timeout: float) -> list[can.Message]:
        """Wait up to ``timeout`` for bytes, read once, return the CAN frames completed.

        Raises :class:`WebsocketClosed` when the server closes or the connection drops,
        :class:`RemoteError` on an error event, :class:`RemoteWireError` on bytes that are
        not this protocol; reception cannot go on after any of them.  The frames that came
        before such an end in the same read are returned first, and the end on the next call.
        """
        if self._ended is not None:
            raise self._ended
        try:  # bytes waiting (a busy bus): one system call, one wait for the interpreter
            read = self._socket.recv_into(self._chunk, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if not select.select([self._socket], [], [], timeout)[0]:
                return []
            read = self._socket.recv_into(self._chunk)
        if read == 0:
            raise WebsocketClosed(1006, "Socket closed unexpectedly")
        self._buffer += memoryview(self._chunk)[:read]
        return self._decode_buffered()

    def finish(self, timeout: float = FINISH_TIMEOUT_S) -> list[can.Message]:
        """Read the rest of a frame already begun (within ``timeout``); its CAN frames, if any."""
        messages: list[can.Message] = []
        while self._buffer:
            if not select.select([self._socket], [], [], timeout)[0]:
                log.warning("CAN server sent a part of a frame and no more within %.1f s", timeout)
                break
            messages += self.receive(0)
        return messages

    def _decode_buffered(self) -> list[can.Message]:
        """The CAN frames buffered; an end of reception after some of them is raised on the next call."""
        buffer = self._buffer
        messages: list[can.Message] = []
        start = 0
        try:
            while (frame := next_frame(buffer, start)) is not None:
                opcode, payload, start = frame
                message = self._event(opcode, payload)
                if message is not None:
                    messages.append(message)
        except Exception as exc:
            if not messages:
                raise
            self._ended = exc
        finally:
            del buffer[:start]
        return messages

    def _event(self, opcode: int, payload: bytes) -> can.Message | None:
        if opcode == BINARY:
            if payload[:1] == bytes([BINARY_MESSAGE_TYPE]) and len(payload) >= 1 + BINARY_MSG_STRUCT.size:
                return binary_message(payload)
        elif opcode == TEXT:
            return self._text_event(payload)
        elif opcode == PING:
            self._websocket.send_frame(PONG, payload)
            return None
        elif opcode == CLOSE:
            status, reason = (struct.unpack_from(">H", payload)[0], payload[2:].decode("utf-8", "replace")) \
                if len(payload) >= 2 else (1000, "")
            self._websocket.close(status, reason)
            self._socket.close()
            raise WebsocketClosed(status, reason)
        self.ignored += 1
        return None

    def _text_event(self, payload: bytes) -> can.Message | None:
        try:
            event = json.loads(payload)
        except ValueError:
            event = None
        if isinstance(event, dict) and event.get("type") == "error":
            raise RemoteError(event.get("payload"))
        if isinstance(event, dict) and event.get("type") == "message":
            try:
                return can.Message(**event["payload"])
            except (TypeError, ValueError) as exc:
                return self._not_understood(payload, exc)
        return self._not_understood(payload, None if isinstance(event, dict) and "type" in event else "not an event")

    def _not_understood(self, payload: bytes, why: object) -> None:
        """Count an event this reader does not act on; warn of the first malformed one."""
        self.ignored += 1
        if why is not None:
            self.malformed += 1
            if self.malformed == 1:
                log.warning("CAN server sent an event this reader cannot read (%s): %.200r", why, payload)
        return None


def next_frame(buffer: bytearray, start: int) -> tuple[int, bytes, int] | None:
    """The websocket frame at ``buffer[start:]`` as (opcode, unmasked payload, end), or None
    if it has not all arrived; raises :class:`RemoteWireError` for a length no frame has."""
    available = len(buffer) - start
    if available < 2:
        return None
    first, second = buffer[start], buffer[start + 1]
    length = second & 0x7F
    header = 2
    if length == 126:
        if available < 4:
            return None
        length = int.from_bytes(buffer[start + 2:start + 4], "big")
        header = 4
    elif length == 127:
        if available < 10:
            return None
        length = int.from_bytes(buffer[start + 2:start + 10], "big")
        header = 10
    if length > MAX_FRAME_BYTES:
        raise RemoteWireError(f"CAN server sent a websocket frame of {length} bytes (at most {MAX_FRAME_BYTES} expected)")
    masked = second & 0x80
    if masked:
        header += 4
    end = start + header + length
    if len(buffer) < end:
        return None
    payload = bytes(buffer[start + header:end])
    if masked:
        mask = buffer[start + header - 4:start + header]
        payload = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return first & 0x0F, payload, end


def binary_message(payload: bytes) -> can.Message:
    """One CAN frame of the binary protocol (python-can-remote's ``RemoteProtocolBase.recv``)."""
    timestamp, arbitration_id, dlc, flags = BINARY_MSG_STRUCT.unpack_from(payload, 1)
    return can.Message(
        timestamp=timestamp,
        arbitration_id=arbitration_id,
        dlc=dlc,
        is_extended_id=bool(flags & IS_EXTENDED_ID),
        is_remote_frame=bool(flags & IS_REMOTE_FRAME),
        is_error_frame=bool(flags & IS_ERROR_FRAME),
        is_fd=bool(flags & IS_FD),
        bitrate_switch=bool(flags & IS_BRS),
        error_state_indicator=bool(flags & IS_ESI),
        data=payload[1 + BINARY_MSG_STRUCT.size:],
    )


def binary_frame(message: can.Message) -> bytes:
    """``message`` as the bus server's websocket frame (unmasked), the inverse of :func:`binary_message`."""
    flags = (
        (IS_EXTENDED_ID if message.is_extended_id else 0)
        | (IS_REMOTE_FRAME if message.is_remote_frame else 0)
        | (IS_ERROR_FRAME if message.is_error_frame else 0)
        | (IS_FD if message.is_fd else 0)
        | (IS_BRS if message.bitrate_switch else 0)
        | (IS_ESI if message.error_state_indicator else 0)
    )
    payload = bytes([BINARY_MESSAGE_TYPE]) + BINARY_MSG_STRUCT.pack(
        message.timestamp, message.arbitration_id, message.dlc, flags) + bytes(message.data)
    length = len(payload)
    header = bytes([0x80 | BINARY, length]) if length <= 125 else bytes([0x80 | BINARY, 126]) + length.to_bytes(2, "big")
    return header + payload
