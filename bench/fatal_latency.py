"""FATAL reaction time on the whole local platform: over-temperature on the CAN bus → power cut at the Pico.

Starts the local platform once (``heater up``'s start sequence) and runs trials on it,
resetting it in place between them, the way an operator would:

* **FATAL path** — simulator sensors → CAN → CAN adapter → FATAL alarm on ``createAlarm``
  (over ``HeaterLimits.fatal_c``: the adapter's own limit check, and BankManager's from
  ``sensorData``, whichever comes first) → I2C adapter trips the Pico.  With the power relay energised (an ``I2CHeating`` power-on command, confirmed at
  the Pico) and DisasterDetector not watching (it would rightly call the bench's jump of
  the water a disaster during its grace after a valve closure — the I2C adapter's first
  readback at start-up is one), one sensor is made to read just under the limit
  (``fatal_c - 0.5``) until the bank believes it and DisasterDetector's window no longer
  holds the jump, then ``fatal_c + 0.5``: a plausible
  crossing (a step of more than ``implausible_jump_c`` would be disbelieved for one
  reading, which adds one sensor period).  Latency = the simulator's send time of the
  first frame carrying that value (``can.water_temp[sensor].since``) → the Pico's
  ``power_cut_at``; both are the simulator process's ``time.time()``.  After the trip:
  clear the fault (the sensor reads the water again), wait for the control services to exit
  (stay-down), ``heater reset``, wait until every control service is ready and the Pico
  released.
* **Watchdog path** — with the power relay energised and the I2C adapter kicking, the
  adapter is frozen (SIGSTOP): latency = the Pico's last valid kick → all relays safe
  (Pico timestamps); then SIGCONT and wait until the adapter has recovered (ready,
  kicking, board faults cleared).

Rounds alternate one watchdog trial and one FATAL trial.  Per-hop times of the FATAL
path come from the records: the ``sensorData`` record of the first over-temperature
frame (``received_at``, the adapter's clock; its Kafka timestamp) and the first FATAL
over-temperature alarm (its Kafka timestamp; ``first_alarm`` counts whose it was); every
process runs on this machine's clock. ``bank_hops`` follow the reading through the bank
(``sensorData`` → the bank's FATAL) where the bank raised one before it stopped.

The FATAL trials rotate over the water sensors. The operator reset ends BankManager's
FATAL over-temperature condition, so a sensor that tripped trips again after it; should
the bank still hold one after a reset (``bank_holds_fatal_after_reset`` in the JSON), the
trial uses another sensor, and when the bank holds all of them the platform is restarted
(counted in ``platform_restarts``).

With ``--bus-rate R`` the bus is saturated around every crossing: another sensor sends R
frames/s (a simulator burst) from ``BUS_LOAD_LEAD_S`` before it, so the FATAL frame queues
behind the load on the bus, in the adapter and at the bank. ``trend`` in the JSON puts the
first and the last ``TREND_TRIALS`` trials side by side, with the time a fixed piece of work
took before each trial (``machine_ms``: the machine's own drift over the run).

Prints progress, per-hop medians, then ONE JSON line.  Bounded: every wait has a
deadline and ``--budget-s`` stops starting new rounds (the JSON then says how many ran).
Run: ``python bench/fatal_latency.py [--trials N] [--budget-s S] [--bus-rate R] [--run-dir DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from bench.rundir import run_root  # noqa: E402
from bench.stats import machine_ms, percentile  # noqa: E402
from heater import credentials, reset  # noqa: E402
from heater.catalogue import COMPONENTS  # noqa: E402
from heater.platform import Platform  # noqa: E402
from heater.probes import http_json  # noqa: E402
from heater.runtime.processes import StartupTimeout  # noqa: E402
from heater.supervision import Supervisor  # noqa: E402
from simulator import client as sim  # noqa: E402
from streams.auth import Role  # noqa: E402
from streams.disaster_rules import RuleLimits  # noqa: E402
from streams.heater_config import WATER_SENSORS, HeaterLimits  # noqa: E402
from streams.records import RelayCommand  # noqa: E402

CONTROL = [c.name for c in COMPONENTS if c.control]
SENSORS = list(range(len(WATER_SENSORS)))
PLATFORM_TIMEOUT_S = 90.0
TRIP_TIMEOUT_S = 30.0  # a bank that lags after its restart has been seen to take 15 s: measure it, not drop it
EXIT_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 90.0
STEP_TIMEOUT_S = 15.0
#: An operator reset AlarmsServer refuses (the latch not shown yet, or changed since) is tried again this often,
#: this long apart.
RESET_ATTEMPTS = 10
RESET_LOOK_AGAIN_S = 0.5
RECORDS_TIMEOUT_S = 5.0
DISASTER_TIMEOUT_S = 30.0
BANK_TIMEOUT_S = 60.0  # after a restart the bank can lag the readings by many seconds
POWER_ON_WAIT_S = 3.0
VIEW_TIMEOUT_S = 5.0
SIM_RETRY_S = 10.0
MAX_CONSECUTIVE_FAILURES = 3
POLL_S = 0.05
#: With ``--bus-rate``: how long the bus is saturated before the crossing, and in all.
BUS_LOAD_LEAD_S = 1.0
BUS_LOAD_S = 3.0
BUS_QUIET_TIMEOUT_S = 30.0
#: The goal: FATAL → cut p99, over every trial and over the first and the last ``TREND_TRIALS``.
TARGET_P99_MS = 25.0
TREND_TRIALS = 50
HOPS = ("bus_to_adapter", "adapter_to_alarm", "alarm_to_cut")
#: The reading's way through BankManager (the second channel), where the bank's FATAL came at all.
BANK_HOPS = ("adapter_to_sensordata", "sensordata_to_bank_alarm")
#: FATAL over-temperature alarms, by the service that raised them.
FATAL_OVERTEMP = (b"can/overtemp-fatal/", b"bank/overtemp-fatal/")

T = TypeVar("T")


def hop_percentiles(hops: list[dict[str, Any]], names: tuple[str, ...], q: float) -> dict[str, float | None]:
    """The ``q``-th percentile of each hop in ms, over the trials that have it."""
    out: dict[str, float | None] = {}
    for name in names:
        values = [x[name] for x in hops if x[name] is not None]
        out[name] = round(percentile(values, q) * 1000, 2) if values else None
    return out


def progress(text: str) -> None:
    print(f"[fatal-latency {time.strftime('%H:%M:%S')}] {text}", flush=True)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = POLL_S) -> T:
    """Poll until ``predicate()`` is truthy; its value, or TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s (last value {value!r})")
        time.sleep(interval)


