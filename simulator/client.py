"""Typed helpers for the simulator's control API (stdlib only).

Benches, tests and the ``sim`` CLI call these; nothing here needs the
simulator's own dependencies, so importing it is cheap anywhere.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
DEFAULT_TIMEOUT_S = 2.0
READY_MARKER = "simulator.json"


class SimulatorError(RuntimeError):
    """The control API refused a request or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _call(port: int, method: str, path: str, body: dict[str, Any] | None = None,
          timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}", data=data, method=method,
        headers={"Content-Type": "application/json"} if data is not None else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            reason = exc.reason
        raise SimulatorError(f"{method} {path}: {reason}", exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        raise SimulatorError(f"simulator control API on port {port} unreachable: {exc}") from None


def get_state(port: int) -> dict[str, Any]:
    """The full hardware state (see ``GET /state``)."""
    return _call(port, "GET", "/state")


def healthy(port: int) -> bool:
    """True once the CAN server, the Pico and the control API all listen."""
    try:
        return bool(_call(port, "GET", "/healthz", timeout=0.5).get("ok"))
    except SimulatorError:
        return False


def wait_ready(port: int, timeout: float = 10.0) -> None:
    """Block until :func:`healthy`, or raise :class:`SimulatorError`."""
    deadline = time.monotonic() + timeout
    while not healthy(port):
        if time.monotonic() > deadline:
            raise SimulatorError(f"simulator on port {port} not ready after {timeout} s")
        time.sleep(0.05)


def read_marker(run_dir: str | Path) -> dict[str, Any] | None:
    """The readiness marker of a simulator run directory (ports, urls, pid), if present."""
    try:
        return json.loads((Path(run_dir) / READY_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def inject(port: int, fault: str, sensor: int | None = None, **params: float) -> dict[str, Any]:
    """Activate ``fault`` (e.g. ``"stuck_sensor"`` with ``sensor=1``, or ``"overtemp"`` with ``value=95``)."""
    body: dict[str, Any] = {"fault": fault, **params}
    if sensor is not None:
        body["sensor"] = sensor
    return _call(port, "POST", "/inject", body)["injected"]


def clear(port: int, fault: str | None = None, sensor: int | None = None) -> list[dict[str, Any]]:
    """Remove ``fault`` (for ``sensor`` only, if given), or every fault; returns what went."""
    body: dict[str, Any] = {}
    if fault is not None:
        body["fault"] = fault
    if sensor is not None:
        body["sensor"] = sensor
    return _call(port, "POST", "/clear", body)["cleared"]


def set_temperature(port: int, value: float) -> dict[str, Any]:
    """Set the water temperature (one-shot)."""
    return inject(port, "set_temperature", value=value)


def burst(port: int, count: int, rate: float = 9000.0, sensor: int = 0,
          wait: bool = False, timeout: float = 60.0) -> dict[str, Any]:
    """Start a burst of ``count`` WaterTemp frames; with ``wait``, return its final record.

    The record has ``first_sequence``/``last_sequence`` (modulo 65536) and the
    wall-clock ``started_at``/``finished_at`` of the sending.
    """
    record = _call(port, "POST", "/burst", {"count": count, "rate": rate, "sensor": sensor})["burst"]
    if not wait:
        return record
    deadline = time.monotonic() + timeout
    while True:
        current = get_state(port)["burst"]
        if current is not None and not current["running"]:
            return current
        if time.monotonic() > deadline:
            raise SimulatorError(f"burst not finished after {timeout} s")
        time.sleep(0.05)
