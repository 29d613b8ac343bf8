"""The ledger's rules, without Kafka: where input resumes, what a step commits and in which order,
and what a restart completes. Expectations are written by hand; the end-to-end kill -9 proofs
are in the services' own test modules."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any, Iterator

import pytest
from aiokafka.errors import KafkaError
from faust.streams import _current_event
from faust.types import TP

from streams.consistency import (GROUP_MAX_AGE_S, GROUP_MAX_INPUTS, SKIP_WITHOUT_SEEKING, Effect, Ledger, LedgerRow, Verdict,
                                 Write, judge, restart_position, same_log)


@pytest.mark.parametrize(
    ("expected", "offset", "verdict"),
    [
        (None, 17, Verdict.ADMIT),  # no state yet: the first message is the start
        (5, 5, Verdict.ADMIT),
        (5, 4, Verdict.HELD),  # a replay of what the state holds
        (5, 0, Verdict.HELD),
        (5, 6, Verdict.AHEAD),  # the consumer skipped input the state never saw
        (5, 400, Verdict.AHEAD),
    ],
)
def test_judge(expected: int | None, offset: int, verdict: Verdict) -> None:
    assert judge(expected, offset) is verdict


@pytest.mark.parametrize(
    ("expected", "earliest", "resume"),
    [
        (252, 0, 252),  # ordinary restart: where the state ends
        (10, 30, 30),  # retention removed unread input: resume at the log's start
        (0, 0, 0),  # an empty log, nothing read
    ],
)
def test_restart_position(expected: int, earliest: int, resume: int) -> None:
    assert restart_position(expected, earliest) == resume


@pytest.mark.parametrize(
    ("recorded", "current", "same"),
    [
        ("local-a", "local-a", True),
        ("local-a", "local-b", False),  # the broker started over: the positions count in a gone log
        ("", "local-b", True),  # written without an identity (a real Kafka cluster): no evidence
        ("local-a", None, True),  # the broker is not answering: nothing known yet
    ],
)
def test_same_log(recorded: str, current: str | None, same: bool) -> None:
    assert same_log(recorded, current) is same


def test_row_round_trip() -> None:
    row = LedgerRow(7, {"sensorData:0": 41}, [Write("t", "k", {"a": 1}), Write("t", "gone", deleted=True)],
                    [Effect("createAlarm", "bank/x", '{"a":1}')], settled=False)
    assert LedgerRow.from_row(row.to_row()) == row
    assert LedgerRow.from_row(None) == LedgerRow()


# -- a ledger over stand-in tables: the order of what a step does ---------------------------


class FakeTable(dict):  # type: ignore[type-arg]
    value_type = None

    def __init__(self, name: str, journal: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.name = name
        self._journal = journal

    def __setitem__(self, key: str, value: Any) -> None:
        self._journal.append((f"{self.name}[{key}]", value))
        super().__setitem__(key, value)


class FakeConsumer:
    def __init__(self) -> None:
        self.assigned: set[Any] = set()
        self.seeks: list[tuple[Any, int]] = []
        self.highwaters: dict[Any, int] = {}

    def assignment(self) -> set[Any]:
        return self.assigned

    def highwater(self, tp: Any) -> int | None:
        return self.highwaters.get(tp)

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        return {tp: 0 for tp in tps}

    async def seek_wait(self, partitions: dict[Any, int]) -> None:
        self.seeks.extend(partitions.items())


class FakeIdentity:
    """The broker's log identity as :class:`streams.log_identity.LogIdentity` reports it."""

    def __init__(self, current: str) -> None:
        self.current: str | None = current

    def start(self) -> None:
        pass

    async def verified(self) -> str:
        assert self.current is not None
        return self.current


class FakeTables(dict):  # type: ignore[type-arg]
    """Faust's table manager: the tables by name, and their changelogs."""

    @property
    def changelog_topics(self) -> set[str]:
        return {f"{name}-changelog" for name in self}


