"""``sim`` sub-commands for the platform's console command.

``add_sim_commands(subparsers)`` adds::

    sim run   --run-dir DIR [--can-port P --i2c-port Q --control-port R --watchdog-ms N ...]
    sim inject FAULT [--sensor N] [--value V] [--sigma S] [--rate R]
    sim clear [FAULT] [--sensor N]
    sim state [--json]
    sim burst --count N [--rate R] [--sensor N] [--wait]

Each sets ``func`` (``args -> exit code``).  The control port comes from
``--control-port`` or ``HEATER_SIM_CONTROL_PORT``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import client
from .options import add_arguments

CONTROL_PORT_ENV = "HEATER_SIM_CONTROL_PORT"


def add_sim_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sim`` command tree to an ``argparse`` subparsers object."""
    sim = subparsers.add_parser("sim", help="simulated hardware: run it, inject faults, inspect it")
    commands = sim.add_subparsers(dest="sim_command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the simulator in the foreground")
    add_arguments(run)
    run.set_defaults(func=_run)

    inject = commands.add_parser("inject", help="inject a fault (or set_temperature)")
    inject.add_argument("fault", help="e.g. stuck_valve, stuck_sensor, sensor_dropout:1, overtemp, i2c_nack")
    inject.add_argument("--sensor", type=int, default=None, help="sensor index for per-sensor faults")
    inject.add_argument("--value", type=float, default=None, help="temperature for overtemp/set_temperature")
    inject.add_argument("--sigma", type=float, default=None, help="noise for noisy_sensor, degC")
    inject.add_argument("--rate", type=float, default=None, help="frames/s for garbage_frames")
    _control_port(inject)
    inject.set_defaults(func=_inject)

    clear = commands.add_parser("clear", help="clear one fault, or all")
    clear.add_argument("fault", nargs="?", default=None)
    clear.add_argument("--sensor", type=int, default=None)
    _control_port(clear)
    clear.set_defaults(func=_clear)

    state = commands.add_parser("state", help="show the hardware state")
    state.add_argument("--json", action="store_true", help="full state as JSON")
    _control_port(state)
    state.set_defaults(func=_state)

    burst = commands.add_parser("burst", help="send N WaterTemp frames at a fixed rate")
    burst.add_argument("--count", type=int, required=True)
    burst.add_argument("--rate", type=float, default=9000.0)
    burst.add_argument("--sensor", type=int, default=0)
    burst.add_argument("--wait", action="store_true", help="wait for the end and print the timing")
    _control_port(burst)
    burst.set_defaults(func=_burst)
    return sim


def _control_port(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get(CONTROL_PORT_ENV)
    parser.add_argument(
        "--control-port", type=int, default=int(env) if env else None,
        help=f"simulator control API port (default ${CONTROL_PORT_ENV})",
    )


def _port(args: argparse.Namespace) -> int:
    if args.control_port is None:
        raise SystemExit(f"no control port: pass --control-port or set {CONTROL_PORT_ENV}")
    return args.control_port


def _run(args: argparse.Namespace) -> int:
    from .app import configure_logging, run_sync

    configure_logging(args.log_level)
    return run_sync(args)


def _guarded(call: Any) -> int:
    try:
        call()
    except client.SimulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _inject(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("value", args.value), ("sigma", args.sigma), ("rate", args.rate)) if v is not None}
    return _guarded(lambda: print(json.dumps(client.inject(_port(args), args.fault, args.sensor, **params))))


def _clear(args: argparse.Namespace) -> int:
    return _guarded(lambda: print(json.dumps(client.clear(_port(args), args.fault, args.sensor))))


def _burst(args: argparse.Namespace) -> int:
    return _guarded(
        lambda: print(json.dumps(client.burst(_port(args), args.count, args.rate, args.sensor, wait=args.wait)))
    )


def _state(args: argparse.Namespace) -> int:
    def show() -> None:
        state = client.get_state(_port(args))
        if args.json:
            print(json.dumps(state, indent=2))
            return
        print(summarise(state))

    return _guarded(show)


def summarise(state: dict[str, Any]) -> str:
    """A few human lines from a ``/state`` document."""
    pico = state["pico"]
    relays = pico["relays"]
    wdt = pico["watchdog"]
    temps = ", ".join(f"{k}={v['temperature']}" for k, v in state["sensors"].items())
    faults = ", ".join(
        f["fault"] + (f":{f['sensor']}" if f["sensor"] is not None else "") for f in state["faults"]
    ) or "none"
    return "\n".join([
        f"relays     power={'ON' if relays['power_on'] else 'cut'} "
        f"valve={'OPEN' if relays['gas_valve_open'] else 'closed'} spark={'ON' if relays['spark_on'] else 'off'}",
        f"trip       {'LATCHED' if pico['trip_latched'] else 'clear'} (trips so far: {pico['trip_count']})",
        f"watchdog   window={wdt['window_ms']} ms armed={wdt['armed']} expired={wdt['expired']}",
        f"water      {state['heater']['water_temperature']} degC, flame={'yes' if state['heater']['flame'] else 'no'}",
        f"sensors    {temps}",
        f"faults     {faults}",
        f"can        sent={state['can']['sent']} bus_off={state['can']['bus_off']} clients={state['can']['clients']}",
    ])
