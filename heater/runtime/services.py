"""A platform service as a real process on a free port: for tests, benches and tools."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heater.probes import http_json
from heater.runtime.processes import free_ports
from streams.tls import use_identity

if TYPE_CHECKING:
    from heater.runtime.vault import EmbeddedVault


#: A view read through :meth:`ServiceProcess.get` must answer: a service replaying its tables under load can
#: take seconds over a TLS handshake and a large page.
VIEW_TIMEOUT_S = 10.0


class ServiceProcess:
    """One platform service as a real process (`python -m heater worker NAME`)."""

    def __init__(self, name: str, broker_url: str, run_dir: Path, extra_env: dict[str, str] | None = None, *,
                 vault: "EmbeddedVault | None" = None) -> None:
        """``extra_env`` overrides the local profile (e.g. ``HEATER_PROFILE=production``); ``vault`` gives the
        service its own AppRole there (never the root token, which only :meth:`token` uses, as the administrator)."""
        self.name = name
        self.vault = vault
        self.port, self.probe_port = free_ports(2)
        self.run_dir = run_dir
        self.log_path = run_dir / "logs" / f"{name}-{self.port}.log"
        self.env = {
            **os.environ,
            "HEATER_PROFILE": "local",
            "HEATER_BROKER_URL": broker_url,
            "HEATER_RUN_DIR": str(run_dir),
            "HEATER_WEB_PORT": str(self.port),
            "HEATER_PROBE_PORT": str(self.probe_port),
            # Without a Vault nobody issues the service a certificate: plain HTTP, which only the local profile allows.
            **(vault.service_env(name) if vault is not None else {"HEATER_TLS": "off"}),
            **(extra_env or {}),
        }
        if vault is not None:
            use_identity([self.port], vault.cli_tls_dir)
        self.proc: subprocess.Popen[bytes] | None = None
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    @property
    def url(self) -> str:
        """The API: HTTPS with the harness's client certificate from the service's Vault (plain without one)."""
        scheme = "https" if self.env.get("HEATER_TLS", "on") == "on" else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def probe_url(self) -> str:
        """The plain port serving only ``/healthz``, ``/readyz`` and ``/metrics``."""
        return f"http://127.0.0.1:{self.probe_port}"

    def start(self) -> "ServiceProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heater", "worker", self.name],
            env=self.env,
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def get(self, path: str) -> tuple[int, Any]:
        """GET one of the service's views with an admin token from its Vault (none without one)."""
        return http_json(self.url + path, timeout=VIEW_TIMEOUT_S, token=self.token())

    def token(self, role: str = "admin", name: str = "harness") -> str | None:
        """An API token with ``role`` for the entity ``name``, from the service's Vault (None without one).

        Kept until a minute before it expires. The caller's name is who the services record
        (the operator of a reset, the author of a config change).
        """
        import jwt

        from streams.vault import VaultUnavailable, issue_api_token

        if self.vault is None:
            return None
        kept = self._tokens.get((name, role))
        if kept is None or kept[1] - 60 < time.time():
            try:
                token = issue_api_token(self.vault.admin(), name, role)
            except VaultUnavailable:
                return None
            kept = (token, float(jwt.decode(token, options={"verify_signature": False})["exp"]))
            self._tokens[(name, role)] = kept
        return kept[0]

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Seconds until ``/readyz`` answered 200; fails with the log tail otherwise."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()  # never leave a process behind that nobody waits for
        raise TimeoutError(f"{self.name} not ready in {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
        return self.proc.wait()
