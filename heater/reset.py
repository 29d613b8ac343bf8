"""`heater reset`: the operator's way out of a FATAL latch, locally.

It needs an API token with the operator role (`heater login --role operator`; ``--operator
NAME`` logs in as NAME on the local platform first). AlarmsServer records the token's
name as the operator, in the reset and in the alarm history.

Waits until the control services have stopped or halted (so none is missed on the
way down), shows the FATAL occurrences that latch and the Pico's trip count, asks
AlarmsServer for a signed one-time reset naming exactly those (refused if the latch
changed in between: the operator looks again), waits until the latch is released, then
starts again the control services that stayed down (exit code 3), the edge adapters once the
services that join a consumer group have loaded their modules. Services that came up halted
start by themselves once they see the release.
"""

from __future__ import annotations

import time
from pathlib import Path

from heater import credentials
from heater.catalogue import BY_NAME, COMPONENTS
from heater.probes import DOWN, HALTED, READY, http_json, post_json, probe
from heater.rundir import Layout
from heater.supervision import Supervisor
from streams import topology
from streams.auth import Role
from streams.vault import VaultUnavailable


def at_rest(layout: Layout, supervisor: Supervisor) -> list[str]:
    """Control services still acting on the FATAL (neither stayed down nor halted)."""
    processes = supervisor.all_info() if supervisor.running() else {}
    busy = []
    for component in COMPONENTS:
        if not component.control or component.name not in processes:
            continue
        if processes[component.name]["statename"] in ("EXITED", "STOPPED", "FATAL"):
            continue
        if probe(layout, component).state != HALTED:
            busy.append(component.name)
    return busy


def latched(alarms: str, token: str) -> bool | None:
    """The latch as AlarmsServer shows it; None while it does not answer."""
    try:
        return bool(http_json(alarms + "/latch", timeout=3.0, token=token)[1].get("latched"))
    except OSError:
        return None


def main(run_dir: Path, operator: str | None = None, timeout: float = 30.0) -> int:
    """Reset as the saved login (an operator's), or as ``operator`` logged in on the local platform first."""
    try:
        if operator is not None:
            credentials.login(run_dir, Role.OPERATOR, operator)
        token = credentials.bearer(run_dir, Role.OPERATOR)
    except (credentials.NotLoggedIn, VaultUnavailable, OSError) as exc:
        print(f"reset refused: {exc}")
        return 1
    layout = Layout.load(run_dir)
    alarms = layout.web_url("alarms")
    supervisor = Supervisor(layout)
    # A reset issued while services are still on their way down would find nothing to
    # restart, and they would stay down: let the platform come to rest first.
    deadline = time.monotonic() + timeout
    while busy := at_rest(layout, supervisor):
        if latched(alarms, token) is False or time.monotonic() > deadline:
            break
        print(f"waiting for {', '.join(busy)} to stop or halt...", flush=True)
        time.sleep(0.5)
    shown = http_json(alarms + "/latch", timeout=5.0, token=token)[1]
    occurrences = shown.get("occurrences") or {}
    print(f"the latch, as AlarmsServer shows it (Pico trip count {shown.get('trip_count')}):")
    for key, occurrence in sorted(occurrences.items(), key=lambda item: item[1].get("raised_at", 0.0)):
        print(f"  {key}: {occurrence.get('reason', '')}")
    status, body = post_json(alarms + "/reset", {"occurrences": sorted(occurrences), "trip_count": shown.get("trip_count")},
                             timeout=10, token=token)
    if status != 202:
        print(f"reset refused ({status}): {body.get('error', body)}")
        return 1
    print(f"reset {body['reset_id']} issued by {body['operator']} releases {len(body['occurrences'])} FATAL occurrence(s) "
          f"and Pico trip {body['trip_count']}; waiting for the latch to be released...")
    deadline = time.monotonic() + timeout
    while latched(alarms, token) is not False:
        if time.monotonic() > deadline:
            print("the latch was not released: see the alarms log and `heater status`")
            return 1
        time.sleep(POLL_S)
    restarted = restart_stayed_down(layout, supervisor, time.monotonic() + EXIT_GRACE_S)
    print(f"latch released; restarted: {', '.join(restarted) or 'nothing (no service stayed down)'}")
    return 0


#: How often the release and the services are looked at: each look is one local request, and
#: the control services are started again only once the release is seen.
POLL_S = 0.05
#: How long a control service halted by the FATAL may still take to exit after the release.
EXIT_GRACE_S = 20.0
#: The longest the edge adapters wait for the group members started before them to answer
#: (see :func:`members_importing`). Measured on two cores, three Faust services and the two
#: adapters restarted together: all ready 3.1–3.2 s after the start with the adapters 0.6 s
#: later, 2.3 s with the adapters started when the members answer (about 1.2 s later).
EDGE_WAIT_MAX_S = 2.0


def restart_stayed_down(layout: Layout, supervisor: Supervisor, deadline: float) -> list[str]:
    """Start every control service that stayed down, including those still on their way down.

    A service halted by a live FATAL runs its shutdown before it exits with the stay-down
    code, and late in that shutdown its web server is already closed while the process
    still runs; a reset released meanwhile must still start it, or it stays down for good.
    So the wait lasts while any control service runs without being ready — halted, or
    answering nothing — not only while one shows halted. (One that came up halted starts
    by itself on the release and becomes ready.)
    """
    restarted: list[str] = []
    members_started: float | None = None
    while True:
        processes = supervisor.all_info() if supervisor.running() else {}
        stayed_down = [c for c in COMPONENTS if c.name not in restarted
                       and processes.get(c.name, {}).get("exitstatus") == 3
                       and processes.get(c.name, {}).get("statename") == "EXITED"]
        members = [c for c in stayed_down if joins_group(c.name)]
        for component in members:
            supervisor.start(component.name)
            restarted.append(component.name)
        if members and members_started is None:
            members_started = time.monotonic()
        edge = [c for c in stayed_down if c not in members]
        if edge and not members_importing(layout, restarted, members_started):
            for component in edge:
                supervisor.start(component.name)
                restarted.append(component.name)
        unsettled = [c.name for c in COMPONENTS if c.control and c.name not in restarted
                     and (processes.get(c.name, {}).get("statename") in ("RUNNING", "STOPPING")
                          and probe(layout, c).state != READY or c in stayed_down)]
        if not unsettled or time.monotonic() > deadline:
            return restarted
        time.sleep(POLL_S)


def members_importing(layout: Layout, restarted: list[str], members_started: float | None) -> bool:
    """True while a group member started by this reset does not answer yet (it is still importing).

    A service answers its probe once its modules are loaded, just before it asks the broker
    to join its group; the edge adapters start then, their imports filling that second's wait
    instead of slowing the members' imports (all compete for the same cores). Never longer
    than ``EDGE_WAIT_MAX_S``.
    """
    if members_started is None or time.monotonic() >= members_started + EDGE_WAIT_MAX_S:
        return False
    return any(probe(layout, BY_NAME[name]).state == DOWN for name in restarted if joins_group(name))


def joins_group(name: str) -> bool:
    """A Faust service: it waits about a second for the broker to admit it to its consumer group."""
    return name in topology.BY_NAME and topology.BY_NAME[name].faust