class FakeApp:
    """Tables are dicts; a send is recorded and its future resolved at once, or refused."""

    def __init__(self) -> None:
        self.journal: list[tuple[str, Any]] = []
        self.tables: FakeTables = FakeTables()
        self.refuse = 0
        self.consumer = FakeConsumer()

    def Table(self, name: str, **_: Any) -> FakeTable:  # noqa: N802 - Faust's name
        return self.tables.setdefault(name, FakeTable(name, self.journal))

    async def send(self, topic: str, key: bytes, value: bytes, **_: Any) -> "asyncio.Future[Any]":
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.refuse:
            self.refuse -= 1
            future.set_exception(KafkaError("UnknownError"))
        else:
            self.journal.append((f"send {topic}", (key, value)))
            future.set_result(None)
        return future


def fresh(app: FakeApp, identity: FakeIdentity | None = None, group_inputs: bool = False,
          quiet_runs: bool = False) -> tuple[Ledger, Any]:
    ledger = Ledger(app, "svc", log_identity=identity, group_inputs=group_inputs,  # type: ignore[arg-type]
                    quiet_runs=quiet_runs)
    data = ledger.tracked(app.Table("data"))  # type: ignore[arg-type]
    return ledger, data


def test_a_step_writes_its_row_first_then_its_tables_then_sends() -> None:
    async def scenario() -> list[tuple[str, Any]]:
        app = FakeApp()
        ledger, data = fresh(app)
        await ledger.recover()
        async with ledger.step() as step:
            data["a"] = 1
            assert data["a"] == 1 and "a" not in app.tables["data"], "the step sees its write; the table not yet"
            await step.owe("createAlarm", b"svc/x", b"{}")
            assert app.journal == []
        return app.journal

    journal = asyncio.run(scenario())
    assert [what for what, _ in journal] == ["svc-ledger[ledger]", "data[a]", "send createAlarm"]
    row = journal[0][1]
    assert row["seq"] == 1 and row["writes"] == [{"t": "data", "k": "a", "d": 1, "x": False}]
    assert row["effects"] == [["createAlarm", "svc/x", "{}"]] and row["settled"] is False


def test_a_restart_completes_a_half_applied_step_and_sends_what_it_owes() -> None:
    """Killed after the row was written, before its table write and its send."""

    async def scenario() -> FakeApp:
        app = FakeApp()
        app.Table("data")
        app.Table("svc-ledger")["ledger"] = LedgerRow(
            3, {"in:0": 12}, [Write("data", "a", 5)], [Effect("createAlarm", "svc/x", "{}")], settled=False
        ).to_row()
        app.journal.clear()
        ledger, _ = fresh(app)
        await ledger.recover()
        assert ledger.positions == {"in:0": 12}
        return app

    app = asyncio.run(scenario())
    assert app.tables["data"] == {"a": 5}
    assert [what for what, _ in app.journal] == ["data[a]", "send createAlarm"]


def test_a_settled_step_is_not_sent_again() -> None:
    async def scenario() -> FakeApp:
        app = FakeApp()
        app.Table("svc-ledger")["ledger"] = LedgerRow(
            3, {}, [], [Effect("createAlarm", "svc/x", "{}")], settled=True
        ).to_row()
        app.journal.clear()
        ledger, _ = fresh(app)
        await ledger.recover()
        return app

    assert asyncio.run(scenario()).journal == []


def test_a_refused_effect_is_sent_again_before_the_next_step() -> None:
    async def scenario() -> FakeApp:
        app = FakeApp()
        ledger, data = fresh(app)
        await ledger.recover()
        app.refuse = 1
        async with ledger.step() as step:
            await step.owe("createAlarm", b"svc/x", b"1")
        async with ledger.step() as step:
            await step.owe("createAlarm", b"svc/y", b"2")
        await ledger.settle_now()
        return app

    app = asyncio.run(scenario())
    sends = [value for what, value in app.journal if what.startswith("send")]
    assert sends == [(b"svc/x", b"1"), (b"svc/y", b"2")], "x refused once, sent again before y"
    assert LedgerRow.from_row(app.tables["svc-ledger"]["ledger"]).settled


def test_a_write_outside_a_step_is_refused() -> None:
    app = FakeApp()
    _, data = fresh(app)
    with pytest.raises(RuntimeError, match="outside a ledger step"):
        data["a"] = 1


