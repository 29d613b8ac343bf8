"""A broker of its own, AlarmsServer and the bridge as real processes, and a paired Home app.

The broker is this package's own (the session broker's FATAL alarms would latch every
later test): the tests here end by raising a FATAL. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from heater.runtime.broker import EmbeddedBroker, create_topics
from heater.runtime.processes import free_port
from heater.runtime.vault import EmbeddedVault
from streams.homekit_feed import FEED_PATH
from streams.topics import TopicSpec
from streams.topology import BY_NAME
from tests.support import ServiceProcess


@pytest.fixture(scope="module")
def hk_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("homekit")


@pytest.fixture(scope="module")
def hk_broker(hk_dir: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(hk_dir / "broker") as running:
        yield running


@pytest.fixture(scope="module")
def alarms(hk_broker: EmbeddedBroker, vault: EmbeddedVault, hk_dir: Path) -> Iterator[ServiceProcess]:
    # The tests play StateRegistry and ExceptionsServer at what the feed reads of them, their
    # changelogs; those exist before AlarmsServer starts, as on a running platform.
    create_topics(hk_broker.bootstrap, [TopicSpec(name, compacted=True) for name in BY_NAME["alarms"].follows])
    service = ServiceProcess("alarms", hk_broker.url, hk_dir / "alarms", vault=vault).start()
    service.wait_ready(60)
    yield service
    service.stop()


class BridgeProcess(ServiceProcess):
    """The bridge (`heater worker homekit`) with its HAP port and its state directory."""

    def __init__(self, broker_url: str, run_dir: Path, feed_url: str, vault: EmbeddedVault) -> None:
        """``vault``: where the bridge gets its own token for the feed, and the keys it verifies callers with."""
        self.hap_port = free_port()
        self.state_dir = run_dir / "homekit"
        super().__init__("homekit", broker_url, run_dir, {
            "HEATER_HOMEKIT_PORT": str(self.hap_port),
            "HEATER_HOMEKIT_FEED_URL": feed_url,
            "HEATER_HOMEKIT_STATE_DIR": str(self.state_dir),
            "HEATER_HOMEKIT_MDNS": "off",
        }, vault=vault)


@pytest.fixture(scope="module")
def bridge(hk_broker: EmbeddedBroker, alarms: ServiceProcess, hk_dir: Path, vault: EmbeddedVault) -> Iterator[BridgeProcess]:
    feed = alarms.url.replace("http", "ws", 1) + FEED_PATH  # wss: the API with mTLS
    process = BridgeProcess(hk_broker.url, hk_dir / "bridge", feed, vault).start()
    process.wait_ready(60)
    yield process
    process.stop()
