"""`heater commission [--operator NAME] [--json] [--trip-limit-ms MS]`: the commissioning self-test of the power cut-off.

The seeds make the power cut-off "a mandatory safety feature" that "must be tested during
commissioning". This command tests it where it lives, on the Pico relay board, and then
through the platform's own FATAL path:

a. **watchdog** — kick, energise POWER_ON only (never the gas valve or the spark), stop
   kicking: the board must drop the relays and set WDT_EXPIRED within WDT_WINDOW plus a
   small margin;
b. **power cut-off** — POWER_ON again, then TRIP: contacts safe and TRIP_LATCHED within
   ``--trip-limit-ms`` (default :data:`TRIP_LIMIT_MS`);
c. **latch holds** — with the watchdog fed, POWER_ON is refused (CMD_REJECTED) and the
   power stays cut; CLEAR_FAULTS does not clear the latch; neither does a restart of the
   master (the bus closed and opened again);
d. **operator release** — the I2C adapter, started again, finds the latch and raises FATAL
   (``i2c/pico-tripped``), which latches the platform. With ``--operator`` the command then
   performs the verified operator reset through the normal path (:func:`heater.reset.main`)
   and checks that the Pico is released and the adapter is ready again.

Commissioning is a hardware self-test, so it owns the I2C bus alone: the I2C adapter is
stopped for checks a-c and started again for d. It refuses (exit 1) unless the platform
runs, is not FATAL-latched, the heater is idle (no heating job, every relay off) and the
Pico's trip latch is clear — first from the platform's views, touching nothing, then on
the board itself once the bus is taken. Whatever happens — a refusal on the board, a
failed check, a bus error, Ctrl-C — it writes all-off to RELAY_CMD and starts the I2C
adapter again if it stopped it. The first check that fails ends the run.

Exit code: 0 only when all four checks passed, including the release. Without
``--operator`` the release is reported as *pending* and the command exits 1: a heater left
FATAL-latched by its commissioning is not commissioned until an operator has reset it
(``heater reset --operator NAME``), and a script must not mistake that state for success.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import xmlrpc.client
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, TypeVar

from adapters.i2c.board import BoardError, Readback, RelayBoard
from adapters.i2c.registers import SAFE, Relays
from heater.catalogue import COMPONENTS
from heater import credentials
from heater.probes import http_json
from heater.rundir import Layout
from heater.supervision import Supervisor
from streams.auth import Role
from streams.heating.effects import HEATING_ALARM
from streams.records import alarm_id_for
from streams.settings import Settings
from streams.vault import VaultUnavailable

I2C = "i2c"
TRIP_ALARM = alarm_id_for(I2C, "pico-tripped")
CONTROL = tuple(c.name for c in COMPONENTS if c.control)

POWER_ONLY = Relays(power_on=True)
WATCHDOG_MARGIN_MS = 50.0
"""Slack over WDT_WINDOW: the bus round trip and the polling interval, not board tolerance."""
TRIP_LIMIT_MS = 50.0
"""TRIP to contacts seen safe and latched: a relay drops in ~10 ms, the rest is bus and polling.