class _Msg:
    def __init__(self, topic: str, offset: int) -> None:
        self.topic, self.partition, self.offset, self.tp = topic, 0, offset, TP(topic, 0)


class _Evt:
    def __init__(self, message: _Msg) -> None:
        self.message = message


@contextlib.contextmanager
def handling(message: _Msg) -> Iterator[None]:
    """Run as the agent does while it handles ``message`` (Faust's current event)."""
    event = _Evt(message)  # held here: Faust keeps only a weak reference
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


def test_a_row_records_only_its_own_input_position() -> None:
    """Two agents share a ledger: a reading admitted and waiting must not be claimed by a tick's step."""

    async def scenario() -> dict[str, int]:
        app = FakeApp()
        ledger, data = fresh(app)
        await ledger.recover()
        reading, tick = _Msg("sensorData", 100), _Msg("bankTicks", 7)
        assert await ledger.admit(reading) and await ledger.admit(tick)
        with handling(tick):
            async with ledger.step():
                data["stale"] = True
        return LedgerRow.from_row(app.tables["svc-ledger"]["ledger"]).positions

    assert asyncio.run(scenario()) == {"bankTicks:0": 8}, "reading 100 is not held by the state yet"


def test_a_redelivered_message_is_passed_over_without_moving_the_consumer_back() -> None:
    """Moving the consumer to the state's position for a message it already delivered would
    move it behind what is on its way to the agent: each duplicate would bring another."""

    async def scenario() -> tuple[list[bool], list[tuple[Any, int]]]:
        app = FakeApp()
        ledger, _ = fresh(app)
        await ledger.recover()
        verdicts = [await ledger.admit(_Msg("sensorData", offset)) for offset in (100, 101, 101, 100, 102)]
        return verdicts, app.consumer.seeks

    verdicts, seeks = asyncio.run(scenario())
    assert verdicts == [True, True, False, False, True]
    assert seeks == []


def test_a_consumer_far_behind_the_state_is_sent_there_once_and_one_ahead_is_rewound() -> None:
    async def scenario() -> list[tuple[Any, int]]:
        app = FakeApp()
        ledger, _ = fresh(app)
        await ledger.recover()
        far = SKIP_WITHOUT_SEEKING + 5000
        assert await ledger.admit(_Msg("sensorData", far))
        assert not await ledger.admit(_Msg("sensorData", 3))  # far behind: moved forward
        assert not await ledger.admit(_Msg("sensorData", 4))  # still fetched before the move: patience
        other, _ = fresh(FakeApp())
        await other.recover()
        assert await other.admit(_Msg("sensorData", 7))
        assert not await other.admit(_Msg("sensorData", 9))  # ahead: input 8 missed, rewound
        return app.consumer.seeks + other.app.consumer.seeks

    far = SKIP_WITHOUT_SEEKING + 5000
    assert asyncio.run(scenario()) == [(TP("sensorData", 0), far + 1), (TP("sensorData", 0), 8)]


def test_positions_in_a_log_that_started_over_resume_at_its_start() -> None:
    """Restarted while the broker was away: its state's positions count in the old log."""

    async def scenario() -> tuple[Ledger, FakeApp]:
        app = FakeApp()
        app.consumer.assigned = {TP("sensorData", 0), TP("bankTicks", 0)}
        app.Table("svc-ledger")["ledger"] = LedgerRow(9, {"sensorData:0": 760, "bankTicks:0": 40},
                                                      log="local-old").to_row()
        ledger, _ = fresh(app, FakeIdentity("local-new"))
        await ledger.recover()
        return ledger, app

    ledger, app = asyncio.run(scenario())
    assert ledger.positions == {"sensorData:0": 0, "bankTicks:0": 0}
    assert sorted(app.consumer.seeks) == [(TP("bankTicks", 0), 0), (TP("sensorData", 0), 0)]


