"""The simulator process: wires the hardware to its three loopback ports.

``python -m simulator --run-dir DIR --can-port P --i2c-port Q --control-port R``

Port 0 picks a free port; the ports actually used are written, once all three
servers listen, to ``DIR/simulator.json`` (the readiness marker, removed on a
clean shutdown).  SIGTERM/SIGINT shut down cleanly with exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from .board import Board
from .canbus import CanHost
from .control import make_app
from .options import build_parser
from .physics import HeaterModel
from .pico_process import PicoProcess

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
READY_MARKER = "simulator.json"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().level > logging.DEBUG:
        for noisy in ("can", "can_remote", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def write_marker(path: Path, content: dict[str, Any]) -> None:
    """Atomically publish the readiness marker."""
    fd, tmp = tempfile.mkstemp(prefix=".simulator-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(content, fh)
    os.replace(tmp, path)


async def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    run_dir: Path = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / READY_MARKER
    marker.unlink(missing_ok=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    initial = args.ambient if args.initial_temperature is None else args.initial_temperature
    model = HeaterModel(ambient_c=args.ambient, temperature_c=initial, heat_rate_c_per_s=args.heat_rate)
    pico = PicoProcess(run_dir, HOST, args.i2c_port, args.watchdog_ms, args.log_level)
    can_host = CanHost(HOST, args.can_port, channel=f"heater-sim-{os.getpid()}")
    board = Board(pico, can_host, model, random.Random(args.seed), sensor_period_s=1.0 / args.sensor_rate)

    ready = False
    info: dict[str, Any] = {"pid": os.getpid(), "started_at": time.time()}
    runner = web.AppRunner(make_app(board, lambda: ready, info), access_log=None)
    try:
        info["can_port"] = can_host.start()
        info["i2c_port"] = await pico.start()
        info["pico_pid"] = pico.pid
        await runner.setup()
        site = web.TCPSite(runner, HOST, args.control_port)
        await site.start()
        info["control_port"] = runner.addresses[0][1]
        info.update(
            can_channel=can_host.url,
            i2c_url=f"sim://{HOST}:{info['i2c_port']}",
            control_url=f"http://{HOST}:{info['control_port']}",
            watchdog_ms=args.watchdog_ms,
            run_dir=str(run_dir),
        )
        board.start()
        write_marker(marker, info)
        ready = True
        log.info("simulator ready: %s", info)
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(pico.ended())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        if not stop.is_set():
            log.error("the Pico is gone: the simulated hardware stops")
            return 1
        log.info("shutting down")
    finally:
        ready = False
        marker.unlink(missing_ok=True)
        await board.stop()
        await runner.cleanup()
        await pico.close()
        can_host.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m simulator``; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    return run_sync(args)


def run_sync(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args))
    except OSError as exc:
        log.error("simulator cannot start: %s", exc)
        return 2