A setting (``--trip-limit-ms``) because it depends on the relays fitted and on how promptly
the host can observe: measured from user space, a heavily loaded host only gets an
inconclusive result, and the trip cannot be repeated without an operator reset."""
POLL_S = 0.002
WATCHDOG_ATTEMPTS = 3
FATAL_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 20.0
READY_TIMEOUT_S = 60.0

PASSED, FAILED, PENDING, SKIPPED = "passed", "failed", "pending", "skipped"
INCONCLUSIVE = "inconclusive"
"""A measurement verdict only: a check is never reported as inconclusive, it is repeated or failed."""

T = TypeVar("T")


# -- the report: plain data ------------------------------------------------------------


@dataclass
class Check:
    """One check of the self-test.

    ``measured_ms`` is the timing judged against ``limit_ms`` (only the watchdog and the
    trip have one), ``elapsed_ms`` how long the check took, ``timings_ms`` its milestones.
    """

    name: str
    title: str
    status: str = SKIPPED
    measured_ms: float | None = None
    limit_ms: float | None = None
    elapsed_ms: float | None = None
    detail: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == PASSED


@dataclass
class Report:
    """Everything the command found; ``ok`` only when no refusal and every check passed."""

    run_dir: str
    operator: str | None = None
    bus: str = ""
    refused: str = ""
    interrupted: bool = False
    bus_retries: int = 0
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.refused and not self.interrupted and bool(self.checks) and all(c.passed for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def new_checks() -> list[Check]:
    """The four checks in the order they run (each starts as skipped)."""
    return [
        Check("watchdog", "watchdog drops the relays"),
        Check("power-cut-off", "TRIP cuts the power and latches"),
        Check("latch-holds", "the trip latch holds"),
        Check("operator-release", "FATAL, then release by the operator"),
    ]


def render(report: Report) -> str:
    """The human-readable report."""
    verdict = "PASSED" if report.ok else ("REFUSED" if report.refused else "FAILED")
    lines = [f"commissioning of the power cut-off: {verdict} ({report.duration_ms / 1000:.1f} s, run dir {report.run_dir})"]
    if report.bus:
        retried = f" ({report.bus_retries} transaction(s) retried after a bus error)" if report.bus_retries else ""
        lines.append(f"  I2C bus {report.bus}{retried}")
    if report.refused:
        lines.append(f"  refused: {report.refused}")
    for check in report.checks:
        shown = check.measured_ms if check.measured_ms is not None else check.elapsed_ms
        timing = "" if shown is None else f"{shown:8.1f} ms"
        limit = "" if check.limit_ms is None else f" (limit {check.limit_ms:.0f} ms)"
        lines.append(f"  [{check.status.upper():<7}] {check.title:<38} {timing}{limit}")
        if check.detail:
            lines.append(f"            {check.detail}")
        if check.timings_ms:
            lines.append("            " + ", ".join(f"{k} {v:.1f} ms" for k, v in check.timings_ms.items()))
    if report.interrupted:
        lines.append("  interrupted (Ctrl-C)")
    lines.extend(f"  note: {note}" for note in report.notes)
    return "\n".join(lines)


# -- small helpers -----------------------------------------------------------------------


class Refused(Exception):
    """A precondition does not hold: nothing was done, or everything was put back."""


class CheckFailed(Exception):
    """The board or the platform did something a check forbids; the message says what."""


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


def _wait(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.1) -> T | None:
    """``predicate()`` once it is truthy, or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value or None
        time.sleep(interval_s)


def describe(readback: Readback) -> str:
    """A readback in the register map's words, for failure messages."""
    def relays(r: Relays) -> str:
        on = [name for name, bit in (("POWER_ON", r.power_on), ("GAS_VALVE", r.gas_valve_open), ("SPARK", r.spark_on)) if bit]
        return "+".join(on) or "all off"

    s = readback.status
    flags = [name for name, bit in (
        ("WDT_EXPIRED", s.wdt_expired), ("TRIP_LATCHED", s.trip_latched), ("CMD_REJECTED", s.cmd_rejected),
        ("VALVE_STUCK", s.valve_stuck), ("WDT_ARMED", s.wdt_armed),
    ) if bit]
    return f"command {relays(readback.command)}, contacts {relays(readback.contacts)}, status {'|'.join(flags) or '0'}"


@dataclass(frozen=True)
class Span:
    """When something happened on the board, as far as the master can tell: after ``after``, by ``by`` (monotonic s)."""

    after: float
    by: float


def timed(action: Callable[[], None]) -> Span:
    """Run one board write; it took effect between sending and the acknowledgement."""
    sent = time.monotonic()
    action()
    return Span(sent, time.monotonic())


def delay_ms(action: Span, event: Span) -> tuple[float, float]:
    """Bounds of the delay between an action and the event it caused (ms): what a slow host cannot blur."""
    return _ms(max(0.0, event.after - action.by)), _ms(event.by - action.after)


