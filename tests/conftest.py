"""Session-scoped real broker and Vault for integration tests; pure tests need neither."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

import pytest

from heater.runtime.broker import EmbeddedBroker
from heater.runtime.vault import EmbeddedVault


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("heater-run")


@pytest.fixture(scope="session")
def broker(session_dir: Path) -> Iterator[EmbeddedBroker]:
    """One embedded Kafka-protocol broker for the whole test session, topics created."""
    with EmbeddedBroker(session_dir / "broker") as running:
        yield running


@pytest.fixture(scope="session")
def vault(session_dir: Path) -> Iterator[EmbeddedVault]:
    """One OpenBao dev server for the whole test session, provisioned like the platform's."""
    with EmbeddedVault(session_dir / "vault") as running:
        yield running


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A fresh run directory (data, logs) for the services of one test."""
    return tmp_path


@pytest.fixture
def own_broker(run_dir: Path) -> Iterator[EmbeddedBroker]:
    """A broker of the test's own: its topics start empty (a count is exact) and the test may stop it."""
    with EmbeddedBroker(run_dir / "broker") as running:
        yield running


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the async entry points of the modules that use it (hypothesis runs sync
    examples). One for the session: the services' Faust apps are module singletons, and an
    aiohttp application serves only on the loop it first served on."""
    running = asyncio.new_event_loop()
    yield running
    running.close()
