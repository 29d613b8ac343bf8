"""Production discovery: the platform's pods, asked of a Kubernetes API server (a fake that answers like one)."""

from __future__ import annotations

from typing import AsyncIterator

import pytest
import pytest_asyncio

from streams.discovery import PART_OF_LABEL, DiscoveryUnavailable, KubernetesDiscovery
from tests.fake_kubernetes import NAMESPACE, FakeApiServer, api_client, serving

pytestmark = pytest.mark.timeout(60)

PART_OF = dict([PART_OF_LABEL.split("=", 1)])


@pytest_asyncio.fixture(loop_scope="function")
async def server() -> AsyncIterator[tuple[FakeApiServer, str]]:
    async with serving() as running:
        yield running


async def test_running_and_pending_pods_of_the_platform_are_expected(server: tuple[FakeApiServer, str]) -> None:
    fake, host = server
    fake.add_pod("bank-7d9f", {**PART_OF, "app.kubernetes.io/name": "bank"})
    fake.add_pod("alarms-5c2a", {**PART_OF, "app.kubernetes.io/name": "alarms"}, phase="Pending")
    fake.add_pod("disaster-old", {**PART_OF, "app.kubernetes.io/name": "disaster"}, phase="Failed")
    fake.add_pod("can-going", {**PART_OF, "app.kubernetes.io/name": "can"}, deleting=True)
    fake.add_pod("someone-else", {"app.kubernetes.io/name": "grafana"})
    fake.add_pod("other-ns", {**PART_OF, "app.kubernetes.io/name": "i2c"}, ns="elsewhere")
    async with api_client(host) as api:
        assert await KubernetesDiscovery(NAMESPACE, api).expected() == {"bank", "alarms"}


async def test_an_api_server_that_refuses_is_a_clear_error(server: tuple[FakeApiServer, str]) -> None:
    _, host = server
    async with api_client(host, token="wrong") as api:
        with pytest.raises(DiscoveryUnavailable, match=f"refused to list pods in namespace {NAMESPACE}: 401"):
            await KubernetesDiscovery(NAMESPACE, api).expected()


async def test_an_unreachable_api_server_is_a_clear_error() -> None:
    async with api_client("http://127.0.0.1:9") as api:
        with pytest.raises(DiscoveryUnavailable, match="did not answer"):
            await KubernetesDiscovery(NAMESPACE, api).expected()