def judge(lower_ms: float, upper_ms: float, limit_ms: float) -> str:
    """Passed when even the upper bound is in time, failed when even the lower bound is late.

    In between the host observed too slowly to tell (a loaded machine, not the board): the
    caller repeats the measurement where it can, and otherwise counts it as a failure.
    """
    if upper_ms <= limit_ms:
        return PASSED
    return FAILED if lower_ms > limit_ms else INCONCLUSIVE


def poll(board: RelayBoard, done: Callable[[Readback], bool], since: float, timeout_s: float) -> tuple[Readback, Span]:
    """Read contacts and status until ``done``; the readback and when the change happened.

    It happened after the last round that did not show it was sent (``since`` before the
    first) and by the reply of the round that did. Only the two registers the checks judge
    are polled (RELAY_CMD is read once at the end), so the bounds stay tight.
    """
    deadline = time.monotonic() + timeout_s
    not_before = since
    while True:
        sent = time.monotonic()
        contacts, status = board.read_contacts(), board.read_status()
        seen = time.monotonic()
        readback = Readback(command=SAFE, contacts=contacts, status=status, read_at=time.time())
        if done(readback):
            return replace(readback, command=board.read_command()), Span(not_before, seen)
        if seen > deadline:
            readback = replace(readback, command=board.read_command())
            raise CheckFailed(f"not reached within {timeout_s * 1000:.0f} ms; board shows {describe(readback)}")
        not_before = sent
        time.sleep(POLL_S)


def energise_power(board: RelayBoard) -> tuple[Span, float]:
    """Feed the watchdog, clear old faults, switch POWER_ON alone and confirm it.

    Returns the last kick and when the confirming readback was sent (the power was still on
    then). The kick comes before CLEAR_FAULTS: a watchdog left armed by the stopped adapter
    could otherwise expire between the two and make the board refuse the command.
    """
    board.kick()
    board.clear_faults()
    kick = timed(board.kick)
    board.write_relays(POWER_ONLY)
    confirming = time.monotonic()
    readback = board.read_back()
    if not readback.confirms(POWER_ONLY):
        raise CheckFailed(f"POWER_ON not confirmed by readback: {describe(readback)}")
    return kick, confirming


class PatientBoard(RelayBoard):
    """The relay board with each failed transaction tried again, counting the retries.

    The adapter's board code never retries, because a repeated write can repeat a side
    effect. Every transaction commissioning sends is idempotent (reads, kick, CLEAR_FAULTS,
    the same RELAY_CMD value, TRIP; never the RESET sequence), so one lost reply must not
    fail the self-test; the count goes into the report, since a flaky bus is a finding too.
    """

    attempts = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retries = 0

    def _read(self, register: int, operation: str) -> int:
        return self._patiently(RelayBoard._read, register, operation)

    def _write(self, register: int, value: int, operation: str) -> None:
        self._patiently(RelayBoard._write, register, value, operation)

    def _patiently(self, transaction: Callable[..., T], *args: Any) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return transaction(self, *args)
            except BoardError:
                if attempt == self.attempts:
                    raise
                self.retries += 1
                time.sleep(0.01)
        raise AssertionError("unreachable")


# -- the platform as commissioning sees it -------------------------------------------------


