"""The run directory of one local platform: its ports, logs, sockets and secrets.

``platform.json`` is the platform's address book; ``heater status`` and the tests read
it to find every component. Each platform instance (a ``heater up``, each test run)
has its own run directory and its own free ports, so several can run side by side.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from heater.catalogue import BY_NAME, COMPONENTS, EXTRA_PORTS
from heater.runtime.pki import CLI_SUBJECT, tls_dir
from heater.runtime.processes import free_ports
from heater.runtime.vault import approle_env
from streams.tls import use_identity

DEFAULT_RUN_DIR = Path(".run")


def probe_port_name(service: str) -> str:
    """The address book's entry for a service's probe port."""
    return f"{service}-probe"


def default_run_dir() -> Path:
    return Path(os.environ.get("HEATER_RUN_DIR", DEFAULT_RUN_DIR))


@dataclass
class Layout:
    """Where everything of one platform lives."""

    run_dir: Path
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """This process calls the platform's APIs with the CLI's certificate (each platform has its own CA)."""
        use_identity([port for name, port in self.ports.items() if name in BY_NAME and BY_NAME[name].has_web],
                     tls_dir(self.secrets_dir, CLI_SUBJECT))

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def config_file(self) -> Path:
        """ConfigurationServer's bootstrap configuration (written with the defaults when absent)."""
        return self.run_dir / "config" / "heater.json"

    @property
    def address_book(self) -> Path:
        return self.run_dir / "platform.json"

    @property
    def prometheus_config(self) -> Path:
        """The scrape configuration for this platform (:mod:`heater.prometheus`)."""
        return self.run_dir / "prometheus.yml"

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def supervisor_conf(self) -> Path:
        return self.run_dir / "supervisord.conf"

    @property
    def secrets_dir(self) -> Path:
        return self.run_dir / "secrets"

    @property
    def vault_token_file(self) -> Path:
        """The dev Vault's root token: for provisioning and the operator's CLI, never for a service."""
        return self.secrets_dir / "vault-token"

    @property
    def broker_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['broker']}"

    @property
    def vault_addr(self) -> str:
        return f"http://127.0.0.1:{self.ports['vault']}"

    @property
    def simulator_dir(self) -> Path:
        return self.run_dir / "sim"

    def web_url(self, name: str) -> str:
        """A service's API: HTTPS with a client certificate (the CLI's, :meth:`__post_init__`)."""
        return f"https://127.0.0.1:{self.ports[name]}"

    def probe_url(self, name: str) -> str:
        """A service's plain port for ``/healthz``, ``/readyz`` and ``/metrics`` only."""
        return f"http://127.0.0.1:{self.ports[probe_port_name(name)]}"

    @classmethod
    def allocate(cls, run_dir: Path) -> "Layout":
        """A new layout with a free port for every component."""
        names = [c.name for c in COMPONENTS] + [probe_port_name(c.name) for c in COMPONENTS if c.has_web] + list(EXTRA_PORTS)
        ports = free_ports(len(names), next_free={names.index("vault")})
        return cls(run_dir=run_dir.resolve(), ports=dict(zip(names, ports)))

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.address_book.write_text(json.dumps({"run_dir": str(self.run_dir), "ports": self.ports}, indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> "Layout":
        """The layout of a platform started in ``run_dir`` (FileNotFoundError if none was)."""
        data = json.loads((run_dir / "platform.json").read_text())
        return cls(run_dir=Path(data["run_dir"]), ports={k: int(v) for k, v in data["ports"].items()})

    def service_env(self, name: str) -> dict[str, str]:
        """Environment of a platform process: the local profile pointed at this platform."""
        return {
            "HEATER_PROFILE": "local",
            "HEATER_RUN_DIR": str(self.run_dir),
            "HEATER_BROKER_URL": f"tansu://{self.broker_bootstrap}",
            "HEATER_VAULT_ADDR": self.vault_addr,
            **approle_env(self.secrets_dir, name),
            "HEATER_WEB_PORT": str(self.ports.get(name, 0)),
            "HEATER_PROBE_PORT": str(self.ports.get(probe_port_name(name), 0)),
            "HEATER_TLS_DIR": str(tls_dir(self.secrets_dir, name)),
            "HEATER_COMPONENT": name,
            "HEATER_CAN_INTERFACE": "remote",
            "HEATER_CAN_CHANNEL": f"ws://127.0.0.1:{self.ports['sim-can']}/",
            "HEATER_I2C_BUS": f"sim://127.0.0.1:{self.ports['sim-i2c']}",
            "HEATER_CONFIG_FILE": str(self.config_file),
        }
