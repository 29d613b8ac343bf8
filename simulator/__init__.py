"""Simulated heater hardware: tank physics, CAN sensors, and the Pico relay board.

It is "hardware": it knows the DBC (:mod:`adapters.can.frames`) and the Pico
register map (:mod:`adapters.i2c.registers`) and nothing else of the platform.
Run it with ``python -m simulator`` (see :mod:`simulator.app`); drive it with
:mod:`simulator.client` or the ``sim`` commands of :mod:`simulator.cli`.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGTERM/SIGINT (see :func:`simulator.app.main`)."""
    from simulator.app import main as app_main

    return app_main(argv)
