"""Provision the local Vault again whenever supervisord restarts it.

The dev server keeps everything in memory: a Vault that crashed and was restarted comes
back with the same root token and nothing else — no AppRoles, no token keys, no PKI. The
services keep running on what they hold (their client tokens die with the old Vault; they
log in again with the same AppRole credentials, which provisioning writes back). So
whoever holds the root token (`heater up`) watches Vault's process and, as soon as a new
one answers, provisions it exactly as at start: the same AppRole credentials, a new CA and
a new certificate for every service, which each loads within a second without a restart.
Tokens signed by the old Vault (`heater login`) are refused from then on; log in again.
"""

from __future__ import annotations

import logging
import threading
from heater.catalogue import BY_NAME
from heater.probes import READY, probe
from heater.rundir import Layout
from heater.runtime.vault import provision
from heater.supervision import Supervisor

log = logging.getLogger(__name__)

#: How often Vault's process is looked at.
CHECK_INTERVAL_S = 1.0


class VaultKeeper:
    """A thread that provisions Vault once per Vault process (the pid supervisord reports)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.provisioned_pid: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _provision(self) -> None:
        provision(self.layout.vault_addr, self.layout.vault_token_file.read_text().strip(), self.layout.secrets_dir)

    def check(self, supervisor: Supervisor) -> bool:
        """Provision a Vault process not provisioned yet, once it answers; whether it did."""
        pid = supervisor.info("vault").get("pid") or None
        if pid is None or pid == self.provisioned_pid:
            return False
        if probe(self.layout, BY_NAME["vault"]).state != READY:
            return False
        self._provision()
        if self.provisioned_pid is not None:
            log.warning("Vault restarted (pid %s, was %s) and came back empty: provisioned again", pid,
                        self.provisioned_pid)
        self.provisioned_pid = pid
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vault-keeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        supervisor = Supervisor(self.layout)  # its own connection: the platform's is used by the main thread
        while not self._stop.wait(CHECK_INTERVAL_S):
            try:
                self.check(supervisor)
            except Exception as exc:  # Vault half up, supervisord going away: look again next time
                log.info("Vault not provisioned yet: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
