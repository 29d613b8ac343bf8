"""The bridge process (`heater worker homekit`): HAP server, feed client, health views, alarms.

A display service (rule 2): after a FATAL it stays up, not ready and read-only, still
showing the feed — the alarm, the latch, the cut-off — so the operator sees what
happened. Its own alarm says when its backend feed is unreachable; it is cleared when the
feed is back. Start-up fails fast (exit 2) when the broker is away, like every service.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError
from pyhap.accessory_driver import AccessoryDriver

from homekit import metrics
from homekit.aids import AidStore
from homekit.bridge import HeaterBridge
from homekit.commands import HeatingCommands
from homekit.config import BridgeSettings
from homekit.feed_client import FeedClient
from homekit.mdns import advertiser
from homekit.pairing import load_or_create, write_bridge_info
from homekit.schema import load_schema
from homekit.snapshot import Snapshot
from streams import exitcodes, kafka_clients, tls
from streams.auth import Role, requires
from streams.alarm_client import AlarmClient
from streams.health import web_app
from streams.heartbeats import beat_forever
from streams.heating.controller import HeatingController, announce_ends
from streams.heating.launch import LaunchError, launcher_for
from streams.latch import LatchView
from streams.lifecycle import Phase, ServiceKind, ServiceSpec, ServiceStatus
from streams.platform_watch import PlatformWatch
from streams.records import Severity
from streams.settings import Settings, SettingsError
from streams.vault import ServiceToken

log = logging.getLogger(__name__)

SPEC = ServiceSpec("homekit", ServiceKind.DISPLAY, description="HomeKit bridge: the Home app as the operator's screen")
#: How long the feed may be away before the bridge raises its alarm (a restart of AlarmsServer is shorter).
BACKEND_ALARM_AFTER_S = 3.0
ALARM_CODE = "backend-unreachable"
ALARM_SEND_TIMEOUT_S = 3.0


class BridgeService:
    """One bridge: its HAP driver, its feed, its view of the latch."""

    def __init__(self, settings: Settings, bridge_settings: BridgeSettings) -> None:
        self.settings = settings
        self.config = bridge_settings
        self.status = ServiceStatus()
        self.web = web_app(SPEC, lambda: self.status)
        self.web.router.add_get("/homekit", self.homekit_view)
        self.snapshot: Snapshot | None = None
        self.feed: FeedClient | None = None
        self.down_since: float | None = time.monotonic()
        self.alarm_raised = False
        self._stop = asyncio.Event()

    # -- what the views show -----------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Where to pair: written to ``bridge.json`` for `heater status`, served on ``/homekit``."""
        driver = getattr(self, "driver", None)
        return {
            "address": self.config.address,
            "advertised_address": self.config.advertised_address,
            "port": self.config.port,
            "setup_code": self.code.pincode,
            "setup_id": self.code.setup_id,
            "setup_uri": driver.accessory.xhm_uri() if driver and driver.accessory else None,
            "paired": bool(driver and driver.state.paired),
            "mdns": self.config.mdns,
            "feed_url": self.config.feed_url,
            "feed_connected": bool(self.feed and self.feed.connected),
            "config_version": driver.state.config_version if driver else None,
            "services": sorted(self.bridge.service_accessories) if getattr(self, "bridge", None) else [],
        }

    @requires(Role.ADMIN)  # it shows the setup code, which lets a new controller pair
    async def homekit_view(self, request: web.Request) -> web.Response:
        return web.json_response(self.info())

    def read_only(self) -> str:
        """Why a phone's write is refused now ("" when it may go to the controller)."""
        if self.status.phase is Phase.HALTED:
            return self.status.reason or "platform latched"
        if self.snapshot is not None and self.snapshot.latched:
            return "platform latched"
        if self.feed is None or not self.feed.connected:
            return "the backend feed is unreachable"
        return ""

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        schema = load_schema(self.config.schema)
        self.code = load_or_create(self.config.state_dir)
        runner = await tls.serve(self.web, self.settings, SPEC.name)
        try:
            await self._connect()
        except (OSError, asyncio.TimeoutError, KafkaError) as exc:
            log.error("homekit: broker %s unreachable at start-up: %s", self.settings.broker_bootstrap, exc)
            await runner.cleanup()
            return exitcodes.DEPENDENCY_MISSING
        try:
            launcher = await launcher_for(self.settings, log_dir=self.settings.run_dir / "logs")
        except (LaunchError, SettingsError) as exc:
            log.error("homekit: cannot run heating jobs: %s", exc)
            await self.watch.stop()
            await self._close_producer()
            await runner.cleanup()
            return exitcodes.DEPENDENCY_MISSING
        controller = HeatingController(launcher, self.watch)
        controller.on_end.append(announce_ends(self._send))
        self.commands = HeatingCommands(controller, launcher, self.read_only, lambda: self.bridge.revert())
        self.driver = hap_driver(self.config, self.code.pincode, loop)
        self.driver.state.setup_id = self.code.setup_id
        self.bridge = HeaterBridge(self.driver, schema, self.commands, AidStore(self.config.state_dir))
        self.driver.add_accessory(self.bridge)
        await self.driver.async_start()
        write_bridge_info(self.config.state_dir, self.info())
        metrics.PAIRED.set(int(self.driver.state.paired))
        log.info("HomeKit bridge on %s:%d, announced as %s (setup code %s, %s)", self.config.address, self.config.port,
                 self.config.advertised_address, self.code.pincode,
                 "paired" if self.driver.state.paired else "not paired yet")
        self.watch.on_change.append(self._on_latch)
        self.watch.run_in_background()
        self._settle_phase()
        own_tls = self.web.get(tls.TLS)
        self.feed = FeedClient(self.config.feed_url, self._on_state, self._on_down, ServiceToken(self.settings),
                               ssl=own_tls.client if own_tls else None)
        tasks = [asyncio.ensure_future(self.feed.run()), asyncio.ensure_future(self._watch_backend()),
                 asyncio.ensure_future(self._beat())]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.commands.close()
        await self.driver.async_stop()
        await self.watch.stop()
        await self._close_producer()
        await runner.cleanup()
        return exitcodes.DONE

    async def _connect(self) -> None:
        bootstrap = self.settings.broker_bootstrap
        self.producer = kafka_clients.producer(bootstrap, settings=self.settings, linger_ms=2, request_timeout_ms=10_000)
        await asyncio.wait_for(self.producer.start(), 15)
        self.watch = PlatformWatch(bootstrap, SPEC.name)
        await self.watch.start()
        self.alarms = AlarmClient(SPEC.name, self._send, self.watch)
        await self.alarms.clear_own_on_startup()

    async def _send(self, topic: str, key: bytes, value: bytes) -> None:
        await self.producer.send_and_wait(topic, value, key=key)

    async def _beat(self) -> None:
        """Heartbeats like every service's, so the registry knows the bridge runs (it decides no readings: 0)."""
        async def send(topic: str, key: bytes, value: bytes) -> object:
            return await self.producer.send(topic, value, key=key)

        await beat_forever(send, SPEC.name, lambda: self.status.phase, lambda: 0.0, self.settings.service_identity)

    async def _close_producer(self) -> None:
        try:
            await asyncio.wait_for(self.producer.stop(), 5)
        except (asyncio.TimeoutError, KafkaError):
            log.warning("homekit: producer did not flush on stop")

    # -- the feed and the latch ----------------------------------------------------------

    def _on_state(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.down_since = None
        metrics.FEED_CONNECTED.set(1)
        metrics.FEED_STATES.inc()
        self.bridge.show(snapshot)
        self._settle_phase()

    def _on_down(self, reason: str) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            metrics.FEED_LOSSES.inc()
        metrics.FEED_CONNECTED.set(0)
        self.bridge.lose_backend()

    async def _watch_backend(self) -> None:
        """Raise the bridge's alarm while the feed stays away; clear it once the feed is back."""
        while True:
            await asyncio.sleep(0.5)
            away = self.down_since is not None and time.monotonic() - self.down_since > BACKEND_ALARM_AFTER_S
            try:
                if away and not self.alarm_raised:
                    await asyncio.wait_for(self.alarms.raise_alarm(
                        ALARM_CODE, Severity.WARNING, f"HomeKit bridge cannot reach its backend {self.config.feed_url}"),
                        ALARM_SEND_TIMEOUT_S)
                    self.alarm_raised = True
                elif self.alarm_raised and self.down_since is None:
                    await asyncio.wait_for(self.alarms.clear_alarm(ALARM_CODE, reason="feed is back"), ALARM_SEND_TIMEOUT_S)
                    self.alarm_raised = False
            except (asyncio.TimeoutError, KafkaError, OSError) as exc:
                log.error("homekit: cannot send its backend alarm (%r); the fault stays shown on every accessory", exc)

    async def _on_latch(self, latch: LatchView) -> None:
        self._settle_phase()

    def _settle_phase(self) -> None:
        """Halted (read-only, still showing) while either view of the latch holds; ready once the feed has shown state."""
        latched = self.watch.latch.latched or (self.snapshot is not None and self.snapshot.latched)
        if latched:
            self.status.halt(SPEC.name, self.watch.latch.reason or "platform latched (as AlarmsServer shows it)")
        elif self.snapshot is not None and self.status.phase in (Phase.STARTING, Phase.HALTED):
            if self.status.phase is Phase.HALTED:
                log.warning("homekit: latch released by %s; writes accepted again", self.watch.latch.released_by)
            self.status.mark_ready(SPEC.name)


def hap_driver(config: BridgeSettings, pincode: str, loop: asyncio.AbstractEventLoop) -> AccessoryDriver:
    """HAP-python's driver: it listens on ``address`` and announces ``advertised_address`` (see homekit.config)."""
    return AccessoryDriver(
        loop=loop, address=config.advertised_address, listen_address=config.address, port=config.port,
        persist_file=str(config.persist_file), pincode=pincode.encode(), async_zeroconf_instance=advertiser(config.mdns),
    )


def main() -> int:
    """Run the bridge until SIGTERM; the process exit code."""
    return asyncio.run(BridgeService(Settings.from_env(), BridgeSettings.from_env()).run())
