"""The running local platform as the end-to-end tests see it: the simulated hardware's
state, readiness of the services, the latch, and a tank brought back to a known start."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from heater.catalogue import COMPONENTS
from heater.platform import Platform
from heater import credentials
from heater.probes import http_json as _http_json
from heater.rundir import Layout
from streams.auth import Role
from streams.heater_config import WATER_SENSORS
from simulator import client as sim
from tests.support import try_get, wait_for

#: The platform's services (everything but the broker, Vault and the simulated hardware).
SERVICES = [c.name for c in COMPONENTS if c.name not in ("broker", "vault", "simulator")]


#: Run directories of the platforms started here (the last one's login reads the views).
_STARTED: list[Path] = []


@contextmanager
def running_platform(run_dir: Path, timeout: float = 120) -> Iterator[Platform]:
    """The whole local platform, as `heater up` runs it, for one test module."""
    running = Platform(run_dir)
    try:
        running.start(timeout=timeout)
        credentials.login(run_dir, Role.ADMIN, "platform-tests")  # the helpers below read views with it
        _STARTED.append(run_dir)
        yield running
    finally:
        running.stop()


def login_token() -> str | None:
    """The saved login of the platform :func:`running_platform` started last (admin, or whoever logged in since)."""
    return credentials.bearer_or_none(_STARTED[-1]) if _STARTED else None


#: A view a test reads must answer; on a loaded 2-core machine a TLS handshake with a busy service can take seconds.
VIEW_TIMEOUT_S = 10.0


def http_json(url: str, timeout: float = VIEW_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
    """GET a view of the platform :func:`running_platform` started, with its saved login."""
    return _http_json(url, timeout=timeout, token=login_token())


def view(url: str) -> tuple[int, Any] | None:
    """:func:`http_json`; None while nothing listens there (a service restarting)."""
    return try_get(url, token=login_token())


def pico(layout: Layout) -> dict[str, Any]:
    return sim.get_state(layout.ports["simulator"])["pico"]


def relays(layout: Layout) -> dict[str, bool]:
    return pico(layout)["relays"]


def fresh_tank(layout: Layout, water_c: float = 20.0) -> None:
    """No faults, water and sensors at ``water_c``, the I2C adapter seeing fresh readings."""
    port = layout.ports["simulator"]
    sim.set_temperature(port, water_c)  # water first: a stuck sensor freed above it reads as heat
    sim.clear(port)

    def settled() -> bool:
        state = sim.get_state(port)
        sensed = [s["temperature"] for s in state["sensors"].values()]
        return abs(state["heater"]["water_temperature"] - water_c) < 0.5 and all(
            t is not None and abs(t - water_c) < 0.5 for t in sensed
        )

    wait_for(settled, 10, what="tank and sensors at the start temperature")
    all_ready(layout)
    wait_for(lambda: fresh_temperature(layout), 15, what="the I2C adapter sees fresh temperature data")

    # The tank jumped to ``water_c`` at once, which no real water does: sensors that report a
    # moment apart disagree meanwhile. A job started before DisasterDetector has decided those
    # readings (it may be behind, after a restart) would be judged against them.
    def detector_settled() -> bool:
        windows = http_json(layout.web_url("disaster") + "/disaster")[1].get("windows", {})
        latest = [w.get("last_c") for w in windows.values()]
        return len(latest) >= len(WATER_SENSORS) and all(t is not None and abs(t - water_c) < 0.5 for t in latest)

    wait_for(detector_settled, 30, what="DisasterDetector has decided readings at the start temperature")


def fresh_temperature(layout: Layout) -> bool:
    lease = http_json(layout.web_url("i2c") + "/relays")[1]["lease"]
    return lease["temperature_age_s"] is not None and lease["temperature_age_s"] < lease["stale_after_s"] / 2


def ready(layout: Layout, name: str) -> bool:
    return (view(layout.web_url(name) + "/readyz") or (0,))[0] == 200


def all_ready(layout: Layout, timeout: float = 60) -> None:
    for name in SERVICES:
        wait_for(lambda n=name: ready(layout, n), timeout, 0.2, f"{name} ready")


def latched(layout: Layout) -> bool:
    return bool(http_json(layout.web_url("alarms") + "/latch")[1]["latched"])
