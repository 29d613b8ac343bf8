"""`heater runtime broker|vault|simulator`: run a runtime component of this platform.

supervisord runs these as programs; the address book gives the port and the Vault
token comes from its 0600 file into the server's environment, never onto argv.
"""

from __future__ import annotations

import os
import sys

from heater.rundir import Layout, default_run_dir
from heater.runtime.broker import run_broker
from heater.runtime.vault import vault_command, vault_env


def exec_component(name: str) -> None:
    layout = Layout.load(default_run_dir())
    if name == "broker":
        raise SystemExit(run_broker(layout.ports["broker"], topics_file=layout.run_dir / "broker-topics.json",
                                    promised_ports=layout.ports.values()))
    if name == "vault":
        argv = vault_command(layout.ports["vault"])
        token = layout.vault_token_file.read_text().strip()
        os.execve(argv[0], argv, vault_env(token))
    if name == "simulator":
        argv = [
            sys.executable, "-m", "simulator",
            "--run-dir", str(layout.simulator_dir),
            "--can-port", str(layout.ports["sim-can"]),
            "--i2c-port", str(layout.ports["sim-i2c"]),
            "--control-port", str(layout.ports["simulator"]),
        ]
        os.execv(argv[0], argv)
    raise SystemExit(f"unknown runtime component {name!r} (expected broker, vault or simulator)")
