"""The simulated bus's wire as the CAN adapter reads it (:mod:`adapters.can.remote`).

One end of a socket pair is the adapter's python-can-remote websocket; the test writes the
bus server's bytes to the other end, cut wherever a TCP stream may cut them, and with the
faults a server or a broken stream can produce.  The whole path through the simulator's
own server runs in ``test_can_contract.py``.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from typing import Iterator

import can
import pytest
from can_remote.protocol import RemoteError
from can_remote.websocket import WebSocket, WebsocketClosed

from adapters.can.remote import MAX_FRAME_BYTES, RemoteFrameReader, RemoteWireError, binary_frame

Pair = tuple[RemoteFrameReader, socket.socket]


@pytest.fixture
def wire() -> Iterator[Pair]:
    """(the adapter's reader, the server's end of the connection)."""
    adapter_end, server_end = socket.socketpair()
    reader = RemoteFrameReader(WebSocket(None, "can.binary+json.v1", sock=adapter_end))
    yield reader, server_end
    adapter_end.close()
    server_end.close()


def ws_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    length = len(payload)
    if length <= 125:
        header = bytes([0x80 | opcode, length])
    elif length <= 0xFFFF:
        header = bytes([0x80 | opcode, 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 127]) + length.to_bytes(8, "big")
    if mask is None:
        return header + payload
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([header[0], header[1] | 0x80]) + header[2:] + mask + masked


def text(event: dict[str, object]) -> bytes:
    return ws_frame(0x1, json.dumps(event).encode())


def receive_all(reader: RemoteFrameReader, want: int, timeout: float = 5.0) -> list[can.Message]:
    got: list[can.Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += reader.receive(0.05)
    return got


def frames(count: int) -> list[can.Message]:
    return [can.Message(timestamp=1_700_000_000.0 + i / 9000, arbitration_id=0x100 + i % 7,
                        data=i.to_bytes(4, "little") + b"\x5a\xa5", is_extended_id=False) for i in range(count)]


def same(a: can.Message, b: can.Message) -> bool:
    return (a.timestamp, a.arbitration_id, a.is_extended_id, a.is_error_frame, a.is_remote_frame, a.is_fd,
            a.dlc, bytes(a.data)) == (b.timestamp, b.arbitration_id, b.is_extended_id, b.is_error_frame,
                                      b.is_remote_frame, b.is_fd, b.dlc, bytes(b.data))


def test_every_kind_of_frame_survives_the_wire(wire: Pair) -> None:
    reader, server = wire
    sent = [
        can.Message(timestamp=1.5, arbitration_id=0x123, data=b"\x01\x02", is_extended_id=False),
        can.Message(timestamp=2.5, arbitration_id=0x1ABCDEF0, data=bytes(range(8)), is_extended_id=True),
        can.Message(timestamp=3.5, arbitration_id=0x040, data=bytes(8), is_error_frame=True, is_extended_id=False),
        can.Message(timestamp=4.5, arbitration_id=0x321, is_remote_frame=True, dlc=4, is_extended_id=False),
        can.Message(timestamp=5.5, arbitration_id=0x222, data=bytes(range(64)), is_fd=True, bitrate_switch=True,
                    is_extended_id=False),
    ]
    server.sendall(b"".join(binary_frame(message) for message in sent))
    got = receive_all(reader, len(sent))
    assert len(got) == len(sent) and all(same(a, b) for a, b in zip(got, sent))
    assert got[4].bitrate_switch and not got[4].error_state_indicator


def test_frames_cut_anywhere_by_the_stream_arrive_whole_and_in_order(wire: Pair) -> None:
    reader, server = wire
    sent = frames(2000)
    stream = b"".join(binary_frame(message) for message in sent)
    cuts = random.Random(7)
    got: list[can.Message] = []
    position = 0
    while position < len(stream):
        size = cuts.choice((1, 2, 3, 7, 24, 25, 26, 300, 4096))
        server.sendall(stream[position:position + size])
        position += size
        got += reader.receive(0.05)
    got += receive_all(reader, len(sent) - len(got))
    assert [bytes(m.data) for m in got] == [bytes(m.data) for m in sent]
    assert all(same(a, b) for a, b in zip(got, sent))


def test_a_read_takes_every_frame_that_has_arrived(wire: Pair) -> None:
    """The point of the reader: one read, every queued frame (not one frame per read)."""
    reader, server = wire
    server.sendall(b"".join(binary_frame(message) for message in frames(500)))
    time.sleep(0.05)
    assert len(reader.receive(1.0)) == 500


def test_json_events_long_frames_and_masked_frames_are_read(wire: Pair) -> None:
    reader, server = wire
    payload = {"arbitration_id": 0x7FF, "data": list(range(8)), "is_extended_id": False, "timestamp": 9.0}
    long_event = text({"type": "message", "payload": payload, "comment": "x" * 200})
    assert long_event[1] == 126  # a 16-bit length
    server.sendall(long_event + ws_frame(0x2, binary_frame(frames(1)[0])[2:], mask=b"\x11\x22\x33\x44"))
    got = receive_all(reader, 2)
    assert [m.arbitration_id for m in got] == [0x7FF, 0x100]
    assert bytes(got[0].data) == bytes(range(8)) and bytes(got[1].data) == frames(1)[0].data


def test_events_not_understood_are_counted_and_reading_goes_on(wire: Pair) -> None:
    reader, server = wire
    server.sendall(ws_frame(0x1, b"not json") + text({"no": "type"})
                   + text({"type": "message", "payload": {"arbitration_id": 1, "no_such_field": 2}})
                   + text({"type": "periodic_stop", "payload": 1}) + ws_frame(0x2, b"\x09junk")
                   + binary_frame(frames(1)[0]))
    got = receive_all(reader, 1)
    assert len(got) == 1 and got[0].arbitration_id == 0x100
    assert (reader.ignored, reader.malformed) == (5, 3)


def test_a_ping_is_answered_with_a_pong(wire: Pair) -> None:
    reader, server = wire
    server.sendall(ws_frame(0x9, b"are you there") + binary_frame(frames(1)[0]))
    assert len(receive_all(reader, 1)) == 1
    server.settimeout(2)
    reply = server.recv(100)
    assert reply[0] & 0x0F == 0xA and reply.endswith(b"are you there")


def test_an_error_event_ends_reception_with_the_servers_reason(wire: Pair) -> None:
    reader, server = wire
    server.sendall(b"".join(binary_frame(message) for message in frames(3))
                   + text({"type": "error", "payload": "bus exploded"}))
    time.sleep(0.05)
    assert len(reader.receive(1.0)) == 3  # the frames before the end are not lost with it
    with pytest.raises(RemoteError, match="bus exploded"):
        reader.receive(1.0)


def test_a_close_from_the_server_is_answered_and_ends_reception(wire: Pair) -> None:
    reader, server = wire
    server.sendall(ws_frame(0x8, struct.pack(">H", 1001) + b"server going away"))
    with pytest.raises(WebsocketClosed) as closed:
        receive_all(reader, 1)
    assert closed.value.code == 1001 and closed.value.reason == "server going away"
    server.settimeout(2)
    assert server.recv(100)[0] & 0x0F == 0x8  # the close handshake's answer


def test_a_dropped_connection_ends_reception(wire: Pair) -> None:
    reader, server = wire
    server.sendall(binary_frame(frames(1)[0]))
    server.close()
    got: list[can.Message] = []
    with pytest.raises(WebsocketClosed, match="closed unexpectedly"):
        for _ in range(100):
            got += reader.receive(0.05)
    assert len(got) == 1


def test_a_length_no_frame_has_is_a_wire_error_not_a_huge_allocation(wire: Pair) -> None:
    reader, server = wire
    server.sendall(binary_frame(frames(1)[0]) + bytes([0x82, 127]) + (2**40).to_bytes(8, "big"))
    time.sleep(0.05)
    assert len(reader.receive(1.0)) == 1
    with pytest.raises(RemoteWireError, match=f"at most {MAX_FRAME_BYTES}"):
        reader.receive(1.0)
    with pytest.raises(RemoteWireError):  # and it stays ended
        reader.receive(1.0)


def test_finish_completes_a_frame_a_stop_cut_in_two(wire: Pair) -> None:
    """A stop between two reads leaves the start of a frame read: finish reads the rest, so the
    bus's close handshake starts at a frame boundary and the frame is not lost."""
    reader, server = wire
    stream = b"".join(binary_frame(message) for message in frames(3))
    server.sendall(stream[:40])
    assert len(receive_all(reader, 1)) == 1
    threading.Timer(0.1, server.sendall, (stream[40:],)).start()
    assert [int.from_bytes(m.data[:4], "little") for m in reader.finish(2.0)] == [1, 2]
    assert reader.finish(0.1) == []