class Site:
    """The running platform: its supervisor, its views and the I2C bus of its adapter."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.supervisor = Supervisor(layout)
        self.bus = Settings.from_env(layout.service_env(I2C)).i2c_bus

    def view(self, name: str, path: str) -> tuple[int, dict[str, Any]]:
        """A view of a service, read with the saved login (`heater login`; any role reads views)."""
        token = credentials.bearer_or_none(self.layout.run_dir, Role.VIEWER)
        return http_json(self.layout.web_url(name) + path, timeout=2.0, token=token)

    def latch(self) -> dict[str, Any]:
        return self.view("alarms", "/latch")[1]

    def state(self, name: str) -> str:
        return str(self.supervisor.info(name)["statename"])

    def i2c_ready(self) -> bool:
        try:
            return self.state(I2C) == "RUNNING" and self.view(I2C, "/readyz")[0] == 200
        except OSError:
            return False


def check_preconditions(site: Site) -> None:
    """Refuse unless the platform runs, is not latched, the heater is idle and the Pico untripped."""
    if not site.supervisor.running():
        raise Refused(f"the platform in {site.layout.run_dir} is not running (supervisord does not answer); "
                      "start it with `heater up`")
    try:
        latch = site.latch()
        active = site.view("alarms", "/alarms")[1].get("alarms", [])
    except OSError as exc:
        raise Refused(f"AlarmsServer does not answer ({exc}); commissioning needs the platform's FATAL path") from None
    if latch.get("latched"):
        raise Refused(f"the platform is FATAL-latched ({latch.get('alarm_id')}: {latch.get('reason')}); "
                      "`heater reset --operator NAME` first")
    jobs = [a["alarm_id"] for a in (e["alarm"] for e in active) if a.get("code") == HEATING_ALARM]
    if jobs:
        raise Refused(f"the heater is not idle: a heating job is running ({', '.join(jobs)}); wait for it to end")
    if not site.i2c_ready():
        raise Refused("the I2C adapter is not running and ready; commissioning tests the cut-off through it")
    relays = site.view(I2C, "/relays")[1]
    readback = relays.get("readback")
    if readback is None:
        raise Refused("the I2C adapter has not read the Pico back yet; try again in a moment")
    energised = sorted({name for part in (readback["command"], readback["contacts"], relays["desired"])
                        for name, on in part.items() if on})
    if energised or relays["lease"]["valve_open"]:
        raise Refused(f"the heater is not idle: relays energised ({', '.join(energised) or 'gas valve lease'}); "
                      "switch the power off first")
    if readback["status"]["trip_latched"]:
        raise Refused("the Pico's trip latch is already set; an operator reset is needed before commissioning")


def check_board_idle(board: RelayBoard) -> None:
    """The same preconditions, seen on the board itself once the bus is ours."""
    board.identify()
    readback = board.read_back()
    if not (readback.command.is_safe and readback.contacts.is_safe):
        raise Refused(f"the heater is not idle: the Pico shows {describe(readback)}")
    if readback.status.trip_latched:
        raise Refused("the Pico's trip latch is already set; an operator reset is needed before commissioning")


# -- owning the bus ------------------------------------------------------------------------


class BusSession:
    """The I2C bus taken from the adapter; :meth:`give_back` always leaves the relays off and the adapter started."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.board: RelayBoard | None = None
        self.adapter_stopped = False
        self.left_tripped = False
        self.bus_retries = 0
        self.problems: list[str] = []

    def take(self) -> RelayBoard:
        """Stop the adapter (it writes all-off on its way out), then open its bus."""
        self.adapter_stopped = True
        self.site.supervisor.stop(I2C)
        try:
            self.board = PatientBoard.open(self.site.bus)
        except (OSError, ValueError) as exc:
            raise Refused(f"cannot open the I2C bus {self.site.bus!r}: {exc}") from None
        return self.board

    def reopen(self) -> RelayBoard:
        """Close the bus and open it again: what a restarted master sees."""
        assert self.board is not None
        self._close(self.board)
        self.board = None
        self.board = PatientBoard.open(self.site.bus)
        return self.board

    def _close(self, board: RelayBoard) -> None:
        self.bus_retries += getattr(board, "retries", 0)
        board.close()

    def release_bus(self) -> None:
        """Write all-off (always accepted, even tripped) and close the bus; note what could not be done."""
        board, self.board = self.board, None
        if board is None:
            return
        try:
            board.write_relays(SAFE)
            readback = board.read_back()
            self.left_tripped = readback.status.trip_latched
            if not readback.contacts.is_safe:
                self.problems.append(f"all-off written but the Pico shows {describe(readback)}")
        except BoardError as exc:
            self.problems.append(f"could not confirm all-off on the Pico ({exc}); the hardware watchdog takes the relays down")
        finally:
            self._close(board)

    def start_adapter(self) -> None:
        self.adapter_stopped = False
        self.site.supervisor.start(I2C)

    def give_back(self) -> list[str]:
        """Relays off, bus closed, adapter started again; what could not be done."""
        self.release_bus()
        if self.adapter_stopped:
            try:
                self.start_adapter()
            except Exception as exc:  # the report must say so; nothing else can be done here
                self.problems.append(f"could not start the I2C adapter again: {exc}; see `heater status`")
        return self.problems


