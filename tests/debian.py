"""Debian packages the tests drive for real (Chromium, Prometheus, kcat): installed with apt when absent.

The install is idempotent (nothing happens when the package's commands are on the PATH),
quiet, never asks a question, waits for another test run's apt to finish, and says clearly
why when it cannot install (not root, no apt, no package lists, no network).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time

import pytest

log = logging.getLogger(__name__)

#: apt waits this long for another apt to release its lock (several test runs may install at once).
APT_LOCK_WAIT_S = 300
APT_TIMEOUT_S = 900


class PackageUnavailable(RuntimeError):
    """A package is not installed and could not be installed; the message says why."""


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"}
    argv = ["apt-get", "-q", "-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S}", *args]
    return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=APT_TIMEOUT_S)


def installed(*commands: str) -> bool:
    return all(shutil.which(command) for command in commands)


def ensure(package: str, *commands: str) -> float:
    """Install Debian's ``package`` unless all its ``commands`` are on the PATH; the seconds it took (0.0: there).

    Raises :class:`PackageUnavailable` with apt's own last lines when it cannot.
    """
    if installed(*commands):
        return 0.0
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise PackageUnavailable(f"{package} is not installed, and installing it needs apt-get as root")
    began = time.monotonic()
    install = ("install", "-y", "--no-install-recommends", package)
    result = _apt(*install)
    if result.returncode != 0:  # no or stale package lists (a fresh container): fetch them once, then again
        updated = _apt("update")
        result = _apt(*install) if updated.returncode == 0 else updated
    if result.returncode != 0 or not installed(*commands):
        output = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise PackageUnavailable(f"`apt-get install {package}` failed (exit {result.returncode}):\n" + "\n".join(output))
    took = time.monotonic() - began
    log.warning("%s installed from Debian's packages in %.1f s", package, took)
    return took


def command(package: str, name: str) -> str:
    """The path of ``name``, installing ``package`` first when it is missing."""
    ensure(package, name)
    return shutil.which(name) or name



def required(package: str, name: str) -> str:
    """The path of ``name`` for a test that needs it: installed when missing, else the test fails saying why."""
    try:
        return command(package, name)
    except PackageUnavailable as exc:
        pytest.fail(f"{name} is not installed and could not be installed: {exc}")