def test_a_running_worker_follows_the_new_log_even_when_it_is_already_longer() -> None:
    """The new log reached offset 135 before the worker looked: an offset comparison would
    resume there and skip 0..134 of the new input."""

    async def scenario() -> tuple[list[bool], list[Any], LedgerRow]:
        app = FakeApp()
        app.consumer.assigned = {TP("sensorData", 0)}
        identity = FakeIdentity("local-a")
        ledger, data = fresh(app, identity)
        await ledger.recover()
        verdicts = [await ledger.admit(_Msg("sensorData", offset)) for offset in (0, 1)]
        identity.current = "local-b"
        verdicts += [await ledger.admit(_Msg("sensorData", 135)), await ledger.admit(_Msg("sensorData", 0))]
        with handling(_Msg("sensorData", 0)):
            async with ledger.step():
                data["t"] = 20.5
        return verdicts, app.consumer.seeks, LedgerRow.from_row(app.tables["svc-ledger"]["ledger"])

    verdicts, seeks, row = asyncio.run(scenario())
    assert verdicts == [True, True, False, True], "135 of the new log waits for 0..134; 0 is admitted"
    assert seeks[0] == (TP("sensorData", 0), 0)
    assert row.log == "local-b" and row.positions == {"sensorData:0": 1}


def ledger_rows(app: FakeApp) -> list[LedgerRow]:
    return [LedgerRow.from_row(row) for what, row in app.journal if what == "svc-ledger[ledger]"]


async def grouped_readings(app: FakeApp, ledger: Ledger, data: Any, offsets: range, highwater: int,
                           owe_at: int | None = None) -> None:
    """Readings at ``offsets`` of ``sensorData`` (the broker holds up to ``highwater``), each rewriting one key."""
    app.consumer.highwaters[TP("sensorData", 0)] = highwater
    for offset in offsets:
        message = _Msg("sensorData", offset)
        assert await ledger.admit(message)
        with handling(message):
            async with ledger.step() as step:
                data["sensor"] = offset
                data[f"seen-{offset}"] = True
                if offset == owe_at:
                    await step.owe("createAlarm", b"svc/hot", str(offset).encode())


def test_without_quiet_runs_a_run_is_committed_once_no_input_waits() -> None:
    async def scenario() -> list[LedgerRow]:
        app = FakeApp()
        ledger, data = fresh(app, group_inputs=True)
        await ledger.recover()
        await grouped_readings(app, ledger, data, range(0, 3), highwater=3)
        return ledger_rows(app)

    assert [row.positions for row in asyncio.run(scenario())] == [{"sensorData:0": 3}]


def test_a_grouping_ledger_commits_a_quiet_run_of_inputs_as_one_row() -> None:
    """With quiet runs, no input waits behind the third (a quiet bus): still one row for the three, not one each."""

    async def scenario() -> tuple[list[LedgerRow], FakeApp]:
        app = FakeApp()
        ledger, data = fresh(app, group_inputs=True, quiet_runs=True)
        await ledger.recover()
        await grouped_readings(app, ledger, data, range(0, 3), highwater=3)
        early = ledger_rows(app)
        await asyncio.sleep(GROUP_MAX_AGE_S)
        await ledger.commit_open()
        return early, app

    early, app = asyncio.run(scenario())
    assert early == [], "a run younger than the group's age stays open"
    [row] = ledger_rows(app)
    assert row.positions == {"sensorData:0": 3}
    assert [(w.key, w.data) for w in row.writes] == [("sensor", 2), ("seen-0", True), ("seen-1", True), ("seen-2", True)]
    assert app.tables["data"]["sensor"] == 2


def test_a_grouped_run_is_visible_before_it_is_committed_and_lost_with_a_crash() -> None:
    """Until committed the run is only in memory: a restart decides those inputs again."""

    async def scenario() -> tuple[FakeApp, Any, list[Any]]:
        app = FakeApp()
        ledger, data = fresh(app, group_inputs=True)
        await ledger.recover()
        await grouped_readings(app, ledger, data, range(0, 2), highwater=10)
        seen = [data.get("sensor"), "sensor" in app.tables["data"]]
        restarted, _ = fresh(app, group_inputs=True)
        await restarted.recover()
        return app, restarted, seen

    app, restarted, seen = asyncio.run(scenario())
    assert seen == [1, False], "the run's write is read through the ledger, not yet in the table"
    assert ledger_rows(app) == [] and restarted.positions == {}


