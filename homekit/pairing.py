"""The bridge's setup code and what `heater up` and `heater status` show about pairing.

HAP-python keeps the pairings in its state file but draws a new setup code and setup id
at every start; here both are drawn once and kept (mode 0600) beside that file, so the
code printed by `heater up` and reported by `heater status --json` stays the one to use.
``bridge.json`` says where the bridge listens; it is written at each start.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyhap import util

SETUP_FILE = "setup.json"
BRIDGE_FILE = "bridge.json"


@dataclass(frozen=True)
class SetupCode:
    pincode: str
    setup_id: str


def load_or_create(state_dir: Path) -> SetupCode:
    """The setup code kept in ``state_dir``, drawn once."""
    path = state_dir / SETUP_FILE
    try:
        data = json.loads(path.read_text())
        return SetupCode(str(data["pincode"]), str(data["setup_id"]))
    except (OSError, ValueError, KeyError):
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    code = SetupCode(util.generate_pincode().decode(), util.generate_setup_id())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(code), out)
    return code


def write_bridge_info(state_dir: Path, info: dict[str, Any]) -> None:
    path = state_dir / BRIDGE_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(info, out, indent=2)


def read_bridge_info(state_dir: Path) -> dict[str, Any] | None:
    """What the bridge wrote at its last start (None if it never started here)."""
    try:
        return json.loads((state_dir / BRIDGE_FILE).read_text())
    except (OSError, ValueError):
        return None


def render(info: dict[str, Any], qr: bool = True) -> str:
    """The pairing text for a terminal: address, setup code and, when it can be drawn, a QR code."""
    lines = [f"HomeKit bridge {info['address']}:{info['port']} — setup code {info['setup_code']}"]
    if info.get("paired"):
        lines.append("  (already paired; the code is needed only to pair another controller)")
    if qr and info.get("setup_uri"):
        try:
            from pyqrcode import QRCode

            lines.append(QRCode(info["setup_uri"]).terminal(quiet_zone=1))
        except ImportError:
            pass
        lines.append(f"  setup payload {info['setup_uri']}")
    return "\n".join(lines)
