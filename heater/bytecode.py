"""The platform's own modules compiled once, before its processes start.

Python reads a module's bytecode from ``__pycache__`` when it is there and current; when it
is not and writing it is off (``PYTHONDONTWRITEBYTECODE``), every process compiles every
module of ours from source again and throws the result away. The
control services all start at once after an operator reset, so that cost (about 0.1 s of
CPU per service, measured) is paid five times over on the reset's critical path.
Installed packages are compiled by pip at install time; this covers the checkout.
"""

from __future__ import annotations

import compileall
import logging
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("streams", "adapters", "heater", "homekit", "simulator")


def compile_sources(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> bool:
    """Write current bytecode for every module of the platform's packages; False if some did not compile."""
    ok = True
    for package in packages:
        if (root / package).is_dir():
            ok = bool(compileall.compile_dir(root / package, quiet=2)) and ok
    if not ok:
        log.warning("some of the platform's modules could not be compiled (a syntax error, or no write access "
                    "to their __pycache__)")
    return ok
