"""Listening ports of the local platform: every server gets a port no other one is given."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator

import pytest

from heater.rundir import Layout
from heater.runtime import processes
from heater.runtime.processes import free_ports, port_open
from heater.runtime.vault import EmbeddedVault


@pytest.fixture
def drawn_in_order(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The draw tries consecutive ports from a free stretch of the range, in order."""
    start = free_ports(1)[0] // 100 * 100 - 300  # a stretch away from the port just freed
    monkeypatch.setattr(processes.random, "sample", lambda population, k: list(range(start, start + k)))
    yield start


def _listening(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_port_promised_to_a_server_not_started_yet_is_not_drawn(drawn_in_order: int) -> None:
    first = drawn_in_order
    assert free_ports(2, avoid={first, first + 2}) == [first + 1, first + 3]


def test_a_port_in_use_is_not_drawn(drawn_in_order: int) -> None:
    first = drawn_in_order
    with _listening(first + 1):
        assert free_ports(2) == [first, first + 2]


def test_a_port_that_needs_the_next_one_free_leaves_it_to_nobody(drawn_in_order: int) -> None:
    first = drawn_in_order
    assert free_ports(3, next_free={0}) == [first, first + 2, first + 3]
    with _listening(first + 1):  # the next port of the first candidate is taken: the first is not drawn
        assert free_ports(2, next_free={0}) == [first + 2, first + 4]


def test_vaults_cluster_port_is_given_to_no_service_of_the_platform(tmp_path: Path, drawn_in_order: int) -> None:
    ports = Layout.allocate(tmp_path).ports  # drawn in order: the port after Vault's is the next candidate
    others = {port for name, port in ports.items() if name != "vault"}
    assert ports["vault"] + 1 not in others
    assert len(others) == len(ports) - 1


def test_vault_listens_on_the_port_after_its_own(tmp_path: Path) -> None:
    """Why Vault's port needs the next one free: OpenBao's dev server holds it for its cluster."""
    with EmbeddedVault(tmp_path) as vault:
        assert port_open(vault.port + 1)
