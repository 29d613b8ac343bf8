"""A service's place in the CPU's queue: what it asks for, and what it gets without the right."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from heater import cli
from tests.support import may_raise_priority


def niceness_after(niceness: int) -> int:
    """A fresh process's nice value after it takes ``niceness`` the way a service does."""
    code = f"import os; from heater.cli import set_niceness; set_niceness('probe', {niceness}); print(os.nice(0))"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_a_service_off_the_fatal_path_yields() -> None:
    assert niceness_after(4) == os.nice(0) + 4


def test_an_edge_adapter_goes_first_where_the_platform_may_raise_it() -> None:
    """Root (the local platform, CI) may; a process without CAP_SYS_NICE stays where it is."""
    assert niceness_after(-3) == os.nice(0) - (3 if may_raise_priority() else 0)


def test_without_the_right_to_go_first_the_service_runs_on_and_says_why(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def refused(increment: int) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(cli.os, "nice", refused)
    with caplog.at_level(logging.WARNING, logger="heater"):
        cli.set_niceness("i2c", -5)
    assert "i2c: runs at nice" in caplog.text and "CAP_SYS_NICE" in caplog.text
