"""Service discovery: which services should be running now.

StateRegistry compares this with the heartbeats it receives. Locally the answer comes from
the process manager (supervisord, over its unix socket): a program it runs, starts or is
restarting should beat; one that exited on purpose (done, or down after a FATAL) need not.
Under Kubernetes it comes from the API server: the platform's pods (by label) that are
pending or running. Both calls block, so they run in a thread with a timeout.
"""

from __future__ import annotations

import asyncio
import xmlrpc.client
from http.client import HTTPException
from pathlib import Path
from typing import Any, Protocol

from streams.settings import Settings

TIMEOUT_S = 3.0
#: supervisord states of a program that is meant to be up.
EXPECTED_STATES = frozenset({"STARTING", "RUNNING", "BACKOFF", "STOPPING"})
#: Kubernetes labels of the platform's pods.
PART_OF_LABEL = "app.kubernetes.io/part-of=heater"
NAME_LABEL = "app.kubernetes.io/name"


class DiscoveryUnavailable(RuntimeError):
    """Discovery could not answer; the message says which source and why."""


class Discovery(Protocol):
    async def expected(self) -> set[str]:
        """Names of the services that should be running (and beating) now."""


def supervisor_rpc(socket: Path) -> Any:
    """A fresh XML-RPC proxy to supervisord per call: a failed request leaves the transport unusable."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, serverurl=f"unix://{socket}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


class ProcessManagerDiscovery:
    """The local platform: supervisord's programs that are meant to be up."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def _expected(self) -> set[str]:
        return {p["name"] for p in supervisor_rpc(self.socket).getAllProcessInfo() if p["statename"] in EXPECTED_STATES}

    async def expected(self) -> set[str]:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._expected), TIMEOUT_S)
        except (OSError, HTTPException, xmlrpc.client.Error, asyncio.TimeoutError) as exc:
            raise DiscoveryUnavailable(f"process manager at {self.socket} did not answer: {exc!r}") from None


class KubernetesDiscovery:
    """Production: the platform's pods, by label, that are pending or running (the official asyncio client)."""

    def __init__(self, namespace: str, api: Any | None = None) -> None:
        self.namespace = namespace
        self._api = api

    async def _core(self) -> Any:
        from kubernetes.aio import client, config

        if self._api is None:
            config.load_incluster_config()
            self._api = client.ApiClient()
        return client.CoreV1Api(self._api)

    async def expected(self) -> set[str]:
        from kubernetes.aio.client.exceptions import ApiException

        try:
            core = await self._core()
            pods = await asyncio.wait_for(
                core.list_namespaced_pod(self.namespace, label_selector=PART_OF_LABEL), TIMEOUT_S + 1
            )
        except ApiException as exc:
            raise DiscoveryUnavailable(
                f"Kubernetes API refused to list pods in namespace {self.namespace}: {exc.status} {exc.reason}"
            ) from None
        except Exception as exc:  # connection, timeout and in-cluster configuration errors alike
            raise DiscoveryUnavailable(f"Kubernetes API (namespace {self.namespace}) did not answer: {exc!r}") from None
        return {
            pod.metadata.labels[NAME_LABEL]
            for pod in pods.items
            if pod.status.phase in ("Pending", "Running") and NAME_LABEL in (pod.metadata.labels or {})
            and pod.metadata.deletion_timestamp is None
        }


def discovery_for(settings: Settings) -> Discovery:
    """The local process manager in the local profile, the Kubernetes API in production."""
    if settings.profile == "local":
        return ProcessManagerDiscovery(settings.run_dir / "supervisor.sock")
    return KubernetesDiscovery(settings.namespace)


__all__ = ["Discovery", "DiscoveryUnavailable", "KubernetesDiscovery", "ProcessManagerDiscovery", "discovery_for", "supervisor_rpc"]