# -- the checks ----------------------------------------------------------------------------


def check_watchdog(session: BusSession, check: Check) -> None:
    """No kick within WDT_WINDOW: the board drops the relays and sets WDT_EXPIRED by itself.

    Repeated (up to :data:`WATCHDOG_ATTEMPTS` times) only while the host was too slow to
    tell; a board that is late for sure fails at once.
    """
    board = session.board
    assert board is not None
    window_ms = board.watchdog_window_ms()
    check.limit_ms = window_ms + WATCHDOG_MARGIN_MS
    for attempt in range(1, WATCHDOG_ATTEMPTS + 1):
        kick, on_after = energise_power(board)
        readback, expired = poll(
            board, lambda rb: rb.contacts.is_safe and rb.status.wdt_expired, on_after, (check.limit_ms + 200) / 1000
        )
        lower, upper = delay_ms(kick, expired)
        check.measured_ms = upper
        check.timings_ms = {"wdt-window": float(window_ms), "lower-bound": lower}
        verdict = judge(lower, upper, check.limit_ms)
        if verdict != INCONCLUSIVE:
            break
    seen = f"{upper:.1f} ms after the last kick (at least {lower:.1f} ms; window {window_ms} ms, attempt {attempt})"
    if verdict == FAILED:
        raise CheckFailed(f"relays safe with WDT_EXPIRED only {seen}")
    if verdict == INCONCLUSIVE:
        raise CheckFailed(f"inconclusive: relays seen safe with WDT_EXPIRED {seen}; the host observed too slowly")
    check.detail = f"POWER_ON alone, then no kick: relays safe and WDT_EXPIRED {seen}"


def check_trip(session: BusSession, check: Check, limit_ms: float = TRIP_LIMIT_MS) -> None:
    """TRIP opens the power cut-off and latches it, fast (once: only an operator reset could repeat it)."""
    board = session.board
    assert board is not None
    check.limit_ms = limit_ms
    energise_power(board)
    trip = timed(board.trip)
    readback, cut = poll(board, lambda rb: rb.contacts.is_safe and rb.status.trip_latched, trip.after, 1.0)
    lower, upper = delay_ms(trip, cut)
    check.measured_ms = upper
    check.timings_ms = {"lower-bound": lower}
    verdict = judge(lower, upper, check.limit_ms)
    if verdict == FAILED:
        raise CheckFailed(f"contacts safe and TRIP_LATCHED only {upper:.1f} ms after TRIP (at least {lower:.1f} ms)")
    if verdict == INCONCLUSIVE:
        raise CheckFailed(f"inconclusive: contacts seen safe and latched {upper:.1f} ms after TRIP; the host observed too slowly")
    check.detail = f"POWER_ON confirmed, then TRIP: {describe(readback)} within {upper:.1f} ms"


