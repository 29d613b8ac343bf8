"""`heater up`: the whole local platform under supervisord, started stage by stage.

Broker and Vault first, then each stage of services once the stages before it are
ready. Ctrl-C (or SIGTERM) stops the components in reverse order, then supervisord,
and leaves no process behind. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from heater import prometheus
from heater.bytecode import compile_sources
from heater.catalogue import COMPONENTS, Component, stages
from heater.probes import HALTED, READY, probe
from heater.rundir import Layout
from heater.runtime.processes import ChildProcess, StartupTimeout, wait_until
from heater.runtime.vault import new_token, without_vault_credentials, write_token
from heater.supervision import Supervisor, write_config
from heater.vault_keeper import VaultKeeper
from streams.config_file import write_default

log = logging.getLogger(__name__)


class AlreadyRunning(RuntimeError):
    """A platform is already running in this run directory."""


class Platform:
    """One local platform in one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.layout = Layout.allocate(run_dir)
        self.supervisord: ChildProcess | None = None
        self.supervisor = Supervisor(self.layout)
        self.timings: dict[str, float] = {}
        self.vault_keeper = VaultKeeper(self.layout)

    def start(self, timeout: float = 60.0) -> float:
        """Start everything; return the seconds until every component was ready."""
        began = time.monotonic()
        if self.layout.supervisor_socket.exists() and Supervisor(self.layout).running():
            raise AlreadyRunning(f"a platform is already running in {self.layout.run_dir}; stop it first")
        self.layout.supervisor_socket.unlink(missing_ok=True)
        self.layout.save()
        compile_sources()
        prometheus.write(self.layout)
        write_token(self.layout.vault_token_file, new_token())
        write_default(self.layout.config_file)
        write_config(self.layout)
        self.supervisord = ChildProcess(
            "supervisord",
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.layout.supervisor_conf)],
            self.layout.logs / "supervisord.out",
            env=without_vault_credentials(os.environ),
        ).start()
        wait_until(lambda: self.supervisord.check_alive() and self.supervisor.running(), 15, "supervisord")
        for stage in stages():
            for component in stage:
                self.supervisor.start(component.name)
            for component in stage:
                self._wait_ready(component, deadline=began + timeout)
                self._after_ready(component)
                self.timings[component.name] = time.monotonic() - began
                log.info("%-12s ready (+%.2f s)", component.name, self.timings[component.name])
        return time.monotonic() - began

    def _wait_ready(self, component: Component, deadline: float) -> None:
        def ready() -> bool:
            info = self.supervisor.info(component.name)
            if info["statename"] in ("EXITED", "FATAL", "BACKOFF") and info["exitstatus"] not in (None, 0):
                raise StartupTimeout(
                    f"{component.name} exited with {info['exitstatus']}; see {self.layout.logs / component.name}.log"
                )
            return probe(self.layout, component).state in (READY, HALTED)

        wait_until(ready, max(1.0, deadline - time.monotonic()), component.name, interval=0.1)

    def _after_ready(self, component: Component) -> None:
        if component.name == "vault":
            if not self.vault_keeper.check(self.supervisor):
                raise StartupTimeout("vault answered once, then not: not provisioned; see its log")
            self.vault_keeper.start()

    def stop(self) -> None:
        """Stop components in reverse start order (a stage's together), then supervisord."""
        self.vault_keeper.stop()
        if self.supervisord is None:
            return
        if self.supervisor.running():
            for stage in reversed(stages()):
                try:
                    still_up = self.supervisor.stop_together([component.name for component in stage])
                except Exception as exc:  # keep stopping the rest; report what failed
                    log.warning("stopping %s: %s", ", ".join(c.name for c in stage), exc)
                    continue
                if still_up:
                    log.warning("still stopping after the grace period: %s", ", ".join(still_up))
            self.supervisor.shutdown()
        self.supervisord.stop(timeout=20)
        self.layout.supervisor_socket.unlink(missing_ok=True)
        self.supervisord = None


def print_pairing(layout: Layout) -> None:
    """The HomeKit bridge's setup code (and QR code) for the Home app, as the bridge wrote them at its start."""
    from homekit.pairing import read_bridge_info, render

    info = read_bridge_info(layout.run_dir / "homekit")
    if info is not None:
        print(render(info), flush=True)


def run(run_dir: Path, timeout: float = 60.0) -> int:
    """Run the platform in the foreground until Ctrl-C or SIGTERM."""
    platform = Platform(run_dir)
    stop_requested: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only record the request: locks (threading.Event) are unsafe in a signal handler.
        stop_requested.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        took = platform.start(timeout)
        print(f"platform ready in {took:.1f} s — run dir {platform.layout.run_dir}", flush=True)
        for component in COMPONENTS:
            where = platform.layout.ports.get(component.name)
            print(f"  {component.name:<12} 127.0.0.1:{where:<6} {component.description}", flush=True)
        print_pairing(platform.layout)
        print("`heater status` shows the state; Ctrl-C stops everything.", flush=True)
        while not stop_requested and platform.supervisord is not None and platform.supervisord.alive():
            time.sleep(0.2)
        return 0
    except (StartupTimeout, AlreadyRunning) as exc:
        print(f"heater up failed: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        print("stopping the platform...", flush=True)
        platform.stop()
        print("stopped.", flush=True)
