"""Start-up time, memory and idle CPU.

* one worker (the alarm service): process start → ready, with the local profile vs
  Faust's defaults (the production profile, plain ``kafka://``) on the same broker;
* the whole platform (`heater up`'s start sequence): start → every component ready,
  then resident memory and idle CPU of every process (broker and Vault included), and
  the time its stop takes;
* on that platform, every service killed with SIGKILL in turn: the kill → the restarted
  process answers ready (supervisord restarts it, as Kubernetes would).

``machine_ms`` (:func:`bench.stats.machine_ms`) is the machine's speed in the same run: idle
CPU is a share of a core, and a slower hour of a shared host shows a larger share.

Ends with one JSON line. Run: ``python bench/startup.py [--run-dir DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procstats import cpu_by_process, rss_mb, tree_pids  # noqa: E402
from bench.rundir import run_root  # noqa: E402
from bench.stats import machine_ms  # noqa: E402
from heater.catalogue import COMPONENTS, Component  # noqa: E402
from heater.platform import Platform  # noqa: E402
from heater.probes import READY, probe  # noqa: E402
from heater.runtime.broker import EmbeddedBroker  # noqa: E402
from heater.runtime.services import ServiceProcess  # noqa: E402
from heater.runtime.vault import EmbeddedVault  # noqa: E402

RUNS = 3
#: Idle CPU: sampled this long, this long after the platform is ready (its start-up work done:
#: the readers of the display tables catch up, the first beats go out). Ten seconds, three
#: seconds after ready gave 42–67 % on the same code: the figure needs the longer look. Five
#: 20-second looks in a row at one idle platform still spread over 26.8–29.7 %: a minute each.
SETTLE_S = 10.0
IDLE_SAMPLE_S = 60.0
#: Longest a killed service may take to answer ready again before the bench gives up on it.
KILL_READY_TIMEOUT_S = 60.0


def worker_ready_s(broker: EmbeddedBroker, vault: EmbeddedVault, run_dir: Path, profile: str) -> float:
    """AlarmsServer from start to ready, with its certificate and AppRole as on the platform."""
    url = broker.url if profile == "local" else f"kafka://{broker.bootstrap}"
    service = ServiceProcess("alarms", url, run_dir, extra_env={"HEATER_PROFILE": profile}, vault=vault)
    started = time.monotonic()
    service.start()
    try:
        service.wait_ready(timeout=120)
        return time.monotonic() - started
    finally:
        service.stop()


def kill9_ready_s(platform: Platform, component: Component) -> float:
    """SIGKILL the service; seconds until a new process of it answers ready."""
    killed = platform.supervisor.info(component.name)["pid"]
    started = time.monotonic()
    os.kill(killed, signal.SIGKILL)
    while time.monotonic() - started < KILL_READY_TIMEOUT_S:
        pid = platform.supervisor.info(component.name)["pid"]
        if pid not in (0, killed) and probe(platform.layout, component).state == READY:
            return time.monotonic() - started
        time.sleep(0.02)
    raise TimeoutError(f"{component.name} not ready {KILL_READY_TIMEOUT_S:.0f} s after kill -9")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="keep the brokers', Vault's and the platform's run directories (logs) here")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        root = run_root(stack, args.run_dir, "bench-startup-")
        with EmbeddedVault(root / "vault") as vault:
            with EmbeddedBroker(root / "broker") as broker:
                local = [worker_ready_s(broker, vault, root / f"local{i}", "local") for i in range(RUNS)]
                print(f"worker ready, local profile: {', '.join(f'{s:.2f}' for s in local)} s", flush=True)
            with EmbeddedBroker(root / "broker-defaults") as broker:
                defaults = worker_ready_s(broker, vault, root / "defaults", "production")
                print(f"worker ready, Faust defaults: {defaults:.2f} s", flush=True)

        machine = machine_ms()  # before the platform starts: the machine's own speed this hour
        platform = Platform(root / "platform")
        try:
            ready = platform.start(timeout=120)
            print(f"platform ready in {ready:.2f} s: {platform.timings}", flush=True)
            time.sleep(SETTLE_S)
            pids = tree_pids(platform.supervisord.pid)
            memory = rss_mb(pids)
            by_process = cpu_by_process(platform.supervisord.pid, IDLE_SAMPLE_S)
            cpu = sum(pct for _, pct in by_process)
            print(f"platform: {len(pids)} processes, {memory:.0f} MB RSS, idle CPU {cpu:.1f} % of one core", flush=True)
            for label, pct in by_process:
                if pct >= 0.5:
                    print(f"  {pct:5.1f} %  {label}", flush=True)
            after_kill: dict[str, float] = {}
            for component in (c for c in COMPONENTS if c.has_web):
                after_kill[component.name] = round(kill9_ready_s(platform, component), 2)
                print(f"kill -9 {component.name}: ready again in {after_kill[component.name]:.2f} s", flush=True)
                time.sleep(2)  # the next kill on a platform at rest
        finally:
            stopping = time.monotonic()
            platform.stop()
            stop_s = time.monotonic() - stopping
            print(f"platform stopped in {stop_s:.2f} s", flush=True)

    print(
        json.dumps(
            {
                "worker_ready_s": round(statistics.median(local), 3),
                "ready_s": round(ready, 3),
                "stop_s": round(stop_s, 3),
                "rss_mb": round(memory, 1),
                "idle_cpu_pct": round(cpu, 1),
                "processes": len(pids),
                "kill9_ready_s": after_kill,
                "kill9_ready_max_s": max(after_kill.values()),
                "machine_ms": round(machine, 2),
                "baseline": {"worker_ready_s": round(defaults, 3), "profile": "Faust defaults (kafka://)"},
            }
        )
    )


if __name__ == "__main__":
    main()
