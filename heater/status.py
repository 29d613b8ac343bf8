"""`heater status`: every component's state (ready / halted / starting / down / exited)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from heater.catalogue import COMPONENTS
from heater.credentials import bearer_or_none
from heater.probes import DOWN, READY, http_json, probe
from heater.rundir import Layout
from heater.supervision import Supervisor
from streams.auth import Role


def collect(run_dir: Path) -> dict[str, Any]:
    """The platform's state as a JSON-able dict; ``ok`` is true when everything is ready."""
    try:
        layout = Layout.load(run_dir)
    except FileNotFoundError:
        return {"ok": False, "run_dir": str(run_dir), "error": "no platform was started in this run directory"}
    supervisor = Supervisor(layout)
    processes = supervisor.all_info() if supervisor.running() else {}
    components = []
    for component in COMPONENTS:
        info = processes.get(component.name, {})
        seen = probe(layout, component) if info.get("statename") == "RUNNING" else None
        state = seen.state if seen else _exited_state(info)
        components.append(
            {
                "name": component.name,
                "kind": component.kind,
                "state": state,
                "process": info.get("statename", "UNKNOWN"),
                "pid": info.get("pid") or None,
                "exit_code": info.get("exitstatus") if info.get("statename") == "EXITED" else None,
                "port": layout.ports.get(component.name),
                "detail": seen.detail if seen else info.get("description", ""),
            }
        )
    return {
        "ok": bool(components) and all(c["state"] == READY for c in components),
        "run_dir": str(layout.run_dir),
        "supervisor": bool(processes),
        "components": components,
        "homekit": homekit_info(layout, running=processes.get("homekit", {}).get("statename") == "RUNNING"),
    }


def homekit_info(layout: Layout, running: bool) -> dict[str, Any] | None:
    """Where to pair the Home app: address, port, setup code (from the bridge, or as it last wrote them)."""
    from homekit.pairing import read_bridge_info

    token = bearer_or_none(layout.run_dir, Role.ADMIN)  # the live view shows the setup code: admin only
    if running and "homekit" in layout.ports and token is not None:
        try:
            status, live = http_json(layout.web_url("homekit") + "/homekit", token=token)
            if status == 200:
                return {**live, "live": True}
        except (OSError, ValueError):
            pass
    written = read_bridge_info(layout.run_dir / "homekit")
    return None if written is None else {**written, "live": False}


def _exited_state(info: dict[str, Any]) -> str:
    if info.get("statename") == "EXITED" and info.get("exitstatus") == 3:
        return "stayed-down"
    return DOWN if not info else info["statename"].lower()


def render(report: dict[str, Any]) -> str:
    if "error" in report:
        return f"{report['run_dir']}: {report['error']}"
    lines = [f"platform in {report['run_dir']}: {'READY' if report['ok'] else 'NOT READY'}"]
    for c in report["components"]:
        pid = c["pid"] or "-"
        lines.append(f"  {c['name']:<12} {c['state']:<12} pid {pid!s:<8} port {c['port']!s:<6} {c['detail']}")
    if report.get("homekit"):
        hk = report["homekit"]
        pairing = ("paired" if hk.get("paired") else "not paired") if hk.get("live") else "bridge not running"
        lines.append(f"  HomeKit bridge {hk['address']}:{hk['port']} setup code {hk['setup_code']} ({pairing})")
    return "\n".join(lines)


def main(run_dir: Path, as_json: bool) -> int:
    report = collect(run_dir)
    print(json.dumps(report, indent=2) if as_json else render(report))
    return 0 if report["ok"] else 1
