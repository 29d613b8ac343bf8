"""A real headless browser for tests: Chromium from Debian's packages, installed when missing."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests import debian


#: Chromium's own start-up and one page load stay far below this on the 2-core test machine (~2 s measured).
RUN_TIMEOUT_S = 60


def chromium() -> str:
    """The Chromium binary; installed with apt-get (as root, no terminal) when missing, else the test fails."""
    return debian.required("chromium", "chromium")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               # The platform's own CA is not in this throw-away browser's trust store; it presents no client
               # certificate either, as a browser holding a session needs none (streams.tls).
               "--ignore-certificate-errors", "--virtual-time-budget=3000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def screenshot(url: str, out: Path, width: int = 1000, height: int = 900) -> Path:
    """A PNG of ``url`` as Chromium renders it (scripts run for a few seconds of virtual time)."""
    done = _run(f"--window-size={width},{height}", f"--screenshot={out}", url)
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    return out


def rendered_dom(url: str) -> str:
    """The page's DOM after its scripts ran, as Chromium serialises it."""
    done = _run("--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
