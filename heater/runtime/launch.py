"""`heater runtime broker|vault`: exec the embedded broker or Vault for this platform.

supervisord runs these as programs; the address book gives the port and the Vault
token comes from its 0600 file into the server's environment, never onto argv.
"""

from __future__ import annotations

import os

from heater.rundir import Layout, default_run_dir
from heater.runtime.broker import broker_command
from heater.runtime.vault import vault_command, vault_env


def exec_component(name: str) -> None:
    layout = Layout.load(default_run_dir())
    if name == "broker":
        argv = broker_command(layout.ports["broker"])
        os.execv(argv[0], argv)
    if name == "vault":
        argv = vault_command(layout.ports["vault"])
        token = layout.vault_token_file.read_text().strip()
        os.execve(argv[0], argv, vault_env(token))
    raise SystemExit(f"unknown runtime component {name!r} (expected broker or vault)")
