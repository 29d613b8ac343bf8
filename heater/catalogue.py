"""Every process of the local platform, in the seeds' start order.

Foundational services first (configuration → secrets → registry → alarms), then the
hardware adapters and the business logic, then the HomeKit bridge. A component starts
only once every component of the stages before it is ready. The simulated hardware
comes up right after the broker and Vault, as a real heater would be powered before
its controller.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

Kind = Literal["infra", "hardware", "service"]


@dataclass(frozen=True)
class Component:
    """One supervised process: its name, start stage and how to run it."""

    name: str
    stage: int
    kind: Kind
    module_args: tuple[str, ...]
    description: str = ""
    control: bool = False
    """A control service: on FATAL it exits with the stay-down code (rule 2)."""
    niceness: int = 0
    """Added to the process's nice value when it starts: services off the path from a reading
    to the power cut-off yield the CPU to those on it. A FATAL wakes every service at once
    (each follows the alarms), and on two cores the I2C adapter's trip waited behind them.
    The services that decide every reading yield to the edge (:data:`BULK_DECIDERS`), and the
    edge adapters go before everything else (:data:`FATAL_PATH_EDGE`)."""

    @property
    def has_web(self) -> bool:
        """Services answer ``/healthz``, ``/readyz``, ``/metrics`` and ``/status``."""
        return self.kind == "service"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "heater", *self.module_args]


STAGE_INFRA = 0
STAGE_HARDWARE = 1
STAGE_CONFIGURATION = 2
STAGE_SECRETS = 3
STAGE_REGISTRY = 4
STAGE_ALARMS = 5
STAGE_EDGE_AND_LOGIC = 6
STAGE_BRIDGE = 7
#: The nice value of services off the FATAL path (see :attr:`Component.niceness`).
OFF_FATAL_PATH = 10
#: The nice value of BankManager and DisasterDetector, which decide every reading: the FATAL
#: limit is judged first by the CAN adapter as each frame arrives, and on a flooded bus these two
#: used half a core each, so the limit's alarm and the I2C adapter's trip waited for the CPU
#: behind them (measured, 9,000 frames/s, 40 trials each: FATAL → cut p95 30–36 ms at 0,
#: 15.8 at 5, 18.1 at 10). They still go before the services that only show or keep things.
BULK_DECIDERS = 5
#: The nice value of the CAN and I2C adapters: the FATAL limit's judge and the power cut's
#: hand. On a flooded bus the FATAL's alarm waited in the CAN adapter's producer, and the trip
#: in the I2C adapter, for a core that the broker, the simulated hardware and the deciders held
#: (measured, 9,000 frames/s, 60 trials each, the same hour: FATAL → cut p95 21.5 → 15.6 ms,
#: p99 27.4 → 18.3, max 45.6 → 18.3 at -5). Both are idle between frames and commands, so
#: going first takes little from the others. A negative value needs CAP_SYS_NICE (root runs
#: the local platform); without it they run at the platform's own priority, with a warning.
FATAL_PATH_EDGE = -5

COMPONENTS: tuple[Component, ...] = (
    Component("broker", STAGE_INFRA, "infra", ("runtime", "broker"), "Kafka-protocol broker (memory storage)"),
    Component("vault", STAGE_INFRA, "infra", ("runtime", "vault"), "OpenBao dev server"),
    Component("simulator", STAGE_HARDWARE, "hardware", ("runtime", "simulator"), "simulated heater, CAN bus and Pico"),
    Component("config", STAGE_CONFIGURATION, "service", ("worker", "config"), "ConfigurationServer", control=True,
              niceness=OFF_FATAL_PATH),
    Component("secrets", STAGE_SECRETS, "service", ("worker", "secrets"),
              "SecretsRotator: certificates, AppRole secret_ids, signing keys before expiry", niceness=OFF_FATAL_PATH),
    Component("registry", STAGE_REGISTRY, "service", ("worker", "registry"), "StateRegistry: heartbeats, discovery, allowed services",
              niceness=OFF_FATAL_PATH),
    Component("exceptions", STAGE_REGISTRY, "service", ("worker", "exceptions"), "ExceptionsServer", niceness=OFF_FATAL_PATH),
    Component("alarms", STAGE_ALARMS, "service", ("worker", "alarms"), "AlarmsServer", niceness=OFF_FATAL_PATH),
    Component("can", STAGE_EDGE_AND_LOGIC, "service", ("worker", "can"), "CAN adapter: sensor frames to sensorData", control=True,
              niceness=FATAL_PATH_EDGE),
    Component("i2c", STAGE_EDGE_AND_LOGIC, "service", ("worker", "i2c"), "I2C adapter: relays on the Pico", control=True,
              niceness=FATAL_PATH_EDGE),
    Component("bank", STAGE_EDGE_AND_LOGIC, "service", ("worker", "bank"), "BankManager: the sensor bank", control=True,
              niceness=BULK_DECIDERS),
    Component("disaster", STAGE_EDGE_AND_LOGIC, "service", ("worker", "disaster"), "DisasterDetector", control=True,
              niceness=BULK_DECIDERS),
    Component("homekit", STAGE_BRIDGE, "service", ("worker", "homekit"), "HomeKit bridge (HAP on the homekit-hap port)",
              niceness=OFF_FATAL_PATH),
)

BY_NAME: dict[str, Component] = {c.name: c for c in COMPONENTS}

#: Services that join the platform without being a supervised component: one heating job per cycle.
TRANSIENT_SERVICES = ("heating-job",)


def platform_services() -> tuple[str, ...]:
    """Every service that may beat and report on the platform (Vault's allowed list is seeded with them)."""
    return tuple(c.name for c in COMPONENTS if c.kind == "service") + TRANSIENT_SERVICES


def stages() -> list[list[Component]]:
    """Components grouped by stage, in start order."""
    ordered = sorted({c.stage for c in COMPONENTS})
    return [[c for c in COMPONENTS if c.stage == s] for s in ordered]

#: Ports a platform needs beyond one per component: the simulated hardware's wires, the bridge's HAP server.
EXTRA_PORTS = ("sim-can", "sim-i2c", "homekit-hap")
