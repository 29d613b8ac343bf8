"""The CAN bus the simulated hardware sits on.

A python-can-remote server on 127.0.0.1 gives every client process its own
``virtual`` bus node on one in-process channel; the simulator joins the same
channel with a node of its own, so what the physics model sends reaches every
client, and client frames reach the model (a node never hears itself).

Bus-off is modelled at this level: a few error frames, then silence (every
send is dropped and counted) until the fault is cleared, as a controller that
went bus-off and has not recovered.

For reaction-time benches the host notes, per sensor, the wall-clock send time
(``time.time()``, the Pico's clock too) of the first periodic WaterTemp frame
that carries the sensor's current value: after an ``overtemp`` injection that
is the moment the over-temperature appeared on the bus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import can
from can_remote.server import ClientRequestHandler, RemoteServer, RemoteServerProtocol
from can_remote.websocket import WebSocket, get_accept_key

from adapters.can import frames
from adapters.can.remote import binary_frame

log = logging.getLogger(__name__)

#: The most frames one write to a client carries.
SEND_BATCH = 512

# Error-frame classes and detail bytes as SocketCAN reports them (linux/can/error.h).
CAN_ERR_CRTL = 0x004
CAN_ERR_BUSOFF = 0x040
CAN_ERR_CRTL_TX_PASSIVE = 0x20


class BatchingServerProtocol(RemoteServerProtocol):
    """One client's connection, sending whatever frames have queued for it in one write.

    python-can-remote writes each frame with a system call of its own, about 9,000 a
    second per client on a saturated bus, each one releasing the interpreter to the
    simulator's busy loop and taking it back.  A frame is never held back to fill a batch: the batch is what was already
    waiting when the first frame came.
    """

    def _send_to_client(self) -> None:
        if not self._use_binary:  # a JSON client: python-can-remote's own frame-by-frame sending
            return super()._send_to_client()
        try:
            while self.running:
                try:
                    batch = self._queued()
                except Exception as exc:  # as python-can-remote: the client hears of a failing bus
                    log.exception("CAN server: reading the bus failed")
                    self.send_error(exc)
                    continue
                if batch and not self._write(b"".join(binary_frame(message) for message in batch)):
                    break
        finally:
            log.info("CAN server: client disconnected from the bus")
            self.bus.shutdown()

    def _queued(self) -> list[can.Message]:
        message = self.bus.recv(0.5)
        batch: list[can.Message] = []
        while message is not None:
            batch.append(message)
            if len(batch) >= SEND_BATCH:
                break
            message = self.bus.recv(0)
        return batch

    def _write(self, data: bytes) -> bool:
        """False once the client's connection is gone (its receiving side ends the session)."""
        websocket = self._ws
        with websocket._send_lock:
            if websocket.closed:
                return False
            try:
                websocket.socket.sendall(data)
            except OSError:
                return False
        return True


class BatchingRequestHandler(ClientRequestHandler):
    """python-can-remote's connection handler with :class:`BatchingServerProtocol` as the protocol."""

    def start_websocket(self) -> None:
        self.send_response(101)
        self.send_header("Upgrade", "WebSocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", get_accept_key(self.headers["Sec-WebSocket-Key"]))
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "can.json.v1").split(",")]
        protocol_name = "can.binary+json.v1" if "can.binary+json.v1" in offered else "can.json.v1"
        self.send_header("Sec-WebSocket-Protocol", protocol_name)
        self.end_headers()
        protocol = BatchingServerProtocol(self.server.config, WebSocket(None, protocol_name, sock=self.request))
        self.server.clients.append(protocol)
        try:
            protocol.run()
        finally:
            self.server.clients.remove(protocol)


class CanHost:
    """Hosts the remote CAN server and the simulator's own node on the bus."""

    def __init__(self, host: str, port: int, channel: str) -> None:
        self.host = host
        self.requested_port = port
        self.channel = channel
        self.port = 0
        self.bus_off = False
        self.sent: Counter[str] = Counter()
        self.suppressed = 0
        self.received = 0
        #: Per sensor index: its last periodic WaterTemp frame and the first one carrying that value.
        self.water_temp: dict[int, dict[str, float]] = {}
        self._server: RemoteServer | None = None
        self._thread: threading.Thread | None = None
        self._node: can.BusABC | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    def start(self) -> int:
        """Join the channel and start serving; returns the listening port."""
        self._node = can.Bus(interface="virtual", channel=self.channel)
        self._server = RemoteServer(
            self.host, self.requested_port, interface="virtual", channel=self.channel
        )
        self._server.RequestHandlerClass = BatchingRequestHandler
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="can-remote-server",
            daemon=True,
        )
        self._thread.start()
        log.info("CAN bus served on %s (virtual channel %r)", self.url, self.channel)
        return self.port

    @property
    def clients(self) -> int:
        return len(self._server.clients) if self._server else 0

    def send(self, arbitration_id: int, data: bytes, kind: str) -> bool:
        """Put one data frame on the bus; False when the bus is off."""
        if self.bus_off or self._node is None:
            self.suppressed += 1
            return False
        sent_at = time.time()
        self._node.send(can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=False))
        self.sent[kind] += 1
        if kind == "water_temp":
            self._note_water_temp(arbitration_id, data, sent_at)
        return True

    def _note_water_temp(self, arbitration_id: int, data: bytes, sent_at: float) -> None:
        """Keep the send time of the first frame of each value run (a new value starts a run)."""
        try:
            frame = frames.decode(arbitration_id, data)
        except frames.FrameError:
            return
        if frame.sensor is None or frame.value is None:
            return
        entry = self.water_temp.get(frame.sensor)
        if entry is None or entry["value"] != frame.value:
            entry = self.water_temp[frame.sensor] = {
                "value": frame.value, "since": sent_at, "since_sequence": frame.sequence,
            }
        entry["sequence"] = frame.sequence
        entry["sent_at"] = sent_at

    def go_bus_off(self) -> None:
        """Announce the failure with error frames, then fall silent."""
        if self.bus_off or self._node is None:
            return
        for arbitration_id, detail in (
            (CAN_ERR_CRTL, CAN_ERR_CRTL_TX_PASSIVE),
            (CAN_ERR_CRTL, CAN_ERR_CRTL_TX_PASSIVE),
            (CAN_ERR_BUSOFF, 0),
        ):
            data = bytes([0, detail, 0, 0, 0, 0, 0, 0])
            self._node.send(
                can.Message(arbitration_id=arbitration_id, data=data, is_error_frame=True, is_extended_id=False)
            )
            self.sent["error"] += 1
        self.bus_off = True
        log.warning("CAN bus off")

    def recover(self) -> None:
        if self.bus_off:
            self.bus_off = False
            log.info("CAN bus recovered")

    def drain(self) -> int:
        """Consume frames that clients sent to the bus (none are expected)."""
        count = 0
        while self._node is not None and self._node.recv(0) is not None:
            count += 1
        self.received += count
        return count

    def counters(self) -> dict[str, object]:
        return {
            "sent": dict(self.sent),
            "suppressed": self.suppressed,
            "received_from_clients": self.received,
            "clients": self.clients,
            "bus_off": self.bus_off,
            "water_temp": {str(sensor): dict(entry) for sensor, entry in sorted(self.water_temp.items())},
        }

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            for protocol in list(self._server.clients):
                protocol.running = False
                try:
                    protocol.close()
                except OSError:
                    pass
            self._server.server_close()
            self._server = None
        if self._node is not None:
            self._node.shutdown()
            self._node = None
        log.info("CAN server closed at %.3f", time.time())
