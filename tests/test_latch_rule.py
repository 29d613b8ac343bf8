"""The FATAL latch rule, pure (streams.latch): a reset releases exactly the occurrences it names.

Hand-written cases first, then a stateful property test that drives the rule through random
interleavings of raises, out-of-order and repeated deliveries, resets, restarts and replays.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from streams.bank_rules import OVERTEMP, Bank, Reading
from streams.latch import LATCH_KEY, FatalVerdict, LatchState, LatchView, Occurrence, is_reset_key, not_named
from streams.records import Alarm, PlatformLatch


def fatal(alarm_id: str, at: float, occurrence: str = "") -> Alarm:
    source, code = alarm_id.split("/")[:2]
    return Alarm(alarm_id=alarm_id, source=source, code=code, severity="FATAL", message=f"{alarm_id} at {at}",
                 raised_at=at, occurrence=occurrence)


def occ(alarm: Alarm) -> Occurrence:
    return Occurrence.of(alarm)


A = fatal("bank/overtemp-fatal/water.0", 100.0)
B = fatal("disaster/over-limit/job-7", 99.5)  # raised half a second before the reset is issued


def test_a_fatal_raised_before_a_reset_and_delivered_after_it_latches() -> None:
    state = LatchState(trip_count=3)
    assert state.on_fatal(occ(A)) is FatalVerdict.NEW
    shown = set(state.latching)  # what the operator sees when issuing the reset (B not yet delivered)
    outcome = state.on_reset("r1", shown, 3)
    assert outcome.released == (A.occurrence_id,) and not state.latched
    assert state.on_fatal(occ(B)) is FatalVerdict.NEW, "B's timestamp is before the reset: it latches all the same"
    assert state.latched and list(state.latching) == [B.occurrence_id]


def test_a_fatal_delivered_between_showing_and_applying_stays_latched() -> None:
    state = LatchState()
    state.on_fatal(occ(A))
    shown = set(state.latching)
    state.on_fatal(occ(B))
    assert not state.shows(shown, None), "what the operator saw has changed: POST /reset answers 409"
    outcome = state.on_reset("r1", shown, None)
    assert outcome.released == (A.occurrence_id,) and outcome.remaining == (B.occurrence_id,) and state.latched


def test_a_replayed_occurrence_does_not_latch_again() -> None:
    state = LatchState()
    state.on_fatal(occ(A))
    state.on_reset("r1", [A.occurrence_id], None)
    assert state.on_fatal(occ(A)) is FatalVerdict.RELEASED and not state.latched


def test_a_persisting_condition_is_a_new_occurrence_and_latches_again() -> None:
    state = LatchState()
    state.on_fatal(occ(A))
    state.on_reset("r1", [A.occurrence_id], None)
    again = fatal(A.alarm_id, 100.5)  # the next reading still over the limit
    assert state.on_fatal(occ(again)) is FatalVerdict.NEW and state.latched


def test_a_second_reset_releases_the_second_occurrence() -> None:
    state = LatchState()
    state.on_fatal(occ(A))
    state.on_reset("r1", [A.occurrence_id], None)
    state.on_fatal(occ(B))
    assert state.on_reset("r1-again", [A.occurrence_id], None).refused == "it names no FATAL occurrence that latches"
    assert state.on_reset("r2", [B.occurrence_id], None).released == (B.occurrence_id,)
    assert not state.latched and state.released == {A.occurrence_id: "r1", B.occurrence_id: "r2"}


def test_a_reset_for_another_trip_is_refused() -> None:
    state = LatchState(trip_count=5)
    state.on_fatal(occ(A))
    outcome = state.on_reset("r1", [A.occurrence_id], 4)
    assert "tripped again" in outcome.refused and state.latched
    assert not state.shows([A.occurrence_id], 4) and state.shows([A.occurrence_id], 5)


def test_a_named_occurrence_is_its_sources_own_name_when_it_gives_one() -> None:
    tripped = fatal("i2c/pico-tripped", 50.0, occurrence="trip-7")
    assert tripped.occurrence_id == "i2c/pico-tripped#trip-7"
    assert fatal("i2c/pico-tripped", 80.0, occurrence="trip-7").occurrence_id == tripped.occurrence_id, \
        "raised again after a restart, for the same trip: the same occurrence"


def test_the_view_follows_alarms_and_the_releases_alarms_server_records() -> None:
    view = LatchView()
    view.on_alarm(A)
    view.on_alarm(Alarm(alarm_id="bank/overtemp-warning/water.0", source="bank", code="overtemp-warning",
                        severity="WARNING", message="water 61 C", raised_at=99.0))
    assert view.latched and view.fatal_alarm_id == A.alarm_id and not_named(view, []) == [A.occurrence_id]
    state = LatchState()
    state.on_fatal(occ(A))
    state.on_reset("r1", [A.occurrence_id], None)
    view.on_latch(state.to_record(101.0, "alice", "r1"))
    assert not view.latched and view.released_by == "alice"
    view.on_alarm(B)
    assert view.latched and view.reason.startswith(f"FATAL {B.alarm_id}")
    assert not_named(view, [A.occurrence_id]) == [B.occurrence_id]


def test_a_latched_record_that_names_no_occurrence_still_latches() -> None:
    view = LatchView()
    view.on_latch(PlatformLatch(latched=True, alarm_id="bank/x", reason="water 97 C", changed_at=5.0, changed_by="alarms"))
    assert view.latched
    assert LatchState.from_record(PlatformLatch(latched=True, alarm_id="bank/x", reason="r", changed_at=5.0,
                                                changed_by="alarms")).latched


def released_and_reset(state: LatchState, n: int) -> str:
    alarm = fatal("bank/overtemp-fatal/water.0", 100.0 + n)
    state.on_fatal(occ(alarm))
    assert not state.on_reset(f"r{n}", [alarm.occurrence_id], None, {"sensorData:0": 10 * n}).refused
    return alarm.occurrence_id


def test_the_records_written_stay_small_however_many_resets_came_before() -> None:
    """Every FATAL and reset writes a few hundred bytes; the history is in one record per reset, each written once."""
    state, table, sizes = LatchState(), {}, []
    for n in range(300):
        released_and_reset(state, n)
        written = state.to_records(1000.0 + n, "alice", f"r{n}")
        state.recorded()
        assert [key for key, _ in written] == [f"reset/r{n}", LATCH_KEY]
        table.update(written)
        sizes.append(sum(len(record.dumps()) for _, record in written))
    assert max(sizes) < 1000 and max(sizes) - min(sizes) < 40, "only the numbers grow by a digit"
    assert state.to_records(2000.0, "alarms") == [(LATCH_KEY, state.to_record(2000.0, "alarms"))], \
        "nothing left to record"
    rebuilt = LatchState.from_records(table[LATCH_KEY], [r for key, r in table.items() if is_reset_key(key)])
    assert (rebuilt.released, rebuilt.covered, rebuilt.unrecorded) == (state.released, state.covered, set())
    view = LatchView()
    for record in table.values():
        view.on_latch(record)
    fifth = fatal("bank/overtemp-fatal/water.0", 105.0).occurrence_id
    assert view.released == state.released and view.covered_by_release(fifth) == {"sensorData:0": 50}


def test_a_latch_that_kept_every_release_in_one_record_is_written_out_once_one_row_per_reset() -> None:
    """A table from before one row per reset: its releases are kept, and each reset gets its row at the next write."""
    old = LatchState()
    keys = [released_and_reset(old, n) for n in range(3)]
    whole = old.to_record(500.0, "alice", "r2")
    # as it was written: every release and every cover in the one record
    whole.released, whole.covered = dict(old.released), {r: dict(p) for r, p in old.covered.items()}
    state = LatchState.from_record(whole)
    assert state.on_fatal(occ(fatal("bank/overtemp-fatal/water.0", 100.0))) is FatalVerdict.RELEASED
    assert state.unrecorded == {"r0", "r1", "r2"}
    written = dict(state.to_records(600.0, "alarms"))
    state.recorded()
    assert sorted(written) == [LATCH_KEY, "reset/r0", "reset/r1", "reset/r2"]
    assert written["reset/r1"].released == {keys[1]: "r1"}
    assert written["reset/r1"].covered == {"r1": {"sensorData:0": 10}}
    assert [key for key, _ in state.to_records(700.0, "alarms")] == [LATCH_KEY]


# -- a replayed incident ends -----------------------------------------------------------------


def incident(t0: float) -> list[Reading]:
    """Two sensors far over the FATAL limit for 2 s, then back to normal."""
    hot = [Reading(s, "temperature", 96.0, t0 + i * 0.1) for i in range(20) for s in ("water.0", "water.1")]
    cool = [Reading(s, "temperature", 40.0, t0 + 4.0 + i * 2.0) for i in range(3) for s in ("water.0", "water.1")]
    return hot + cool


def run_incident(bank: Bank, state: LatchState, readings: list[Reading], lag: int = 8) -> int:
    """The bank decides readings that keep arriving ``lag`` ahead of it. On a latch it halts; the operator
    resets what is shown, covering the input as far as it has arrived, and the bank goes on from where it
    stopped. Returns how many times the platform latched."""
    latches = 0
    for offset, reading in enumerate(readings):
        for effect in bank.reading(reading, ("sensorData:0", offset)):
            if effect.kind == "raise" and effect.code == OVERTEMP["FATAL"]:
                if state.on_fatal(occ(fatal(effect.alarm_id, effect.at))) is FatalVerdict.NEW:
                    latches += 1
        if state.latched:
            arrived = min(len(readings), offset + 1 + lag)
            reset = f"r{latches}"
            assert not state.on_reset(reset, list(state.latching), None, {"sensorData:0": arrived}).refused
            bank.released = {key: state.covered[reset_id] for key, reset_id in state.released.items()}
    return latches


def test_a_replayed_incident_with_several_rules_ends() -> None:
    state = LatchState()
    readings = incident(1000.0)
    latches = run_incident(Bank(), state, readings)
    assert 2 <= latches <= 2 * (1 + 40 // 8), "each sensor latched, and again while hot past what a reset covered"
    assert not state.latched
    replayed = Bank()  # a restart from before the incident: the same readings decided again
    replayed.released = {key: state.covered[reset_id] for key, reset_id in state.released.items()}
    assert run_incident(replayed, state, readings) == 0, "every occurrence of the replay was released or covered"


# -- the stateful property --------------------------------------------------------------------


#: The newest records of the latch now a restarted service reads here. The platform watch reads 8;
#: the rule holds for any number, and a small one lets a short run pass over records.
NEWEST_READ = 2


class LatchMachine(RuleBasedStateMachine):
    """AlarmsServer's latch, its records, and one service's view, driven by random interleavings.

    AlarmsServer writes its records as it does on a platform (:meth:`LatchState.to_records`):
    to its table, and to ``platformLatch``, which a service follows live and reads at its
    start the way the platform watch does (every reset's record, the newest records of the
    latch now), or compacted to one record per key.

    Invariant: the power can be on only when every FATAL occurrence delivered so far was
    named by a reset issued while AlarmsServer showed it; the view agrees with AlarmsServer.
    """

    @initialize()
    def start(self) -> None:
        self.state = LatchState(trip_count=0)
        self.view = LatchView()
        self.raised: list[Alarm] = []
        self.delivered: list[Alarm] = []
        self.issued: dict[str, tuple[frozenset[str], int | None]] = {}
        self.pending: list[str] = []
        self.pico_tripped = False
        self.clock = 1000.0
        self.table: dict[str, PlatformLatch] = {}
        self.log: list[tuple[str, PlatformLatch]] = []

    def _write(self, changed_by: str, reset_id: str = "", publish: bool = True) -> None:
        for key, record in self.state.to_records(self.clock, changed_by, reset_id):
            self.table[key] = record
            if publish or is_reset_key(key):
                self.log.append((key, record))
                self.view.on_latch(record)
        self.state.recorded()

    def _deliver(self, alarm: Alarm) -> None:
        self.delivered.append(alarm)
        self.view.on_alarm(alarm)
        if self.state.on_fatal(occ(alarm)) is FatalVerdict.NEW:
            self._write("alarms")
            if not self.pico_tripped:
                self.pico_tripped = True
                self.state.trip_count = (self.state.trip_count or 0) + 1
                self._write("alarms", self.table[LATCH_KEY].reset_id, publish=False)

    @rule(source=st.sampled_from(["bank/overtemp-fatal/water.0", "disaster/over-limit/job-1", "i2c/valve-stuck"]),
          back=st.floats(min_value=0.0, max_value=5.0))
    def raise_fatal(self, source: str, back: float) -> None:
        """A FATAL raised at a time up to 5 s in the past (a service lagging behind)."""
        self.clock += 0.5
        self.raised.append(fatal(source, self.clock - back))

    @precondition(lambda self: bool(self.raised))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """Any raised FATAL, in any order, any number of times (replays after restarts)."""
        self._deliver(data.draw(st.sampled_from(self.raised)))

    @precondition(lambda self: self.state.latched)
    @rule()
    def issue_reset(self) -> None:
        reset_id = f"r{len(self.issued)}"
        self.issued[reset_id] = (frozenset(self.state.latching), self.state.trip_count)
        self.pending.append(reset_id)

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def apply_reset(self, data: st.DataObject) -> None:
        reset_id = data.draw(st.sampled_from(self.pending))
        self.pending.remove(reset_id)
        named, trip = self.issued[reset_id]
        outcome = self.state.on_reset(reset_id, named, trip)
        if outcome.refused:
            return
        if not self.state.latched:
            self.pico_tripped = False
        self._write("alice", reset_id)

    @rule()
    def restart_alarms_server(self) -> None:
        """AlarmsServer restarts from its table (the latch now, every reset's row) and replays what it was delivered."""
        resets = [record for key, record in self.table.items() if is_reset_key(key)]
        self.state = LatchState.from_records(self.table.get(LATCH_KEY), resets)
        assert not self.state.unrecorded, "every reset has its own row"
        for alarm in self.delivered:
            assert self.state.on_fatal(occ(alarm)) is not FatalVerdict.NEW, "a replay never latches anew"

    @rule(compacted=st.booleans())
    def restart_service(self, compacted: bool) -> None:
        """A service's view rebuilt from the topics: every FATAL alarm, then the latch records a watch reads at its
        start — every reset's, and the newest of the latch now — from the log as written or compacted."""
        self.view = LatchView()
        for alarm in self.delivered:
            self.view.on_alarm(alarm)
        log = list(self.table.items()) if compacted else self.log
        for offset, (key, record) in enumerate(log):
            if offset >= len(log) - NEWEST_READ or is_reset_key(key):
                self.view.on_latch(record)

    @invariant()
    def power_on_only_when_every_occurrence_was_named_while_shown(self) -> None:
        if not hasattr(self, "state"):
            return
        if not self.state.latched:
            for alarm in self.delivered:
                reset_id = self.state.released.get(alarm.occurrence_id)
                assert reset_id is not None, f"{alarm.occurrence_id} delivered, never released, yet not latched"
                assert alarm.occurrence_id in self.issued[reset_id][0], "released by a reset that did not name it"
        assert self.pico_tripped or not self.state.latched

    @invariant()
    def the_view_agrees_with_alarms_server(self) -> None:
        if not hasattr(self, "state"):
            return
        assert self.view.latched == self.state.latched

    @invariant()
    def every_record_is_small_whatever_came_before(self) -> None:
        """A record holds the latch now and at most one reset's releases, never the history."""
        if not hasattr(self, "state"):
            return
        for _, record in self.log[-3:]:
            assert set((record.released or {}).values()) <= {record.reset_id}
            assert set(record.covered or {}) <= {record.reset_id}


TestLatchMachine = LatchMachine.TestCase
TestLatchMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