def check_latch_holds(session: BusSession, check: Check) -> None:
    """Nothing short of the RESET sequence releases the latch: not a command, not CLEAR_FAULTS, not a restart."""
    started = time.monotonic()
    board = session.board
    assert board is not None
    board.kick()
    board.write_relays(POWER_ONLY)
    readback = board.read_back()
    if not (readback.contacts.is_safe and readback.command.is_safe and readback.status.trip_latched):
        raise CheckFailed(f"POWER_ON with the trip latched was not refused: {describe(readback)}")
    if not readback.status.cmd_rejected:
        raise CheckFailed(f"POWER_ON with the trip latched did not set CMD_REJECTED: {describe(readback)}")
    check.timings_ms["power-on-refused"] = _ms(time.monotonic() - started)
    board.kick()
    board.clear_faults()
    readback = board.read_back()
    if not (readback.status.trip_latched and readback.contacts.is_safe):
        raise CheckFailed(f"CLEAR_FAULTS released the trip latch: {describe(readback)}")
    check.timings_ms["clear-faults-held"] = _ms(time.monotonic() - started)
    board = session.reopen()
    board.identify()
    readback = board.read_back()
    if not (readback.status.trip_latched and readback.contacts.is_safe):
        raise CheckFailed(f"the trip latch did not survive a restart of the master: {describe(readback)}")
    check.timings_ms["restart-held"] = _ms(time.monotonic() - started)
    check.detail = "POWER_ON refused (CMD_REJECTED), CLEAR_FAULTS and a bus restart left TRIP_LATCHED set"


def check_release(session: BusSession, check: Check, operator: str | None, say: Callable[[str], None]) -> None:
    """The platform's own path: the adapter sees the latch → FATAL → (operator reset) → released and ready."""
    site = session.site
    started = time.monotonic()
    session.release_bus()
    session.start_adapter()
    say("I2C adapter started again; waiting for it to raise FATAL on the tripped Pico...")
    if not _wait(lambda: _latched_by_trip(site), FATAL_TIMEOUT_S, 0.05):
        raise CheckFailed(f"the I2C adapter did not raise FATAL {TRIP_ALARM} within {FATAL_TIMEOUT_S:.0f} s: {site.latch()}")
    check.timings_ms["fatal-latched"] = _ms(time.monotonic() - started)
    if operator is None:
        check.status = PENDING
        check.detail = (f"the platform is FATAL-latched by {TRIP_ALARM} as it must be; "
                        "release it with `heater reset --operator NAME` to finish commissioning")
        return
    if not _wait(lambda: _services_down(site), SETTLE_TIMEOUT_S):
        states = {name: site.state(name) for name in CONTROL}
        raise CheckFailed(f"control services did not stop on the FATAL within {SETTLE_TIMEOUT_S:.0f} s: {states}")
    check.timings_ms["services-down"] = _ms(time.monotonic() - started)
    say(f"performing the operator reset as {operator}...")
    reset_at = time.monotonic()
    out = io.StringIO()
    from heater import reset

    with contextlib.redirect_stdout(out):
        code = reset.main(site.layout.run_dir, operator)
    if code != 0:
        raise CheckFailed(f"the operator reset failed (exit {code}): {out.getvalue().strip()}")
    check.timings_ms["latch-released"] = _ms(time.monotonic() - started)
    if not _wait(lambda: _released_and_ready(site), READY_TIMEOUT_S, 0.1):
        raise CheckFailed(f"after the reset the Pico is not released or the I2C adapter not ready within {READY_TIMEOUT_S:.0f} s")
    check.timings_ms["i2c-ready"] = _ms(time.monotonic() - started)
    check.timings_ms["reset-to-ready"] = _ms(time.monotonic() - reset_at)
    entry = site.view("alarms", f"/alarm?id={TRIP_ALARM}")[1]
    if entry.get("active") is not False:
        raise CheckFailed(f"{TRIP_ALARM} is still active after the reset: {entry}")
    said = out.getvalue().strip().splitlines()
    check.detail = f"{TRIP_ALARM} latched the platform; reset by {operator}: Pico released, I2C adapter ready" + (
        f" ({said[-1]})" if said else "")


def _latched_by_trip(site: Site) -> bool:
    """The platform is FATAL-latched, and by the adapter's own alarm about the tripped Pico."""
    latch = site.latch()
    return bool(latch.get("latched")) and latch.get("alarm_id") == TRIP_ALARM


def _services_down(site: Site) -> bool:
    """Every control service has left after the FATAL: the reset restarts only those that stayed down."""
    return all(site.state(name) not in ("RUNNING", "STARTING", "STOPPING") for name in CONTROL)