def test_an_input_that_owes_an_effect_commits_at_once_with_the_run_before_it() -> None:
    async def scenario() -> FakeApp:
        app = FakeApp()
        ledger, data = fresh(app, group_inputs=True)
        await ledger.recover()
        await grouped_readings(app, ledger, data, range(0, 4), highwater=100, owe_at=2)
        return app

    app = asyncio.run(scenario())
    [row] = ledger_rows(app)
    assert row.positions == {"sensorData:0": 3} and row.effects == [Effect("createAlarm", "svc/hot", "2")]
    assert [what for what, _ in app.journal][-1] == "send createAlarm", "sent after its row and table writes"
    assert "seen-3" not in app.tables["data"], "the input after it starts a new run"


def test_a_run_no_input_continues_is_committed_by_the_settler() -> None:
    async def scenario() -> tuple[list[LedgerRow], list[LedgerRow]]:
        app = FakeApp()
        ledger, data = fresh(app, group_inputs=True)
        await ledger.recover()
        await grouped_readings(app, ledger, data, range(0, 5), highwater=9)
        await ledger.commit_open()
        early = ledger_rows(app)
        await asyncio.sleep(GROUP_MAX_AGE_S)
        await ledger.commit_open()
        return early, ledger_rows(app)

    early, late = asyncio.run(scenario())
    assert early == [], "younger than the group's age: it may still be continued"
    assert [row.positions for row in late] == [{"sensorData:0": 5}]


def test_an_input_of_another_partition_commits_the_run_before_it_is_decided() -> None:
    """Replayed after a crash, a run must come in the order it was decided: it holds one partition."""

    async def scenario() -> list[LedgerRow]:
        app = FakeApp()
        ledger, data = fresh(app, group_inputs=True, quiet_runs=True)
        await ledger.recover()
        await grouped_readings(app, ledger, data, range(0, 3), highwater=3)
        job = _Msg("heatingJobState", 7)
        assert await ledger.admit(job)
        with handling(job):
            async with ledger.step():
                assert [row.positions for row in ledger_rows(app)] == [{"sensorData:0": 3}], \
                    "the readings' run is committed before the job is decided"
                data["job"] = "r9"
        # A batch step names its partition: the job's run is committed before the readings.
        async with ledger.step(covers_event=False, partition="sensorData:0") as step:
            rows = ledger_rows(app)
            message = _Msg("sensorData", 3)
            assert await ledger.admit(message)
            step.cover(message)
            data["sensor"] = 3
        return rows

    rows = asyncio.run(scenario())
    assert [row.positions for row in rows] == [{"sensorData:0": 3}, {"sensorData:0": 3, "heatingJobState:0": 8}]
    assert [(w.key, w.data) for w in rows[1].writes] == [("job", "r9")]


def test_a_run_that_changed_nothing_is_still_recorded_when_another_partition_ends_it() -> None:
    async def scenario() -> list[LedgerRow]:
        app = FakeApp()
        ledger, data = fresh(app, group_inputs=True, quiet_runs=True)
        await ledger.recover()
        await grouped_readings(app, ledger, data, range(0, 1), highwater=1)
        await asyncio.sleep(GROUP_MAX_AGE_S)
        await ledger.commit_open()  # the last row: a reading that changed something
        for offset in (1, 2):  # readings that change nothing, within a second of that row
            message = _Msg("sensorData", offset)
            assert await ledger.admit(message)
            with handling(message):
                async with ledger.step():
                    pass
        job = _Msg("heatingJobState", 7)
        assert await ledger.admit(job)
        with handling(job):
            async with ledger.step():
                pass
        return ledger_rows(app)

    assert [row.positions for row in asyncio.run(scenario())] == [{"sensorData:0": 1}, {"sensorData:0": 3}]


