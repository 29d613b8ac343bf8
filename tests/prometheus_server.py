"""Debian's Prometheus for the tests: installed with apt when absent, run by hand on 127.0.0.1.

There is no systemd here, and the tests want their own instance anyway: one per test, its
own port and storage in the test's directory, stopped at the end. The install is
:mod:`tests.debian`'s.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from heater.runtime.processes import ChildProcess, free_port, wait_until
from tests import debian

PACKAGE = "prometheus"

#: Prometheus is not installed and could not be installed; the message says why.
PrometheusUnavailable = debian.PackageUnavailable


def ensure_installed() -> float:
    """Install Debian's ``prometheus`` when absent; the seconds it took (0.0 when it was there)."""
    return debian.ensure(PACKAGE, "prometheus", "promtool")


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check config`` on a file: exit code 0 when Prometheus would load it."""
    return subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60)


class Prometheus:
    """One running Prometheus: its address and its HTTP API."""

    def __init__(self, url: str, process: ChildProcess) -> None:
        self.url = url
        self.process = process

    def api(self, path: str, **query: str) -> Any:
        """GET ``/api/v1/PATH`` and return its ``data`` (AssertionError on an error answer)."""
        address = f"{self.url}/api/v1/{path}"
        if query:
            address += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(address, timeout=5) as response:
            body = json.loads(response.read())
        assert body.get("status") == "success", body
        return body["data"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets", state="active")["activeTargets"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: one ``{"metric": labels, "value": [t, "v"]}`` per series."""
        return self.api("query", query=expr)["result"]


@contextmanager
def running_prometheus(config: Path, workdir: Path, ready_timeout: float = 30.0) -> Iterator[Prometheus]:
    """Prometheus on 127.0.0.1 with ``config``, storing in ``workdir``; stopped (its whole group) at the end."""
    port = free_port()
    argv = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    process = ChildProcess("prometheus", argv, workdir / "prometheus.log").start()
    server = Prometheus(f"http://127.0.0.1:{port}", process)
    try:
        wait_until(lambda: process.check_alive() and _ready(server.url), ready_timeout, "prometheus ready")
        yield server
    finally:
        process.stop()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False