def _released_and_ready(site: Site) -> bool:
    """The adapter is ready and its own readback of the Pico shows the latch clear."""
    if not site.i2c_ready():
        return False
    readback = site.view(I2C, "/relays")[1].get("readback")
    return readback is not None and not readback["status"]["trip_latched"]


# -- running it ----------------------------------------------------------------------------


def run_check(check: Check, body: Callable[[], None]) -> bool:
    """Run one check, timing it; a board error or a forbidden behaviour fails it. True when it passed."""
    started = time.monotonic()
    check.status = FAILED
    try:
        body()
        if check.status == FAILED:  # a body that ends otherwise (pending) has said so itself
            check.status = PASSED
    except CheckFailed as exc:
        check.detail = str(exc)
    except BoardError as exc:
        check.detail = f"I2C error talking to the Pico: {exc}"
    except OSError as exc:
        check.detail = f"the platform did not answer: {exc}"
    except KeyboardInterrupt:
        check.detail = "interrupted"
        raise
    finally:
        check.elapsed_ms = _ms(time.monotonic() - started)
    return check.passed


def run_checks(
    session: BusSession, report: Report, operator: str | None, trip_limit_ms: float, say: Callable[[str], None]
) -> None:
    """The checks in order; the first that does not pass ends the run (the rest stay skipped)."""
    watchdog, trip, holds, release = report.checks
    steps: list[tuple[Check, Callable[[], None]]] = [
        (watchdog, lambda: check_watchdog(session, watchdog)),
        (trip, lambda: check_trip(session, trip, trip_limit_ms)),
        (holds, lambda: check_latch_holds(session, holds)),
        (release, lambda: check_release(session, release, operator, say)),
    ]
    for check, body in steps:
        say(f"{check.title}...")
        if not run_check(check, body):
            return


def commission(
    run_dir: Path,
    operator: str | None = None,
    trip_limit_ms: float = TRIP_LIMIT_MS,
    say: Callable[[str], None] = lambda _: None,
) -> Report:
    """Run the self-test; the report (never raises for a refusal, a failure or Ctrl-C)."""
    started = time.monotonic()
    report = Report(run_dir=str(run_dir), operator=operator)
    try:
        layout = Layout.load(run_dir)
    except FileNotFoundError:
        report.refused = f"no platform was started in {run_dir} (start one with `heater up`)"
        return report
    try:
        if operator is not None:  # log in as the operator who will release the test's FATAL
            credentials.login(run_dir, Role.OPERATOR, operator)
        credentials.bearer(run_dir, Role.VIEWER)
    except (credentials.NotLoggedIn, VaultUnavailable, OSError) as exc:
        report.refused = f"cannot read the platform's views: {exc}"
        return report
    site = Site(layout)
    report.bus = site.bus
    session = BusSession(site)
    try:
        check_preconditions(site)
        say(f"stopping the I2C adapter: commissioning takes the bus {site.bus}")
        check_board_idle(session.take())
        report.checks = new_checks()
        run_checks(session, report, operator, trip_limit_ms, say)
    except Refused as exc:
        report.refused = str(exc)
    except BoardError as exc:
        report.refused = f"the Pico does not answer on {site.bus}: {exc}"
    except (OSError, xmlrpc.client.Fault) as exc:
        report.refused = f"the platform does not answer: {exc}"
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        report.notes.extend(session.give_back())
        report.bus_retries = session.bus_retries
        report.duration_ms = _ms(time.monotonic() - started)
    if session.left_tripped and report.checks[-1:] and report.checks[-1].status == SKIPPED:
        report.notes.append("the Pico is left tripped: the I2C adapter raises FATAL; `heater reset --operator NAME` releases it")
    return report


def main(run_dir: Path, operator: str | None = None, as_json: bool = False, trip_limit_ms: float = TRIP_LIMIT_MS) -> int:
    """Print the report; exit 0 only when every check passed (see the module docstring)."""
    report = commission(run_dir, operator, trip_limit_ms, say=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(report.as_dict()) if as_json else render(report))
    return 0 if report.ok else 1