#: The run directory of the platform the bench started: views are read with its saved login.
LOGGED_IN: list[Path] = []


def login(run_dir: Path) -> None:
    """`heater login --role admin --user bench` on the platform just started (`heater reset` logs in as operator later)."""
    credentials.login(run_dir, Role.ADMIN, "bench")
    LOGGED_IN[:] = [run_dir]


def token() -> str | None:
    return credentials.bearer_or_none(LOGGED_IN[0]) if LOGGED_IN else None


def status_of(url: str) -> int:
    """HTTP status of a GET, 0 while nothing answers (in time)."""
    try:
        return http_json(url, timeout=VIEW_TIMEOUT_S, token=token())[0]
    except OSError:
        return 0


def view(url: str) -> dict[str, Any] | None:
    """A service's JSON view, with the saved login; None while it does not answer 200 in time (a loaded machine is slow)."""
    try:
        status, body = http_json(url, timeout=VIEW_TIMEOUT_S, token=token())
    except OSError:
        return None
    return body if status == 200 else None


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


def unique_ports(run_dir: Path) -> Platform:
    """A platform whose ports are all different (``free_port`` may hand out the same port twice)."""
    for _ in range(20):
        platform = Platform(run_dir)
        ports = platform.layout.ports
        if len(set(ports.values())) == len(ports):
            return platform
    raise RuntimeError("no set of distinct free ports after 20 tries")


