"""The `heater` command: one entry point to the whole platform."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heater", description="Gas water heater controller platform")
    parser.add_argument("--run-dir", type=Path, default=None, help="platform run directory (default: $HEATER_RUN_DIR or .run)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the whole local platform in the foreground (Ctrl-C stops it)")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds allowed to become ready")

    worker = sub.add_parser("worker", help="run one service (what Kubernetes runs)")
    worker.add_argument("name", help="service name, e.g. alarms")

    status = sub.add_parser("status", help="state of every component of the local platform")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    heat = sub.add_parser("heat", help="run one heating cycle to a target temperature (exit code: the job's)")
    heat.add_argument("--target", type=float, required=True, help="target water temperature, °C")

    login = sub.add_parser("login", help="get an API token with a role (viewer, operator, admin) for the other commands")
    login.add_argument("--role", default="viewer", choices=["viewer", "operator", "admin"], help="default: viewer")
    login.add_argument("--user", default=None, help="local platform: who you are (default: your login name)")

    sub.add_parser("dashboard", help="print a one-time link that opens the status page in a browser (needs `heater login`)")

    reset = sub.add_parser("reset", help="operator reset of the FATAL latch (signed, one-time)")
    reset.add_argument("--operator", default=None,
                       help="local platform: log in as this operator first (same as `heater login --role operator --user NAME`); "
                            "without it the saved login is used")

    commission = sub.add_parser("commission", help="self-test of the power cut-off on the Pico (trips it, latching FATAL on purpose)")
    commission.add_argument("--operator", default=None, help="who releases the test's FATAL with the operator reset (without it: left latched, exit 1)")
    commission.add_argument("--json", action="store_true", help="machine-readable report")
    commission.add_argument("--trip-limit-ms", type=float, default=50.0, help="TRIP to power seen cut and latched (default 50)")

    replay = sub.add_parser("replay", help="record a topic to JSON lines, or play a recording into a topic (any Kafka)")
    replay_actions = replay.add_subparsers(dest="replay_command", required=True, metavar="ACTION")
    bound = "offset:N, epoch:SECONDS or an ISO-8601 time with zone (2026-12-03T07:00:00Z)"
    record = replay_actions.add_parser("record", help="write every partition of a topic, over a range, to a file")
    record.add_argument("--topic", required=True, help="topic to record")
    record.add_argument("--from", dest="start", metavar="FROM", help=f"first record (inclusive): {bound}; default: the log's start")
    record.add_argument("--to", dest="stop", metavar="TO", help="end (exclusive), same forms; default: the log's end when recording starts")
    record.add_argument("--out", required=True, type=Path, help="JSON-lines file to write")
    record.add_argument("--bootstrap", default=None, help="broker host:port (default: from $HEATER_BROKER_URL)")
    play = replay_actions.add_parser("play", help="produce recordings into topics: same partitions, keys, headers, timestamps")
    play.add_argument("files", nargs="+", type=Path, metavar="FILE",
                      help="files written by `heater replay record`; several play together, in timestamp order")
    play.add_argument("--topic", default=None,
                      help="topic to play one recording into (it must exist); default: the topic it was recorded from")
    pace = play.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="the original gaps between records divided by N (default 1)")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="no gaps between records")
    play.add_argument("--filter", action="append", metavar="KEY", help="play only records with this key (repeatable)")
    play.add_argument("--skip-bad-lines", action="store_true",
                      help="leave out malformed record lines, reporting each line number (default: refuse the file)")
    play.add_argument("--bootstrap", default=None, help="broker host:port (default: from $HEATER_BROKER_URL)")

    trace = sub.add_parser("trace", help="one trace from the run's span files as a timeline (no ID: the newest traces)")
    trace.add_argument("trace_id", nargs="?", default=None, metavar="ID", help="trace id (32 hex digits)")
    trace.add_argument("--last-fatal", action="store_true", help="the newest trace that handled a FATAL alarm")
    trace.add_argument("--limit", type=int, default=20, help="traces listed without an ID (default 20)")

    runtime = sub.add_parser("runtime", help="run the embedded broker, Vault or simulator (used by `heater up`)")
    runtime.add_argument("component", choices=["broker", "vault", "simulator"])

    from simulator.cli import add_sim_commands

    add_sim_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command in ("worker", "runtime"):
        from heater.runtime.processes import die_with_process_manager

        die_with_process_manager()
    if args.command == "worker":  # the process of every service: it needs no run directory, nor its imports
        return run_worker(args.name)
    if args.command == "runtime":
        from heater.runtime.launch import exec_component

        exec_component(args.component)
    from heater.rundir import default_run_dir

    run_dir = args.run_dir or default_run_dir()
    if args.command == "up":
        from heater import platform

        return platform.run(run_dir, timeout=args.timeout)
    if args.command == "status":
        from heater import status

        return status.main(run_dir, args.json)
    if args.command == "heat":
        from heater import heat

        return heat.main(run_dir, args.target)
    if args.command == "login":
        from heater import credentials

        return credentials.main(run_dir, args.role, args.user)
    if args.command == "dashboard":
        from heater import dashboard_link

        return dashboard_link.main(run_dir)
    if args.command == "reset":
        from heater import reset

        return reset.main(run_dir, args.operator)
    if args.command == "commission":
        from heater import commission

        return commission.main(run_dir, args.operator, args.json, args.trip_limit_ms)
    if args.command == "replay":
        from heater import replay

        if not args.verbose:  # the command reports a broker problem once itself; aiokafka logs every retry
            logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        if args.replay_command == "record":
            return replay.record_main(args.topic, args.start, args.stop, args.out, bootstrap=args.bootstrap)
        speed = None if args.as_fast_as_possible else args.speed
        return replay.play_main(args.files, args.topic, speed=speed, keys=args.filter, bootstrap=args.bootstrap,
                                skip_bad_lines=args.skip_bad_lines)
    if args.command == "trace":
        from heater import traces

        return traces.main(run_dir, args.trace_id, args.last_fatal, args.limit)
    if args.command == "sim":
        if getattr(args, "control_port", "absent") is None:
            args.control_port = _simulator_port(run_dir)
        return args.func(args)
    return 2


#: Edge adapters and the HomeKit bridge are plain asyncio programs, not Faust apps: name → module with ``main() -> int``.
ADAPTERS: dict[str, str] = {
    "can": "adapters.can.service",
    "i2c": "adapters.i2c.service",
    "homekit": "homekit.service",
    "secrets": "streams.secrets_rotator",
}


def run_worker(name: str) -> int:
    """One service or adapter by name, as the process manager or Kubernetes runs it."""
    from heater.catalogue import BY_NAME
    from streams import exitcodes, tracing

    if name in BY_NAME and BY_NAME[name].niceness:
        set_niceness(name, BY_NAME[name].niceness)

    try:  # before the service's module is imported: a tracing setting that cannot work is a clear error
        tracing.tracer(name)
    except tracing.TracingUnavailable as exc:
        logging.getLogger("heater").error("%s: %s", name, exc)
        return exitcodes.CONFIG
    problem = tls_problem(name)
    if problem:
        logging.getLogger("heater").error("%s: %s", name, problem)
        return exitcodes.CONFIG
    if name in ADAPTERS:
        import importlib

        from streams.lifecycle import freeze_imported_objects

        adapter = importlib.import_module(ADAPTERS[name])
        freeze_imported_objects()
        return adapter.main()
    from streams import worker

    return worker.run(name)


def set_niceness(name: str, niceness: int) -> None:
    """Take the service's place in the CPU's queue (:attr:`heater.catalogue.Component.niceness`).

    Going before the platform's own priority needs CAP_SYS_NICE; a process without it runs at
    the priority it has, slower to the power cut on a busy machine but no less safe.
    """
    try:
        os.nice(niceness)
    except PermissionError:
        logging.getLogger("heater").warning(
            "%s: runs at nice %d, not %+d: raising a process's priority needs CAP_SYS_NICE", name,
            os.getpriority(os.PRIO_PROCESS, 0), niceness)


def tls_problem(name: str) -> str:
    """Why the service cannot serve its API with mTLS ("" when it can): settings, or its certificate files."""
    from streams.settings import Settings, SettingsError
    from streams.tls import TLSFiles, TLSMaterialError

    try:
        settings = Settings.from_env()
        if settings.tls == "on":
            TLSFiles(settings.tls_dir_for(name)).server_context()
    except (SettingsError, TLSMaterialError) as exc:
        return str(exc)
    return ""


def _simulator_port(run_dir: Path) -> int | None:
    """`heater sim ...` talks to this platform's simulator unless told otherwise."""
    from heater.rundir import Layout

    try:
        return Layout.load(run_dir).ports["simulator"]
    except (FileNotFoundError, KeyError):
        return None


if __name__ == "__main__":
    sys.exit(main())