def test_a_partition_the_row_does_not_name_is_read_from_its_start_once_the_state_has_history() -> None:
    """A kill -9 left the readings' run uncommitted, but Faust had committed the group's offset past it."""

    async def scenario() -> tuple[list[bool], list[Any], bool]:
        app = FakeApp()
        ledger, data = fresh(app, group_inputs=True, quiet_runs=True)
        await ledger.recover()
        job = _Msg("heatingJobState", 7)
        assert await ledger.admit(job)
        with handling(job):
            async with ledger.step():
                data["job"] = "r9"
        await grouped_readings(app, ledger, data, range(0, 3), highwater=3)  # the run the kill loses
        app.consumer.assigned = {TP("sensorData", 0), TP("heatingJobState", 0), TP("svc-ledger-changelog", 0)}
        restarted, _ = fresh(app, group_inputs=True, quiet_runs=True)
        await restarted.recover()  # nothing new comes after the group's offset: the move happens here
        verdicts = [await restarted.admit(_Msg("sensorData", 0))]
        newcomer, _ = fresh(FakeApp(), group_inputs=True, quiet_runs=True)
        await newcomer.recover()
        return verdicts, app.consumer.seeks[-2:], await newcomer.admit(_Msg("sensorData", 3))

    verdicts, seeks, newcomer_admits = asyncio.run(scenario())
    assert sorted(seeks, key=str) == [(TP("heatingJobState", 0), 8), (TP("sensorData", 0), 0)], \
        "the job where the state ends, the readings from their start; the changelog left alone"
    assert verdicts == [True], "decided again"
    assert newcomer_admits, "a state without history starts where the group's offsets are"


def test_a_grouped_run_ends_at_its_size_limit() -> None:
    async def scenario() -> list[LedgerRow]:
        app = FakeApp()
        ledger, data = fresh(app, group_inputs=True)
        await ledger.recover()
        await grouped_readings(app, ledger, data, range(0, GROUP_MAX_INPUTS + 1), highwater=10**6)
        return ledger_rows(app)

    assert [row.positions for row in asyncio.run(scenario())] == [{"sensorData:0": GROUP_MAX_INPUTS}]


def test_a_ledger_that_does_not_group_commits_every_input() -> None:
    async def scenario() -> list[LedgerRow]:
        app = FakeApp()
        ledger, data = fresh(app)
        await ledger.recover()
        await grouped_readings(app, ledger, data, range(0, 3), highwater=10)
        return ledger_rows(app)

    assert [row.positions for row in asyncio.run(scenario())] == [{"sensorData:0": n} for n in (1, 2, 3)]


# -- the adapters' sends: a refused reading or command is sent again, or the adapter stops ----


class RefusingProducer:
    """Answers the first ``refuse`` sends with the broker's refusal, later ones with success."""

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.accepted: list[bytes] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> "asyncio.Future[None]":
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.refuse:
            self.refuse -= 1
            future.set_exception(KafkaError("UnknownError"))
        else:
            self.accepted.append(value)
            future.set_result(None)
        return future


def edge_sends(refuse: int) -> tuple[list[bytes], int]:
    from streams import edge, exitcodes
    from streams.lifecycle import ServiceKind, ServiceSpec
    from streams.settings import Settings

    async def scenario() -> tuple[list[bytes], int]:
        service = edge.EdgeService(ServiceSpec("edge-test", ServiceKind.CONTROL, description="test"), Settings())
        producer = RefusingProducer(refuse)
        service.producer = producer  # type: ignore[assignment]
        await service.send("sensorData", b"k", b"reading")
        await asyncio.sleep(edge.RESEND_BACKOFF_S * 2 ** (edge.RESEND_ATTEMPTS + 1))
        return producer.accepted, service.exit_code

    accepted, code = asyncio.run(scenario())
    assert code in (exitcodes.DONE, exitcodes.UNDELIVERED)
    return accepted, code


def test_an_adapter_sends_a_refused_message_again() -> None:
    from streams import exitcodes

    assert edge_sends(refuse=3) == ([b"reading"], exitcodes.DONE)


def test_an_adapter_that_cannot_deliver_stops_with_a_crash_code() -> None:
    from streams import exitcodes

    accepted, code = edge_sends(refuse=99)
    assert accepted == [] and code == exitcodes.UNDELIVERED
