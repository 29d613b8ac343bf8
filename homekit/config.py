"""Where the bridge listens, where its feed is, where it keeps its pairing: from the environment.

Each setting has a ``HEATER_HOMEKIT_*`` variable; without one, the local platform's
address book (``platform.json`` in ``$HEATER_RUN_DIR``) supplies the ports, so `heater up`
needs no extra wiring. Everything defaults to 127.0.0.1 and mDNS off: no multicast
leaves a development machine.

The bridge listens on ``ADDRESS`` and tells phones (over mDNS) to connect to
``ADVERTISED_ADDRESS``; they differ where the bridge binds every interface (``0.0.0.0``),
which no phone can connect to. On the Pi the bridge runs in the node's network (a pod
address is not reachable from the LAN, and mDNS multicast does not leave the pod
network), and the Deployment passes the node's address as the advertised one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from homekit.schema import DEFAULT_SCHEMA
from streams.homekit_feed import FEED_PATH
from streams.settings import SettingsError

#: The bridge's HAP port in the local platform's address book.
HAP_PORT_NAME = "homekit-hap"
MDNS_MODES = ("off", "loopback", "all")
DEFAULT_HAP_PORT = 51826
#: Bind-everywhere addresses: fine to listen on, never an address to announce.
UNSPECIFIED = ("0.0.0.0", "::")


@dataclass(frozen=True)
class BridgeSettings:
    address: str
    port: int
    #: The address announced over mDNS, the one a phone connects to (default: ``address``).
    advertised_address: str
    feed_url: str
    state_dir: Path
    schema: Path
    mdns: str

    @property
    def persist_file(self) -> Path:
        """HAP-python's state: the bridge's keys and its paired controllers (pairing survives restarts)."""
        return self.state_dir / "accessory.state"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "BridgeSettings":
        env = os.environ if env is None else env
        run_dir = Path(env.get("HEATER_RUN_DIR", ".run"))
        ports = _address_book(run_dir)
        try:
            port = int(env.get("HEATER_HOMEKIT_PORT") or ports.get(HAP_PORT_NAME, DEFAULT_HAP_PORT))
        except ValueError as exc:
            raise SettingsError(f"HEATER_HOMEKIT_PORT must be an integer: {exc}") from None
        feed_url = env.get("HEATER_HOMEKIT_FEED_URL")
        if not feed_url:
            if "alarms" not in ports:
                raise SettingsError("HEATER_HOMEKIT_FEED_URL is not set and no platform.json names AlarmsServer's port")
            scheme = "ws" if env.get("HEATER_TLS") == "off" else "wss"  # AlarmsServer's API: mTLS unless off
            feed_url = f"{scheme}://127.0.0.1:{ports['alarms']}{FEED_PATH}"
        mdns = env.get("HEATER_HOMEKIT_MDNS", "off")
        if mdns not in MDNS_MODES:
            raise SettingsError(f"HEATER_HOMEKIT_MDNS={mdns!r}: expected one of {', '.join(MDNS_MODES)}")
        address = env.get("HEATER_HOMEKIT_ADDRESS", "127.0.0.1")
        advertised = env.get("HEATER_HOMEKIT_ADVERTISED_ADDRESS") or address
        if mdns != "off" and advertised in UNSPECIFIED:
            raise SettingsError(f"HEATER_HOMEKIT_MDNS={mdns} would announce {advertised}, which no phone can connect to: "
                                "set HEATER_HOMEKIT_ADVERTISED_ADDRESS to the bridge's address on the LAN")
        return cls(
            address=address,
            port=port,
            advertised_address=advertised,
            feed_url=feed_url,
            state_dir=Path(env.get("HEATER_HOMEKIT_STATE_DIR") or run_dir / "homekit"),
            schema=Path(env.get("HEATER_HOMEKIT_SCHEMA") or DEFAULT_SCHEMA),
            mdns=mdns,
        )


def _address_book(run_dir: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads((run_dir / "platform.json").read_text())["ports"].items()}
    except (OSError, ValueError, KeyError):
        return {}
