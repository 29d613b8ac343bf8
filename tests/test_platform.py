"""`heater up` brings the whole local platform to ready; `status` reports it; Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import wait_for


def heater(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heater", "--run-dir", str(run_dir), *args], capture_output=True, text=True, timeout=60
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_up_status_and_clean_stop(tmp_path: Path) -> None:
    run_dir = tmp_path / "platform"
    assert heater(run_dir, "status").returncode == 1, "no platform yet: status says so and fails"
    up = subprocess.Popen(
        [sys.executable, "-m", "heater", "--run-dir", str(run_dir), "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        report = wait_for(
            lambda: (lambda r: json.loads(r.stdout) if r.returncode == 0 else None)(heater(run_dir, "status", "--json")),
            timeout=60,
            interval=0.5,
            what="platform ready",
        )
        names = {c["name"]: c for c in report["components"]}
        assert {"broker", "vault", "alarms"} <= set(names)
        assert all(c["state"] == "ready" for c in names.values())
        pids = [c["pid"] for c in names.values()]
        assert all(pids) and all(pid_alive(p) for p in pids)
        assert all(c["port"] for c in names.values())
        human = heater(run_dir, "status")
        assert human.returncode == 0 and "READY" in human.stdout

        supervisord_pid = int((run_dir / "supervisord.pid").read_text())
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
        assert up.returncode == 0, out
        assert "platform ready in" in out and "stopped." in out
        leftovers = [p for p in [*pids, supervisord_pid] if pid_alive(p)]
        assert leftovers == [], f"stray processes after Ctrl-C: {leftovers}"
        assert heater(run_dir, "status").returncode == 1
    finally:
        if up.poll() is None:
            up.kill()
