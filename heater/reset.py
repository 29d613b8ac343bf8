"""`heater reset --operator NAME`: the operator's way out of a FATAL latch, locally.

Asks AlarmsServer for a signed one-time reset, waits until the latch is released,
then starts again the control services that stayed down (exit code 3). Services that
came up halted restart by themselves once they see the release.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from heater.catalogue import COMPONENTS
from heater.probes import http_json
from heater.rundir import Layout
from heater.supervision import Supervisor


def post(url: str, body: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def main(run_dir: Path, operator: str, timeout: float = 30.0) -> int:
    layout = Layout.load(run_dir)
    alarms = layout.web_url("alarms")
    status, body = post(alarms + "/reset", {"operator": operator})
    if status != 202:
        print(f"reset refused ({status}): {body.get('error', body)}")
        return 1
    print(f"reset {body['reset_id']} issued by {operator}; waiting for the latch to be released...")
    deadline = time.monotonic() + timeout
    while http_json(alarms + "/latch")[1].get("latched"):
        if time.monotonic() > deadline:
            print("the latch was not released: see the alarms log and `heater status`")
            return 1
        time.sleep(0.2)
    supervisor = Supervisor(layout)
    processes = supervisor.all_info() if supervisor.running() else {}
    stayed_down = [c.name for c in COMPONENTS if processes.get(c.name, {}).get("exitstatus") == 3
                   and processes[c.name]["statename"] == "EXITED"]
    for name in stayed_down:
        supervisor.start(name)
    print(f"latch released; restarted: {', '.join(stayed_down) or 'nothing (no service stayed down)'}")
    return 0
