"""Is a component up, ready, halted? One probe per kind, shared by `heater up` and `status`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from heater.catalogue import Component
from heater.rundir import Layout
from heater.runtime.broker import broker_ready
from heater.runtime.vault import vault_ready
from streams.tls import client_context_for
from streams.topics import ALL_TOPICS

READY = "ready"
HALTED = "halted"
STARTING = "starting"
DOWN = "down"


@dataclass
class Probe:
    """What one look at a component found."""

    name: str
    state: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def http_json(url: str, timeout: float = 1.0, token: str | None = None) -> tuple[int, dict[str, Any]]:
    """GET ``url`` (with a bearer ``token`` when given); return (status, JSON body) also for 4xx/5xx answers.

    An ``https`` URL is called with this process's client certificate for it (:func:`streams.tls.client_context_for`).
    """
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    return _exchange(request, timeout)


def post_json(url: str, body: dict[str, Any], timeout: float = 5.0, token: str | None = None) -> tuple[int, Any]:
    """POST a JSON body (with a bearer ``token`` when given); return (status, JSON answer) also for 4xx/5xx answers."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    return _exchange(urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers), timeout)


def _exchange(request: urllib.request.Request, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=client_context_for(request.full_url)) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read() or b"{}")
        except ValueError:
            return err.code, {}


def probe(layout: Layout, component: Component) -> Probe:
    try:
        if component.name == "broker":
            ok = broker_ready(layout.broker_bootstrap, timeout=1.0, topics=(t.name for t in ALL_TOPICS))
            return Probe(component.name, READY if ok else DOWN, layout.broker_bootstrap)
        if component.name == "vault":
            token = layout.vault_token_file.read_text().strip()
            ok = vault_ready(layout.vault_addr, token)
            return Probe(component.name, READY if ok else STARTING, layout.vault_addr)
        if component.kind == "hardware":
            from simulator.client import healthy

            ok = healthy(layout.ports[component.name])
            return Probe(component.name, READY if ok else STARTING, f"control 127.0.0.1:{layout.ports[component.name]}")
        if component.has_web:
            status, body = http_json(layout.probe_url(component.name) + "/readyz")
            if status == 200:
                return Probe(component.name, READY, f"ready in {body.get('ready_s')} s")
            phase = body.get("phase", STARTING)
            return Probe(component.name, HALTED if phase == HALTED else STARTING, body.get("reason", ""))
    except (OSError, ValueError) as exc:
        return Probe(component.name, DOWN, str(exc)[:200])
    return Probe(component.name, DOWN, "no probe for this component")
