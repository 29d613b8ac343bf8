"""Command-line flags of the simulator, shared by ``python -m simulator`` and ``sim run``.

Kept apart from :mod:`simulator.app` so building a parser imports nothing heavy.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from adapters.i2c import registers


def _watchdog_ms(text: str) -> int:
    value = int(text)
    try:
        registers.encode_wdt_window(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's flags, shared by ``python -m simulator`` and ``heater sim run``."""
    parser.add_argument("--run-dir", type=Path, required=True, help="state directory (NVRAM, readiness marker)")
    parser.add_argument("--can-port", type=int, default=0, help="CAN remote server port (0: any free)")
    parser.add_argument("--i2c-port", type=int, default=0, help="Pico I2C port (0: any free)")
    parser.add_argument("--control-port", type=int, default=0, help="control API port (0: any free)")
    parser.add_argument(
        "--watchdog-ms", type=_watchdog_ms, default=registers.DEFAULT_WDT_WINDOW_MS,
        help="Pico watchdog window in ms (10..2550, default %(default)s)",
    )
    parser.add_argument("--ambient", type=float, default=20.0, help="ambient temperature, degC")
    parser.add_argument("--initial-temperature", type=float, default=None, help="water at start (default: ambient)")
    parser.add_argument("--heat-rate", type=_positive, default=1.8, help="heating with flame, degC/s")
    parser.add_argument("--sensor-rate", type=_positive, default=10.0, help="WaterTemp frames per second per sensor")
    parser.add_argument("--seed", type=int, default=None, help="seed for sensor noise and garbage frames")
    parser.add_argument("--log-level", default=os.environ.get("HEATER_SIM_LOG_LEVEL", "INFO"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulator", description="Simulated heater hardware")
    add_arguments(parser)
    return parser