class Wire:
    """The bench's Kafka client on a private event loop that only runs while the bench calls it.

    Between calls nothing polls, so the bench adds no load while a trial is measured; the
    records of a trial are read afterwards.
    """

    def __init__(self, bootstrap: str, keep_above_c: float) -> None:
        self.bootstrap = bootstrap
        self.keep_above_c = keep_above_c
        self.loop = asyncio.new_event_loop()
        self.readings: dict[tuple[str, int], tuple[float, float]] = {}  # (sensor, sequence) -> (received_at, kafka ts)
        self.alarms: list[tuple[str, float, float]] = []  # (alarm_id, raised_at, kafka ts) of FATAL over-temperatures
        self.timestamp_types: set[int] = set()
        self.producer, self.consumer = self.loop.run_until_complete(self._start())

    async def _start(self) -> tuple[AIOKafkaProducer, AIOKafkaConsumer]:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0)
        await producer.start()
        consumer = AIOKafkaConsumer(
            "sensorData", "createAlarm", bootstrap_servers=self.bootstrap, auto_offset_reset="latest",
            enable_auto_commit=False, fetch_max_wait_ms=50,
        )
        await consumer.start()
        return producer, consumer

    def command(self, action: str, on: bool) -> None:
        record = RelayCommand(
            command_id=uuid.uuid4().hex, action=action, on=on, issued_by="bench", issued_at=time.time(), lease_s=0.0
        )
        self.loop.run_until_complete(self.producer.send_and_wait("I2CHeating", record.dumps()))

    def collect(self, done: Callable[[], bool], timeout: float) -> bool:
        """Read what arrived since the last call until ``done()`` or the deadline."""
        return self.loop.run_until_complete(self._collect(done, timeout))

    async def _collect(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            batches = await self.consumer.getmany(timeout_ms=100, max_records=10_000)
            for tp, records in batches.items():
                for record in records:
                    self._keep(tp.topic, record)
            if done():
                return True
            if time.monotonic() > deadline:
                return False

    def _keep(self, topic: str, record: Any) -> None:
        self.timestamp_types.add(record.timestamp_type)
        try:
            value = json.loads(record.value)
        except (TypeError, ValueError):
            return
        if topic == "sensorData":
            if value.get("kind") == "temperature" and value.get("value", 0.0) >= self.keep_above_c:
                key = (value["sensor"], int(value["sequence"]))
                self.readings[key] = (float(value["received_at"]), record.timestamp / 1000.0)
        elif (record.key or b"").startswith(FATAL_OVERTEMP) and value.get("severity") == "FATAL":
            self.alarms.append((value["alarm_id"], float(value["raised_at"]), record.timestamp / 1000.0))

    def close(self) -> None:
        async def stop() -> None:
            await self.consumer.stop()
            await self.producer.stop()

        try:
            self.loop.run_until_complete(asyncio.wait_for(stop(), 10))
        except Exception as exc:  # closing must not hide the bench's result
            progress(f"kafka client close: {exc!r}")
        self.loop.close()


class Bench:
    """One platform at a time, the trials, and what they measured."""

    def __init__(self, root: Path, limits: HeaterLimits, log: Path | None = None, bus_rate: float = 0.0) -> None:
        self.root = root
        self.bus_rate = bus_rate  # frames/s of another sensor around each crossing (0: the bus at rest)
        self.log = log
        self.limits = limits
        self.pre_c = limits.fatal_c - 0.5
        self.over_c = limits.fatal_c + 0.5
        if self.over_c - self.pre_c + 1.0 > limits.implausible_jump_c:
            raise SystemExit("implausible_jump_c too small for a plausible crossing of fatal_c")
        self.disaster_rules = RuleLimits.from_heater(limits)
        if self.over_c - self.pre_c >= self.disaster_rules.rise_while_closed_c:
            raise SystemExit("rise_while_closed_c too small: DisasterDetector would call the crossing a disaster")
        self.platform: Platform | None = None
        self.wire: Wire | None = None
        self.frozen_pid: int | None = None
        self.platforms = 0
        self.fatal: list[dict[str, Any]] = []
        self.watchdog: list[dict[str, Any]] = []
        self.resets: list[dict[str, float]] = []
        self.missed = 0
        self.errors: list[str] = []
        self.held_after_reset: set[int] = set()  # sensors the bank still held FATAL after a reset (a regression)
        self.tripped: set[int] = set()  # sensors that tripped on the current platform
        self.window_ms: int | None = None
        self.timestamp_types: set[int] = set()
        self.latched = False  # the current platform is tripped and was not reset
        self.after: tuple[str, float] = ("platform-start", 0.0)  # what the control services last came back from, when

    # -- the platform ----------------------------------------------------------------

    @property
    def layout(self) -> Any:
        assert self.platform is not None
        return self.platform.layout

    @property
    def sim_port(self) -> int:
        return int(self.layout.ports["simulator"])

    def start_platform(self) -> None:
        """A fresh platform in a new run directory (one retry: a port taken in between fails a start)."""
        self.stop_platform()
        for attempt in (1, 2):
            self.platforms += 1
            run_dir = self.root / f"platform-{self.platforms}"
            progress(f"starting the platform in {run_dir}")
            self.platform = unique_ports(run_dir)
            try:
                took = self.platform.start(timeout=PLATFORM_TIMEOUT_S)
                break
            except StartupTimeout as exc:
                progress(f"platform start failed: {exc}")
                self.stop_platform()
                if attempt == 2:
                    raise
        progress(f"platform ready in {took:.1f} s")
        login(run_dir)
        self.after = ("platform-start", time.monotonic())
        self.wire = Wire(self.layout.broker_bootstrap, keep_above_c=self.pre_c)
        self.tripped = set()
        self.latched = False
        state = self.state()
        self.window_ms = int(state["pico"]["watchdog"]["window_ms"])

    def stop_platform(self) -> None:
        self.thaw()
        if self.wire is not None:
            self.timestamp_types |= self.wire.timestamp_types
            self.wire.close()
            self.wire = None
        if self.platform is not None:
            progress("stopping the platform")
            self.platform.stop()
            self.platform = None

    def thaw(self) -> None:
        if self.frozen_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.frozen_pid, signal.SIGCONT)
            self.frozen_pid = None

    def state(self) -> dict[str, Any]:
        """The simulator's state, asked again while it is too busy to answer."""
        deadline = time.monotonic() + SIM_RETRY_S
        while True:
            try:
                return sim.get_state(self.sim_port)
            except sim.SimulatorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def pico(self) -> dict[str, Any]:
        return self.state()["pico"]

    def ready(self, name: str) -> bool:
        return status_of(self.layout.web_url(name) + "/readyz") == 200

    def wait_ready(self, names: list[str], timeout: float) -> dict[str, float]:
        """Wait until every service named is ready; when each became ready (seconds from now)."""
        started = time.monotonic()
        deadline = started + timeout
        ready_after: dict[str, float] = {}
        while waiting := [n for n in names if n not in ready_after]:
            for name in waiting:
                if self.ready(name):
                    ready_after[name] = time.monotonic() - started
            if len(ready_after) < len(names):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not ready within {timeout:.0f} s: {', '.join(n for n in names if n not in ready_after)}")
                time.sleep(POLL_S)
        return ready_after

    def kicking(self) -> bool:
        watchdog = self.pico()["watchdog"]
        fresh = watchdog["last_kick_at"] is not None and time.time() - watchdog["last_kick_at"] < 0.5
        return bool(watchdog["armed"] and not watchdog["expired"] and fresh)

    def power_on(self) -> None:
        """Energise the power relay through ``I2CHeating`` and confirm it at the Pico.

        The Pico refuses the command while its watchdog is expired, which a stalled adapter
        (a loaded machine) can cause again just after it recovered: then ask again.
        """
        assert self.wire is not None
        deadline = time.monotonic() + 2 * STEP_TIMEOUT_S
        while True:
            wait_for(self.kicking, STEP_TIMEOUT_S, "I2C adapter kicking the watchdog")
            self.wire.command("power", True)
            try:
                wait_for(lambda: self.pico()["relays"]["power_on"], POWER_ON_WAIT_S, "power relay on at the Pico")
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
                progress("power-on not applied at the Pico (refused or lost); sending it again")

    # -- FATAL path ------------------------------------------------------------------

    def held_by_bank(self) -> set[int]:
        """Water sensors whose FATAL over-temperature condition the bank holds."""
        body = wait_for(lambda: view(self.layout.web_url("bank") + "/bank"), STEP_TIMEOUT_S, "bank view")
        return {
            k for k in SENSORS
            if any(c["code"] == "overtemp-fatal" and c["subject"] == WATER_SENSORS[k] for c in body.get("active", []))
        }

    def disaster_watching(self) -> bool:
        body = view(self.layout.web_url("disaster") + "/disaster")
        return body is None or bool(body.get("watching", True))

    def bank_believes(self, sensor: int, since: float) -> bool:
        """The bank holds a fresh reading near ``pre_c`` from ``sensor``, taken after ``since``."""
        body = view(self.layout.web_url("bank") + "/bank") or {}
        row = body.get("sensors", {}).get(WATER_SENSORS[sensor])
        return bool(row and row["quality"] == "fresh" and row["received_at"] > since and abs(row["value"] - self.pre_c) < 1.0)

    def fatal_trial(self, sensor: int) -> dict[str, Any] | None:
        """One over-temperature on ``sensor``; the measured record, or None when nothing tripped."""
        assert self.wire is not None
        port = self.sim_port
        sim.clear(port)
        # The pre-heat is a jump of the water; while DisasterDetector watches (the grace after a
        # valve closure, which includes the I2C adapter's first readback) it is rightly a FATAL
        # rise-while-closed / too-fast-rise.
        waited = time.monotonic()
        wait_for(lambda: not self.disaster_watching(), DISASTER_TIMEOUT_S, "DisasterDetector not watching", interval=0.2)
        waited = time.monotonic() - waited
        # The sensor, not the water, reads just under the limit: it holds that value while the
        # bank comes to believe it, where the water would cool by a degree or two (a rise
        # once the bench heats it back). After the trip DisasterDetector watches again (the
        # grace after the cut-off's valve closure), and when the reset restarts it, it
        # decides the readings it left on halting: the jump must by then be older than its
        # whole window, or those readings show the jump as a rise with the valve closed.
        set_at = time.time()
        sim.inject(port, "overtemp", sensor=sensor, value=self.pre_c)
        self.power_on()
        wait_for(lambda: self.bank_believes(sensor, set_at), BANK_TIMEOUT_S, f"bank believes water.{sensor} near the limit",
                 interval=0.1)
        time.sleep(max(0.0, set_at + self.disaster_rules.history_s - time.time()))
        self.load_bus(sensor)
        injected_at = time.time()
        sim.inject(port, "overtemp", sensor=sensor, value=self.over_c)
        try:
            state = wait_for(
                lambda: (lambda s: s if s["pico"]["trip_latched"] else None)(self.state()),
                TRIP_TIMEOUT_S, "Pico tripped", interval=0.1,
            )
        except TimeoutError:
            return None
        finally:
            bus_frames = self.bus_quiet()
        frame = state["can"]["water_temp"][str(sensor)]
        pico = state["pico"]
        cut_at = pico["timestamps"]["power_cut_at"]
        if frame["value"] != self.over_c or not injected_at - 0.01 <= frame["since"] <= cut_at:
            raise RuntimeError(f"inconsistent timestamps: injected {injected_at}, frame {frame}, cut {cut_at}")
        causes = [t["cause"] for t in pico["transitions"] if t["relay"] == "power" and not t["on"] and t["at"] == cut_at]
        trial = {
            "sensor": sensor,
            "first_frame_at": frame["since"],
            "sequence": int(frame["since_sequence"]),
            "cut_at": cut_at,
            "latency_s": cut_at - frame["since"],
            "inject_to_frame_s": frame["since"] - injected_at,
            "path": causes[0] if causes else "?",
            "disaster_wait_s": waited,
            "after": self.after[0],
            "since_ready_s": time.monotonic() - self.after[1],
            "bus_frames": bus_frames,
        }
        self.tripped.add(sensor)
        self.latched = True
        trial["hops"] = self.hops(trial)
        return trial

    def load_bus(self, sensor: int) -> None:
        """With ``bus_rate``: another sensor floods the bus (a burst), and the crossing comes
        ``BUS_LOAD_LEAD_S`` into it, when the adapter and the bank are under the full load."""
        if not self.bus_rate:
            return
        other = next(s for s in SENSORS if s != sensor)
        sim.burst(self.sim_port, int(self.bus_rate * BUS_LOAD_S), self.bus_rate, other)
        time.sleep(BUS_LOAD_LEAD_S)

    def bus_quiet(self) -> int:
        """Wait for the burst to end; how many frames it sent (0 without ``bus_rate``)."""
        if not self.bus_rate:
            return 0
        burst = wait_for(lambda: (lambda b: b if b and not b["running"] else None)(self.state()["burst"]),
                         BUS_QUIET_TIMEOUT_S, "the burst over", interval=0.1)
        return int(burst["sent"])

    def hops(self, trial: dict[str, Any]) -> dict[str, Any] | None:
        """Split one FATAL latency at the records' timestamps (seconds), if they were found."""
        assert self.wire is not None
        wire = self.wire
        name = WATER_SENSORS[trial["sensor"]]

        def reading() -> tuple[float, float] | None:
            found = wire.readings.get((name, trial["sequence"]))
            return found if found and found[0] >= trial["first_frame_at"] - 1.0 else None

        def alarms() -> list[tuple[float, str]]:
            return sorted((ts, aid.split("/", 1)[0]) for aid, raised, ts in wire.alarms
                          if aid.endswith(f"/overtemp-fatal/{name}") and raised >= trial["first_frame_at"] - 0.001)

        if not wire.collect(lambda: reading() is not None and bool(alarms()), RECORDS_TIMEOUT_S):
            return None
        received_at, sensor_ts = reading()  # type: ignore[misc]
        found = alarms()
        alarm_at, first = found[0]
        bank_at = next((ts for ts, source in found if source == "bank"), None)
        return {
            "bus_to_adapter": received_at - trial["first_frame_at"],
            "adapter_to_alarm": alarm_at - received_at,
            "alarm_to_cut": trial["cut_at"] - alarm_at,
            "adapter_to_sensordata": sensor_ts - received_at,
            "sensordata_to_bank_alarm": None if bank_at is None else bank_at - sensor_ts,
            "first_alarm": first,
        }

    def reset_in_place(self) -> dict[str, float]:
        """Fault cleared, stay-down exits, operator reset, control services ready, Pico released."""
        started = time.monotonic()
        port = self.sim_port
        sim.clear(port)  # the sensor reads the water again: ambient, as it never heated
        supervisor = Supervisor(self.layout)
        for name in CONTROL:  # `heater reset` restarts only what has already exited
            wait_for(lambda n=name: supervisor.info(n)["statename"] == "EXITED", EXIT_TIMEOUT_S, f"{name} stayed down",
                     interval=0.1)
        exited = time.monotonic()
        self.operator_reset(supervisor)
        released = time.monotonic()
        ready_after = self.wait_ready([*CONTROL, "alarms"], READY_TIMEOUT_S)
        wait_for(lambda: not self.pico()["trip_latched"], STEP_TIMEOUT_S, "Pico released")
        self.latched = False
        done = time.monotonic()
        self.after = ("reset", done)
        return {"total_s": done - started, "exit_s": exited - started, "reset_s": released - exited, "ready_s": done - released,
                **{f"ready:{name}": after for name, after in ready_after.items()}}

    def operator_reset(self, supervisor: Supervisor) -> None:
        """``heater reset``, looking again as an operator would while AlarmsServer refuses it (409).

        On a loaded machine AlarmsServer may show the latch after the Pico tripped, or a
        further FATAL may change it between the look and the reset. If one of the reset's
        1-s polls times out after the reset was issued, its steps are finished here.
        """
        for attempt in range(1, RESET_ATTEMPTS + 1):
            out = io.StringIO()
            if self.try_reset(supervisor, out):
                return
            if "reset refused (409)" not in out.getvalue() or attempt == RESET_ATTEMPTS:
                raise RuntimeError(f"operator reset failed: {out.getvalue().strip()}")
            progress(f"reset refused, looking again ({out.getvalue().strip().splitlines()[-1]})")
            time.sleep(RESET_LOOK_AGAIN_S)

    def try_reset(self, supervisor: Supervisor, out: io.StringIO) -> bool:
        """One ``heater reset``: True once the latch is released and the services restarted."""
        try:
            with contextlib.redirect_stdout(out):
                code = reset.main(self.layout.run_dir, "bench")
        except OSError as exc:
            if "issued by bench" not in out.getvalue():
                raise RuntimeError(f"operator reset not issued: {exc}") from exc
            progress(f"heater reset gave up polling ({exc}); finishing its steps")
            alarms = self.layout.web_url("alarms")
            wait_for(lambda: (view(alarms + "/latch") or {}).get("latched") is False, READY_TIMEOUT_S, "latch released",
                     interval=0.2)
            for name in CONTROL:
                info = supervisor.info(name)
                if info["statename"] == "EXITED" and info["exitstatus"] == 3:
                    supervisor.start(name)
            return True
        return code == 0

    # -- watchdog path ---------------------------------------------------------------

    def watchdog_trial(self) -> dict[str, Any]:
        """Freeze the I2C adapter with the power on: last kick → relays safe at the Pico."""
        self.power_on()
        wait_for(self.kicking, STEP_TIMEOUT_S, "kicking with the power on")
        pid = int(Supervisor(self.layout).info("i2c")["pid"])
        self.frozen_pid = pid
        os.kill(pid, signal.SIGSTOP)
        frozen_at = time.time()
        try:
            pico = wait_for(
                lambda: (lambda p: p if p["watchdog"]["expired"] and not p["relays"]["power_on"] else None)(self.pico()),
                STEP_TIMEOUT_S, "watchdog expired",
            )
        finally:
            self.thaw()
        last_kick = pico["watchdog"]["last_kick_at"]
        safe_at = pico["timestamps"]["safe_at"]
        if last_kick > frozen_at + 0.05 or safe_at < last_kick:
            raise RuntimeError(f"inconsistent watchdog timestamps: frozen {frozen_at}, kick {last_kick}, safe {safe_at}")
        causes = {t["cause"] for t in pico["transitions"] if t["at"] == safe_at}
        recovered_from = time.monotonic()
        self.wait_ready(["i2c"], STEP_TIMEOUT_S)
        wait_for(lambda: (lambda p: not p["cmd_rejected"] and not p["watchdog"]["expired"] and p["watchdog"]["armed"])(self.pico()),
                 STEP_TIMEOUT_S, "board faults cleared")
        wait_for(lambda: (view(self.layout.web_url("i2c") + "/relays") or {}).get("kicking"), STEP_TIMEOUT_S,
                 "adapter kicking")
        return {
            "latency_s": safe_at - last_kick,
            "cause": ",".join(sorted(causes)),
            "recover_s": time.monotonic() - recovered_from,
        }

    # -- the run -----------------------------------------------------------------------

    def record(self, entry: dict[str, Any]) -> None:
        if self.log is not None:
            with self.log.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    def pick_sensor(self, round_no: int) -> int | None:
        """The next water sensor in turn, unless the bank still holds FATAL for it after the reset."""
        held = self.held_by_bank()
        newly = held & self.tripped - self.held_after_reset
        if newly:
            self.held_after_reset |= newly
            progress(f"WARNING: after the operator reset BankManager still holds overtemp-fatal for "
                     f"{', '.join(WATER_SENSORS[k] for k in sorted(newly))}: that sensor cannot raise FATAL again on "
                     f"this platform; using another sensor")
        free = [k for k in SENSORS if k not in held]
        if not free:
            return None
        preferred = SENSORS[round_no % len(SENSORS)]
        return preferred if preferred in free else free[0]

    def run(self, trials: int, budget_s: float) -> bool:
        """Run up to ``trials`` rounds; False when the budget ran out first.

        A round that fails (a deadline missed, a service not answering) is recorded and the
        next one starts on a fresh platform; ``MAX_CONSECUTIVE_FAILURES`` in a row end the run.
        """
        began = time.monotonic()
        self.start_platform()
        failures = 0
        for round_no in range(trials):
            if time.monotonic() - began > budget_s:
                progress(f"budget of {budget_s:.0f} s used up after {round_no} round(s)")
                return False
            try:
                if self.latched:  # left tripped on purpose (every sensor held by the bank), or a failed round
                    progress("restarting the platform instead of a reset")
                    self.start_platform()
                self.round(round_no, trials, began, budget_s)
                failures = 0
            except (TimeoutError, RuntimeError, OSError, sim.SimulatorError) as exc:
                self.thaw()
                failures += 1
                error = f"round {round_no + 1}: {type(exc).__name__}: {exc}"
                self.errors.append(error)
                self.record({"round": round_no + 1, "error": error, "platform": self.platforms})
                progress(f"{error}; the next round starts on a fresh platform")
                self.latched = True
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(f"{failures} rounds in a row failed; last: {error}") from exc
        return True

    def round(self, round_no: int, trials: int, began: float, budget_s: float) -> None:
        """One watchdog trial, one FATAL trial, and the reset after it (unless pointless or last)."""
        dog = self.watchdog_trial()
        self.watchdog.append(dog)
        sensor = self.pick_sensor(round_no)
        if sensor is None:
            progress("the bank holds FATAL for every water sensor: restarting the platform")
            self.start_platform()
            sensor = self.pick_sensor(round_no)
            assert sensor is not None
        machine = machine_ms()
        trial = self.fatal_trial(sensor)
        if trial is not None:
            trial["machine_ms"] = machine
        line = f"round {round_no + 1}/{trials}: watchdog {dog['latency_s'] * 1000:.1f} ms"
        if trial is None:
            self.missed += 1
            self.record({"round": round_no + 1, "watchdog": dog, "fatal": None, "sensor": sensor, "platform": self.platforms})
            try:
                held = f"bank holds FATAL for {sorted(self.held_by_bank())}"
            except OSError as exc:
                held = f"bank not answering: {exc}"
            sim.clear(self.sim_port)
            raise RuntimeError(f"FATAL on water.{sensor}: NO TRIP within {TRIP_TIMEOUT_S:.0f} s ({held})")
        self.fatal.append(trial)
        self.record({"round": round_no + 1, "watchdog": dog, "fatal": trial, "platform": self.platforms})
        hops = trial["hops"]
        hop_text = (" [" + ", ".join(f"{h} {hops[h] * 1000:.1f}" for h in HOPS + BANK_HOPS if hops[h] is not None)
                    + f", first alarm: {hops['first_alarm']}]") if hops else ""
        # A reset is pointless when the bank would still hold every sensor afterwards (should it ever again).
        exhausted = bool(self.held_after_reset) and self.tripped >= set(SENSORS)
        next_round = round_no + 1 < trials and time.monotonic() - began <= budget_s
        reset_timing = self.reset_in_place() if next_round and not exhausted else None
        if reset_timing is not None:
            self.resets.append(reset_timing)
            self.record({"round": round_no + 1, "reset": reset_timing})
        progress(f"{line}; FATAL water.{sensor} {trial['latency_s'] * 1000:.1f} ms via {trial['path']}{hop_text}"
                 + (f"; reset {reset_timing['total_s']:.1f} s" if reset_timing else ""))
        if exhausted and next_round:
            progress("the bank holds FATAL for every water sensor: the next round starts on a fresh platform")

    def trend(self) -> dict[str, Any]:
        """The first and the last ``TREND_TRIALS`` trials (and resets) side by side: a run that
        slows down as the logs grow shows it here."""
        n = min(TREND_TRIALS, len(self.fatal) // 2)
        if n == 0:
            return {}
        first, last = self.fatal[:n], self.fatal[-n:]
        resets_n = min(TREND_TRIALS, len(self.resets) // 2)

        def p(trials: list[dict[str, Any]], q: float) -> float:
            return round(percentile([t["latency_s"] * 1000 for t in trials], q), 2)

        def reset_mean(resets: list[dict[str, float]], key: str = "total_s") -> float | None:
            return round(statistics.fmean(r[key] for r in resets), 2) if resets else None

        first_resets, last_resets = self.resets[:resets_n], self.resets[-resets_n:] if resets_n else []
        return {
            "trials": n,
            "first_p50_ms": p(first, 50), "last_p50_ms": p(last, 50),
            "first_p99_ms": p(first, 99), "last_p99_ms": p(last, 99),
            "first_reset_s": reset_mean(first_resets), "last_reset_s": reset_mean(last_resets),
            # The same fixed work timed before each trial: the machine's own drift over the run.
            "first_machine_ms": round(statistics.median(t["machine_ms"] for t in first), 2),
            "last_machine_ms": round(statistics.median(t["machine_ms"] for t in last), 2),
            # Which service's return after a reset slows down, if the reset does.
            "ready_after_reset_first_last_s": {name: [reset_mean(first_resets, f"ready:{name}"),
                                                      reset_mean(last_resets, f"ready:{name}")] for name in CONTROL},
        }

    def result(self, requested: int, complete: bool) -> dict[str, Any]:
        fatal = summary_ms([t["latency_s"] for t in self.fatal])
        dog = summary_ms([t["latency_s"] for t in self.watchdog])
        hops = [t["hops"] for t in self.fatal if t["hops"]]
        paths: dict[str, int] = {}
        for t in self.fatal:
            paths[t["path"]] = paths.get(t["path"], 0) + 1

        def mean(key: str) -> float:
            return round(statistics.fmean(r[key] for r in self.resets), 2) if self.resets else float("nan")

        by_after = {
            kind: {"trials": len(xs), "p50_ms": round(statistics.median(xs) * 1000, 2), "max_ms": round(max(xs) * 1000, 2)}
            for kind in ("platform-start", "reset")
            if (xs := [t["latency_s"] for t in self.fatal if t["after"] == kind])
        }
        return {
            "trials": len(self.fatal),
            "p50_ms": fatal["p50_ms"],
            "p95_ms": fatal["p95_ms"],
            "p99_ms": fatal["p99_ms"],
            "max_ms": fatal["max_ms"],
            "mean_ms": fatal["mean_ms"],
            "target_p99_ms": TARGET_P99_MS,
            "target_met": fatal["p99_ms"] <= TARGET_P99_MS,
            "trend": self.trend(),
            "hops_p50_ms": hop_percentiles(hops, HOPS, 50),
            "hops_p99_ms": hop_percentiles(hops, HOPS, 99),
            "hop_samples": len(hops),
            "first_alarm": dict(collections.Counter(x["first_alarm"] for x in hops)),
            "bank_hops_p50_ms": hop_percentiles(hops, BANK_HOPS, 50),
            "bank_hops_p99_ms": hop_percentiles(hops, BANK_HOPS, 99),
            "bank_alarms": sum(x["sensordata_to_bank_alarm"] is not None for x in hops),
            "trip_path": paths,
            "by_previous_restart": by_after,
            "missed": self.missed,
            "failed_rounds": len(self.errors),
            "errors": self.errors[:10],
            "watchdog": {
                "trials": len(self.watchdog),
                "p50_ms": dog["p50_ms"],
                "p95_ms": dog["p95_ms"],
                "p99_ms": dog["p99_ms"],
                "max_ms": dog["max_ms"],
                "window_ms": self.window_ms,
                "recover_s": round(statistics.fmean(t["recover_s"] for t in self.watchdog), 2) if self.watchdog else None,
            },
            "reset_s": mean("total_s"),
            "reset_breakdown_s": {"stay_down_exit": mean("exit_s"), "operator_reset": mean("reset_s"),
                                  "control_ready": mean("ready_s")},
            "ready_after_reset_s": {name: mean(f"ready:{name}") for name in [*CONTROL, "alarms"]},
            "resets": len(self.resets),
            "disaster_grace_wait_s": round(statistics.fmean(t["disaster_wait_s"] for t in self.fatal), 2),
            "platform_restarts": self.platforms - 1,
            "bank_holds_fatal_after_reset": bool(self.held_after_reset),
            "trials_requested": requested,
            "complete": complete,
            "crossing_c": [self.pre_c, self.over_c],
            "bus_rate_fps": self.bus_rate,
            "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="rounds: one FATAL and one watchdog trial each (default 200)")
    parser.add_argument("--budget-s", type=float, default=2250.0,
                        help="start no new round after this many seconds (default 2250: the whole run fits in 40 min)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="keep the platforms' run directories (logs) and every trial (trials.jsonl) here")
    parser.add_argument("--bus-rate", type=float, default=0.0,
                        help=f"saturate the bus: another sensor sends this many frames/s from {BUS_LOAD_LEAD_S:.0f} s "
                             f"before each crossing, {BUS_LOAD_S:.0f} s in all (default 0: the bus at rest)")
    args = parser.parse_args(argv)

    def on_term(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the clean-up below run to the end
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    limits = HeaterLimits.from_env()
    with contextlib.ExitStack() as stack:
        root = run_root(stack, args.run_dir, "bench-fatal-")
        bench = Bench(root, limits, log=root / "trials.jsonl" if args.run_dir is not None else None, bus_rate=args.bus_rate)
        load_before = os.getloadavg()[0]
        error: str | None = None
        try:
            complete = bench.run(args.trials, args.budget_s)
        except KeyboardInterrupt as exc:
            progress(f"interrupted ({exc}); reporting what was measured")
            complete = False
        except Exception as exc:  # report what was measured before the failure
            error = f"{type(exc).__name__}: {exc}"
            progress(f"FAILED: {error}")
            complete = False
        finally:
            bench.stop_platform()
    if not bench.fatal:
        print(json.dumps({"trials": 0, "error": error or "no FATAL trial completed"}), flush=True)
        return 1
    result = bench.result(args.trials, complete)
    result["load_avg_1m_before"] = round(load_before, 2)
    if error is not None:
        result["error"] = error
    progress("per-hop medians (ms): " + ", ".join(f"{h} {v}" for h, v in result["hops_p50_ms"].items()))
    progress(f"Kafka timestamp types seen (0 CreateTime, 1 LogAppendTime): {sorted(bench.timestamp_types)}")
    print(json.dumps(result), flush=True)
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
