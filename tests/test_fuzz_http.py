"""Property-based fuzzing of every HTTP body and query string the platform accepts.

Each generated request must get either a success whose body says what was done (and
the effect really happened), or a 4xx with a JSON ``{"error": reason}``. A 5xx, a
traceback, or a refusal of a request that was valid fails the test.

The applications are the real ones, served in-process by aiohttp's test server:
AlarmsServer's Faust views (``/reset``, ``/alarms/history``, ``/alarm`` and the rest),
BankManager's and DisasterDetector's views, the simulator's control API on a real
simulated board, the heating controller's API on a launcher that starts nothing, and
the health views every edge adapter serves with the CAN, I2C and heating-job views.
Kafka and Vault are replaced by recorders (the reset topic) and a local signer; every app
behind the real auth middleware verifies tokens of tests/tokens.py's issuer, and each request
carries one with the role its route needs (the reset's caller is fuzzed too: the operator a
reset names is the token's name, whatever the body says).

Generated cases (``max_examples``): ``POST /reset`` 350; alarm history 250; one alarm
250; bank stats 200; simulator ``/inject`` ``/clear`` ``/burst`` 3 × 220 = 660;
``POST /heating`` 300; GET views with any query 200 — 2,210. With
``tests/test_fuzz_decoders.py`` (8,400) the fuzz suite runs 10,610 cases.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

import streams.agents.alarms as alarms_agent
import streams.agents.bank as bank_agent
import streams.agents.disaster as disaster_agent
from adapters.can.service import SPEC as CAN_SPEC
from adapters.can.service import CanAdapter
from adapters.i2c.board import RelayBoard
from adapters.i2c.service import SPEC as I2C_SPEC
from adapters.i2c.service import RelayAdapter
from simulator.board import Board
from simulator.canbus import CanHost
from simulator.control import make_app
from simulator.faults import ACTIONS, FAULTS
from simulator.nvram import Nvram
from simulator.physics import HeaterModel
from simulator.pico import Pico
from streams.alarm_book import AlarmBook
from streams.codec import decode
from streams.edge import EdgeService
from streams.heater_config import HeaterLimits
from streams.heating.controller import HeatingController, mount
from streams.heating.job import SPEC as JOB_SPEC
from streams.heating.job import HeatingJob
from streams.heating.launch import JobEnd
from streams.heating.machine import HeatingMachine
from streams.latch import LatchView, Occurrence
from streams.lifecycle import Phase
from streams.records import Alarm, OperatorReset, PlatformLatch
from streams import auth
from streams.settings import Settings
from streams.tables import alarms as alarm_tables
from tests import tokens
from tests.fuzzing import quiet_logs  # noqa: F401  (module fixture; the session loop is in conftest)

FUZZ: dict[str, Any] = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def serve(loop: asyncio.AbstractEventLoop, app: web.Application) -> TestClient:
    """A started test server and client for ``app`` on ``loop``; an app behind the auth middleware
    verifies tokens of the test issuer (tests/tokens.py)."""
    if auth.GATE in app:
        tokens.authorize(app)

    async def start() -> TestClient:
        client = TestClient(TestServer(app))
        await client.start_server()
        return client

    return loop.run_until_complete(start())


#: A viewer's and an operator's headers, signed once (the fuzzed requests share them).
VIEWER = tokens.headers("viewer", ttl=3600)
OPERATOR = tokens.headers("operator", ttl=3600)


async def call(client: TestClient, method: str, path: str, body: bytes | None = None,
               content_type: str | None = None, params: Any = None,
               auth_headers: Any = VIEWER) -> tuple[int, str, Any]:
    """One request (with ``auth_headers``: a viewer's by default): status, content type and the decoded body."""
    headers = {**(auth_headers or {}), **({"Content-Type": content_type} if content_type else {})}
    async with client.request(method, path, data=body, headers=headers, params=params) as response:
        text = await response.read()
        kind = response.content_type
        event(f"{method} {path} → {response.status}")
        return response.status, kind, json.loads(text) if kind == "application/json" else text


def assert_refused_with_reason(status: int, kind: str, answer: Any) -> None:
    """A refusal is a 4xx that says why, as JSON."""
    assert 400 <= status < 500, f"{status}: {answer!r}"
    assert kind == "application/json" and isinstance(answer.get("error"), str) and answer["error"], answer


# -- bodies and queries ----------------------------------------------------------------------

EDGE_STRINGS = (
    "", " ", "x", "FATAL", "false", "null", "1", "1e999", "-0", "NaN", "inf", "-inf", "1_000", " 5 ", "٣",
    "0x10", "ünï©ødé", "𝄞", "\x00", "%00", "a" * 300, "9" * 5000, "stuck_sensor:1", "stuck_sensor:x", ":",
)
EDGE_VALUES = (
    None, True, False, 0, -1, 1, 2, 3, 45, 45.5, 1e-320, 1e308, 2**63, 10**400, -0.0, "", "x", "45", [], [45], {},
    {"a": 1}, "\ud800",
)
texts = st.one_of(st.sampled_from(EDGE_STRINGS), st.text(max_size=10))
#: Query values stay under aiohttp's 8 KiB request line, which the server refuses before any view runs.
query_texts = st.one_of(st.sampled_from(tuple(s for s in EDGE_STRINGS if len(s) < 1000)), st.text(max_size=10))
values = st.one_of(st.sampled_from(EDGE_VALUES), texts, st.integers(), st.floats(), st.lists(st.sampled_from(EDGE_VALUES), max_size=2))
CONTENT_TYPES = (None, "application/json", "text/plain", "application/json; charset=utf-8",
                 "application/json; charset=latin-1", "application/json; charset=bogus", "application/x-www-form-urlencoded")


def weighted(*choices: tuple[int, SearchStrategy[Any]]) -> SearchStrategy[Any]:
    """One of several strategies, picked with the given weights (``one_of`` would pick them evenly)."""
    picks = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(range(len(picks))).flatmap(lambda i: picks[i])


def _big_number(digits: int) -> bytes:
    """A JSON object whose numbers are too long for float, or for Python's int parser."""
    return b'{"target_c": ' + b"9" * digits + b', "operator": 1, "count": ' + b"9" * digits + b"}"


def _json(value: Any, style: str) -> bytes:
    """``value`` as JSON bytes: UTF-8, UTF-16, or with raw (invalid) surrogate bytes."""
    if style == "utf-16":
        return json.dumps(value).encode("utf-16")
    if style == "raw-surrogates":
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()


def bodies(shape: SearchStrategy[dict[str, Any]]) -> SearchStrategy[bytes | None]:
    """Request bodies: mostly JSON objects of the expected shape, then anything a client might send."""
    styles = st.sampled_from(("plain",) * 6 + ("utf-16", "raw-surrogates"))
    return weighted(
        (8, st.builds(_json, shape, styles)),
        (1, st.builds(_json, values, styles)),
        (1, st.binary(max_size=40)),
        (1, st.integers(1, 40_000).map(lambda n: b"[" * n + b"]" * n)),
        (1, st.integers(10, 5_000).map(_big_number)),
        (1, st.sampled_from((b"", b"{", b"NaN", b'{"a": Infinity}', b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b"null"))),
        (1, st.none()),
    )


def shaped(required: dict[str, SearchStrategy[Any]]) -> SearchStrategy[dict[str, Any]]:
    """Dicts with all the expected keys, or some of them plus, sometimes, an unexpected one."""
    return weighted((2, st.fixed_dictionaries(required)), (1, st.fixed_dictionaries({}, optional={**required, "surprise": values})))


def query(keys: tuple[str, ...], good: SearchStrategy[str]) -> SearchStrategy[list[tuple[str, str]]]:
    """Query parameters: the view's own keys with good or odd values, repeated keys, unknown keys."""
    pair = st.tuples(st.sampled_from((*keys, "x", "")), weighted((2, good), (1, query_texts)))
    return st.lists(pair, max_size=5)


def strict_float(text: str) -> float | None:
    """``float(text)``, or None where the view's own parsing would refuse it."""
    try:
        return float(text)
    except ValueError:
        return None


def strict_int(text: str) -> int | None:
    """``int(text)``, or None where the view's own parsing would refuse it."""
    try:
        return int(text)
    except ValueError:
        return None


# -- AlarmsServer -------------------------------------------------------------------------------


class LocalSigner:
    """Stands in for Vault's transit engine: a signature is a digest of the payload."""

    async def sign(self, payload: bytes) -> str:
        return "local:" + hashlib.sha256(payload).hexdigest()

    async def verify(self, payload: bytes, signature: str) -> bool:
        return signature == await self.sign(payload)


class RecordedTopic:
    """Stands in for the ``operatorReset`` topic; keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, OperatorReset]] = []

    async def send(self, key: str, value: OperatorReset) -> None:
        self.sent.append((key, value))


SOURCES = ("bank", "can", "i2c", "disaster")
SEVERITIES = ("INFO", "WARNING", "CRITICAL", "FATAL")
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def alarms_server(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[TestClient, dict[str, Any], RecordedTopic]]:
    """AlarmsServer's web app over in-memory tables holding 40 alarms, with a local signer."""
    names = ("history", "book", "latch", "signer", "reset_topic", "readings_end")
    saved = {name: getattr(alarms_agent, name) for name in names}
    history: dict[str, Any] = {}
    latch: dict[str, Any] = {}
    book = AlarmBook(history, {}, {})
    rng = random.Random(7)
    for i in range(40):
        source, code = rng.choice(SOURCES), f"code{i % 13}"
        book.raise_alarm(Alarm(alarm_id=f"{source}/{code}/{i}", source=source, code=code, severity=rng.choice(SEVERITIES),
                               message=f"alarm {i}", raised_at=T0 + rng.uniform(-1000, 1000)))
    topic = RecordedTopic()
    signer = LocalSigner()
    alarms_agent.history, alarms_agent.book, alarms_agent.latch = history, book, latch  # type: ignore[assignment]
    alarms_agent.signer = lambda: signer  # type: ignore[assignment]
    alarms_agent.reset_topic = topic  # type: ignore[assignment]

    async def readings_end() -> dict[str, int]:
        return {"sensorData:0": 1234}

    alarms_agent.readings_end = readings_end  # type: ignore[assignment]
    client = serve(loop, alarms_agent.app.web.web_app)
    try:
        yield client, latch, topic
    finally:
        loop.run_until_complete(client.close())
        for name, value in saved.items():
            setattr(alarms_agent, name, value)


#: The FATAL occurrence that latches, and the Pico's trip count, as ``GET /latch`` shows them.
SHOWN_OCCURRENCE, SHOWN_TRIP = "bank/overtemp@1800000000.0", 3


def expected_request(body: bytes | None, caller: str) -> tuple[str, list[str], int | None] | None:
    """The operator (the caller's token's name), occurrences and trip count of a valid ``/reset`` (None when it is not valid).

    An ``operator`` in the body plays no part: the operator is who the token says.
    """
    try:
        operator = caller.strip()
        operator.encode()
        data = json.loads(body or b"{}")
        occurrences, trip_count = data["occurrences"], data.get("trip_count")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    if not isinstance(occurrences, list) or not all(isinstance(o, str) for o in occurrences):
        return None
    if trip_count is not None and (not isinstance(trip_count, int) or isinstance(trip_count, bool)):
        return None
    return (operator, occurrences, trip_count) if operator else None


#: Who calls ``POST /reset``: an operator or admin by name (odd names too), a viewer, or nobody.
CALLER_NAMES = ("alice", " bob ", "Zoë", "   ", "\ud800", "mallory")
callers = weighted(
    (8, st.tuples(st.sampled_from(("operator", "admin")), st.sampled_from(CALLER_NAMES))),
    (1, st.tuples(st.just("viewer"), st.sampled_from(CALLER_NAMES))),
    (1, st.just((None, ""))),
)


@settings(max_examples=350, **FUZZ)
@given(
    body=bodies(shaped({
        "operator": st.one_of(st.sampled_from(("alice", " bob ", "", "   ", "\ud800", "x\udfff", "\x00")), values),
        "occurrences": weighted((6, st.just([SHOWN_OCCURRENCE])),
                                (1, st.sampled_from(([], ["bank/other@1.0"], [SHOWN_OCCURRENCE, "x"]))), (1, values)),
        "trip_count": weighted((6, st.just(SHOWN_TRIP)), (1, st.sampled_from((None, 2, True))), (1, values)),
    })),
    content_type=st.sampled_from(CONTENT_TYPES),
    latched=st.booleans(),
    caller=callers,
)
def test_reset_is_issued_only_for_a_valid_request_and_refused_with_a_reason(
    loop: asyncio.AbstractEventLoop, alarms_server: tuple[TestClient, dict[str, Any], RecordedTopic],
    body: bytes | None, content_type: str | None, latched: bool, caller: tuple[str | None, str],
) -> None:
    """``POST /reset``: a signed one-time reset naming exactly what the latch shows, issued by the
    token's holder (never the body's ``operator``); else a 4xx saying why."""
    client, latch, topic = alarms_server
    role, name = caller
    latch.clear()
    if latched:
        latch[alarm_tables.LATCH_KEY] = PlatformLatch(
            latched=True, alarm_id="bank/overtemp", reason="fuzz", changed_at=T0, changed_by="alarms",
            occurrences={SHOWN_OCCURRENCE: {"alarm_id": "bank/overtemp", "reason": "fuzz", "raised_at": T0}},
            trip_count=SHOWN_TRIP,
        )
    sent_before = len(topic.sent)
    headers = tokens.headers(role, name=name) if role else None
    status, kind, answer = loop.run_until_complete(call(client, "POST", "/reset", body, content_type, auth_headers=headers))
    if role is None or role == "viewer":
        assert status == (401 if role is None else 403), answer
        assert_refused_with_reason(status, kind, answer)
        assert len(topic.sent) == sent_before, "a reset refused to its caller must not be published"
        return
    request = expected_request(body, name)
    shown = request is not None and set(request[1]) == {SHOWN_OCCURRENCE} and request[2] == SHOWN_TRIP
    if status == 202:
        assert latched and request is not None and shown
        assert answer["operator"] == request[0] == name.strip(), "the operator is the token's holder"
        try:
            claimed = json.loads(body or b"{}").get("operator")
        except (ValueError, AttributeError, RecursionError):
            claimed = None
        if isinstance(claimed, str) and claimed.strip() != name.strip():
            event("reset: the body's operator ignored")
        assert len(topic.sent) == sent_before + 1
        key, reset = topic.sent[-1]
        assert key == answer["reset_id"] == reset.reset_id and reset.operator == request[0]
        assert reset.occurrences == [SHOWN_OCCURRENCE] and reset.trip_count == SHOWN_TRIP
        assert reset.covered == {"sensorData:0": 1234}, "the reset covers the readings up to where they end"
        assert decode(reset.dumps(), OperatorReset) == reset
        assert loop.run_until_complete(LocalSigner().verify(reset.signed_payload(), reset.signature))
        return
    assert_refused_with_reason(status, kind, answer)
    assert len(topic.sent) == sent_before, "a refused reset must not be published"
    if status == 409:
        assert request is not None, f"an invalid request must be a 400: {answer}"
        assert (not latched and answer["latched"] is False) or (latched and not shown and "occurrences" in answer)
    else:
        assert status == 400 and request is None, f"a valid request was refused: {answer}"


def test_the_operator_of_a_reset_is_the_token_holder_not_the_body(
    loop: asyncio.AbstractEventLoop, alarms_server: tuple[TestClient, dict[str, Any], RecordedTopic],
) -> None:
    """A body naming someone else is issued in the caller's name: the reset and its signed record say alice."""
    client, latch, topic = alarms_server
    latch.clear()
    latch[alarm_tables.LATCH_KEY] = PlatformLatch(
        latched=True, alarm_id="bank/overtemp", reason="fuzz", changed_at=T0, changed_by="alarms",
        occurrences={SHOWN_OCCURRENCE: {"alarm_id": "bank/overtemp", "reason": "fuzz", "raised_at": T0}},
        trip_count=SHOWN_TRIP,
    )
    body = json.dumps({"operator": "mallory", "occurrences": [SHOWN_OCCURRENCE], "trip_count": SHOWN_TRIP}).encode()

    async def post() -> tuple[int, Any]:
        async with client.post("/reset", data=body, headers=tokens.headers("operator", name="alice")) as response:
            return response.status, await response.json()

    status, answer = loop.run_until_complete(post())
    assert status == 202 and answer["operator"] == "alice", answer
    assert topic.sent[-1][1].operator == "alice"
    assert loop.run_until_complete(LocalSigner().verify(topic.sent[-1][1].signed_payload(), topic.sent[-1][1].signature))


@settings(max_examples=250, **FUZZ)
@given(
    params=query(
        ("since", "until", "limit", "offset", "severity", "source"),
        st.one_of(st.sampled_from((*SEVERITIES, *SOURCES)), st.integers(-5, 1200).map(str), st.floats().map(str),
                  st.floats(T0 - 1500, T0 + 1500).map(repr)),
    )
)
def test_alarm_history_query_is_answered_or_refused_with_a_reason(
    loop: asyncio.AbstractEventLoop, alarms_server: tuple[TestClient, dict[str, Any], RecordedTopic], params: list[tuple[str, str]]
) -> None:
    """``GET /alarms/history``: a page that honours every filter, or 400 naming the bad parameter."""
    client = alarms_server[0]
    status, kind, answer = loop.run_until_complete(call(client, "GET", "/alarms/history", params=params))
    first = {k: v for k, v in reversed(params)}
    numbers = [strict_float(first.get("since", "0")), strict_float(first.get("until", "inf"))]
    integers = [strict_int(first.get("limit", "100")), strict_int(first.get("offset", "0"))]
    if status != 200:
        assert_refused_with_reason(status, kind, answer)
        assert status == 400 and None in numbers + integers, f"a valid query was refused: {params} → {answer}"
        return
    assert None not in numbers + integers
    since, until = numbers
    assert 1 <= answer["limit"] <= 1000 and answer["offset"] >= 0 and len(answer["alarms"]) <= answer["limit"]
    raised = [entry["alarm"]["raised_at"] for entry in answer["alarms"]]
    assert raised == sorted(raised)
    for entry in answer["alarms"]:
        alarm = entry["alarm"]
        assert since <= alarm["raised_at"] <= until  # type: ignore[operator]
        assert "severity" not in first or alarm["severity"] == first["severity"]
        assert "source" not in first or alarm["source"] == first["source"]


@settings(max_examples=250, **FUZZ)
@given(alarm_id=st.one_of(st.sampled_from([f"{s}/code{i % 13}/{i}" for i in range(40) for s in SOURCES]), query_texts))
def test_one_alarm_is_shown_or_not_found_with_a_reason(
    loop: asyncio.AbstractEventLoop, alarms_server: tuple[TestClient, dict[str, Any], RecordedTopic], alarm_id: str
) -> None:
    """``GET /alarm?id=``: the alarm asked for, or 404 saying which id is unknown."""
    client = alarms_server[0]
    status, kind, answer = loop.run_until_complete(call(client, "GET", "/alarm", params={"id": alarm_id}))
    if status == 200:
        assert answer["alarm"]["alarm_id"] == alarm_id
        return
    assert_refused_with_reason(status, kind, answer)
    assert status == 404 and alarms_agent.book.current(alarm_id) is None


# -- BankManager and DisasterDetector views -------------------------------------------------------

WINDOW_SENSORS = ("water.0", "water.1", "water.2", "burner.flame")


@pytest.fixture(scope="module")
def agent_views(loop: asyncio.AbstractEventLoop) -> Iterator[dict[str, TestClient]]:
    """BankManager (over 24 windows in memory), DisasterDetector and AlarmsServer web apps."""
    saved = bank_agent.windows
    rows = {
        f"{sensor}:{start}": {"sensor": sensor, "start": T0 + 60 * start, "end": T0 + 60 * (start + 1), "count": 3,
                              "minimum": 40.0, "maximum": 42.0, "total": 123.0, "last_at": T0 + 60 * start + 59}
        for sensor in WINDOW_SENSORS for start in range(6)
    }
    bank_agent.windows = rows  # type: ignore[assignment]
    clients = {"bank": serve(loop, bank_agent.app.web.web_app), "disaster": serve(loop, disaster_agent.app.web.web_app)}
    try:
        yield clients
    finally:
        for client in clients.values():
            loop.run_until_complete(client.close())
        bank_agent.windows = saved


@settings(max_examples=200, **FUZZ)
@given(params=query(("limit", "sensor"), st.one_of(st.sampled_from(WINDOW_SENSORS), st.integers(-3, 40).map(str))))
def test_bank_stats_query_is_answered_or_refused_with_a_reason(
    loop: asyncio.AbstractEventLoop, agent_views: dict[str, TestClient], params: list[tuple[str, str]]
) -> None:
    """``GET /bank/stats``: at most ``limit`` windows per sensor, only the sensor asked for, or 400 saying why."""
    status, kind, answer = loop.run_until_complete(call(agent_views["bank"], "GET", "/bank/stats", params=params))
    first = {k: v for k, v in reversed(params)}
    limit = strict_int(first.get("limit", "10"))
    if status != 200:
        assert_refused_with_reason(status, kind, answer)
        assert limit is None, f"a valid query was refused: {params} → {answer}"
        return
    assert limit is not None
    for sensor, windows in answer["sensors"].items():
        assert "sensor" not in first or sensor == first["sensor"]
        assert 1 <= len(windows) <= max(1, limit)


# -- the simulator's control API --------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator(loop: asyncio.AbstractEventLoop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Board]]:
    """The control API on a real simulated board (Pico, physics, sensors); its CAN host is not started."""
    run_dir: Path = tmp_path_factory.mktemp("fuzz-sim")
    board = Board(Pico(Nvram(run_dir)), CanHost("127.0.0.1", 0, "fuzz"), HeaterModel(), random.Random(3))
    client = serve(loop, make_app(board, lambda: True, {"pid": 0}))
    try:
        yield client, board
    finally:
        loop.run_until_complete(board.stop())
        loop.run_until_complete(client.close())


FAULT_NAMES = st.sampled_from(sorted(FAULTS | ACTIONS)).flatmap(
    lambda name: st.sampled_from((name, f"{name}:0", f"{name}:2", f"{name}:7", f"{name}:x"))
)
PARAMS = {"sigma": st.one_of(st.floats(0, 50), values), "value": st.one_of(st.floats(-40, 150), values),
          "rate": st.one_of(st.floats(1, 5000), values)}


def _after_request(loop: asyncio.AbstractEventLoop, board: Board) -> None:
    """Stop what an accepted request started (garbage frames, a burst) before the next example."""
    board.clear()
    loop.run_until_complete(board.stop())


@settings(max_examples=220, **FUZZ)
@given(
    body=bodies(shaped({"fault": weighted((2, FAULT_NAMES), (1, values)), "sensor": st.one_of(st.integers(-1, 3), values), **PARAMS})),
    content_type=st.sampled_from(CONTENT_TYPES),
)
def test_simulator_inject_applies_the_fault_or_refuses_with_a_reason(
    loop: asyncio.AbstractEventLoop, simulator: tuple[TestClient, Board], body: bytes | None, content_type: str | None
) -> None:
    """``POST /inject``: the fault is active afterwards (or the one-shot action ran), or 400 saying why."""
    client, board = simulator
    try:
        status, kind, answer = loop.run_until_complete(call(client, "POST", "/inject", body, content_type))
        if status != 200:
            assert_refused_with_reason(status, kind, answer)
            return
        injected = answer["injected"]
        if injected["fault"] == "set_temperature":
            assert board.model.temperature_c == injected["value"]
        else:
            active = [(f["fault"], f["sensor"]) for f in board.faults.as_list()]
            assert (injected["fault"], injected["sensor"]) in active
        assert all(isinstance(v, float) and math.isfinite(v) for k, v in injected.items() if k in PARAMS)
    finally:
        _after_request(loop, board)


@settings(max_examples=220, **FUZZ)
@given(
    body=bodies(shaped({"fault": st.one_of(FAULT_NAMES, values), "sensor": st.one_of(st.integers(-1, 3), values)})),
    content_type=st.sampled_from(CONTENT_TYPES),
    setup=st.lists(st.sampled_from(("stuck_sensor", "noisy_sensor:1", "overtemp:2", "i2c_nack")), max_size=3),
)
def test_simulator_clear_removes_faults_or_refuses_with_a_reason(
    loop: asyncio.AbstractEventLoop, simulator: tuple[TestClient, Board], body: bytes | None, content_type: str | None,
    setup: list[str],
) -> None:
    """``POST /clear``: the named faults (all, for ``{}``) are gone afterwards, or 400 saying why."""
    client, board = simulator
    try:
        for name in setup:
            board.inject(name)
        before = board.faults.as_list()
        status, kind, answer = loop.run_until_complete(call(client, "POST", "/clear", body, content_type))
        if status != 200:
            assert_refused_with_reason(status, kind, answer)
            assert board.faults.as_list() == before, "a refused clear must change nothing"
            return
        cleared = {(f["fault"], f["sensor"]) for f in answer["cleared"]}
        remaining = {(f["fault"], f["sensor"]) for f in board.faults.as_list()}
        assert not cleared & remaining and cleared | remaining == {(f["fault"], f["sensor"]) for f in before}
    finally:
        _after_request(loop, board)


@settings(max_examples=220, **FUZZ)
@given(
    body=bodies(shaped({
        "count": st.one_of(st.integers(-1, 50_000), values), "rate": st.one_of(st.floats(0.5, 30_000), values),
        "sensor": st.one_of(st.integers(-1, 3), values),
    })),
    content_type=st.sampled_from(CONTENT_TYPES),
)
def test_simulator_burst_starts_or_refuses_with_a_reason(
    loop: asyncio.AbstractEventLoop, simulator: tuple[TestClient, Board], body: bytes | None, content_type: str | None
) -> None:
    """``POST /burst``: a burst of exactly ``count`` frames starts, or 400 saying why."""
    client, board = simulator
    try:
        status, kind, answer = loop.run_until_complete(call(client, "POST", "/burst", body, content_type))
        if status != 200:
            assert_refused_with_reason(status, kind, answer)
            return
        burst = answer["burst"]
        assert board.burst is not None and board.burst.count == burst["count"] >= 1
        assert 1.0 <= burst["rate"] <= 20_000 and 0 <= burst["sensor"] <= 2
    finally:
        _after_request(loop, board)


# -- the heating controller ----------------------------------------------------------------------------


class InstantLauncher:
    """A launcher whose jobs end at once, done: the API's own behaviour, without processes."""

    def __init__(self) -> None:
        self.started: list[tuple[str, float]] = []

    async def start(self, job_id: str, target_c: float) -> None:
        self.started.append((job_id, target_c))

    async def wait(self, job_id: str) -> JobEnd:
        return JobEnd(0, "done")

    async def running(self) -> list[str]:
        return []


class Latch:
    """What the controller reads from the platform watch."""

    def __init__(self) -> None:
        self.latch = LatchView()


@pytest.fixture(scope="module")
def heating(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[TestClient, HeatingController, InstantLauncher, Latch]]:
    launcher, watch = InstantLauncher(), Latch()
    controller = HeatingController(launcher, watch)
    app = web.Application()
    auth.install(app)  # as every service's web app has it (streams.health.web_app)
    mount(app, controller)
    client = serve(loop, app)
    try:
        yield client, controller, launcher, watch
    finally:
        loop.run_until_complete(controller.close())
        loop.run_until_complete(client.close())


@settings(max_examples=300, **FUZZ)
@given(
    body=bodies(shaped({"target_c": st.one_of(st.floats(1, 85), st.integers(-10, 120), values)})),
    content_type=st.sampled_from(CONTENT_TYPES),
    latched=st.booleans(),
)
def test_heating_request_launches_a_job_or_is_refused_with_a_reason(
    loop: asyncio.AbstractEventLoop, heating: tuple[TestClient, HeatingController, InstantLauncher, Latch],
    body: bytes | None, content_type: str | None, latched: bool,
) -> None:
    """``POST /heating``: one job to the target asked for, or 4xx saying why (latched, bad target, bad body)."""
    client, controller, launcher, watch = heating
    watch.latch = LatchView({"bank/overtemp@1.0": Occurrence("bank/overtemp@1.0", "bank/overtemp", "fuzz", T0)}) \
        if latched else LatchView()
    started = len(launcher.started)
    status, kind, answer = loop.run_until_complete(call(client, "POST", "/heating", body, content_type,
                                                        auth_headers=OPERATOR))
    if status == 202:
        assert not latched and launcher.started[started:] == [(answer["job_id"], answer["target_c"])]
        assert 0 < answer["target_c"] <= HeaterLimits().max_target_c
        run = loop.run_until_complete(controller.wait(answer["job_id"]))
        assert run.outcome == "done"
        return
    assert_refused_with_reason(status, kind, answer)
    assert len(launcher.started) == started, "a refused request must start nothing"
    try:
        target = json.loads((body or b"").decode("utf-8"))["target_c"]
        valid = isinstance(target, (int, float)) and not isinstance(target, bool) and 0 < float(target) <= HeaterLimits().max_target_c
    except (ValueError, KeyError, TypeError, RecursionError, OverflowError):
        valid = False
    plain = content_type is None or "charset=" not in content_type or "utf-8" in content_type
    if valid and plain:
        assert status == 409 and latched, f"a valid request was refused: {answer}"


# -- GET views with any query: health, adapters' views, agents' views ------------------------------------


@pytest.fixture(scope="module")
def edge_views(loop: asyncio.AbstractEventLoop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, EdgeService]]:
    """The health views of an edge adapter with ``/can``, ``/relays`` and ``/job`` mounted beside them."""
    settings_ = Settings.from_env()
    service = EdgeService(I2C_SPEC, settings_)
    can_adapter = CanAdapter(EdgeService(CAN_SPEC, settings_), bus=None)
    relay_adapter = RelayAdapter(service, RelayBoard(None))  # type: ignore[arg-type]
    relay_adapter.install()
    job = HeatingJob(EdgeService(JOB_SPEC, settings_), HeatingMachine(45.0), "fuzz")
    service.web.router.add_get("/can", can_adapter.can_view)
    service.web.router.add_get("/job", job.job_view)
    client = serve(loop, service.web)
    try:
        yield client, service
    finally:
        loop.run_until_complete(client.close())
        relay_adapter.io._executor.shutdown(wait=False)


EDGE_PATHS = ("/healthz", "/readyz", "/status", "/metrics", "/can", "/relays", "/job")
AGENT_PATHS = (("bank", "/bank"), ("bank", "/bank/stats"), ("bank", "/readyz"), ("disaster", "/disaster"), ("disaster", "/status"))


@settings(max_examples=200, **FUZZ)
@given(
    target=st.one_of(st.sampled_from(EDGE_PATHS).map(lambda p: ("edge", p)), st.sampled_from(AGENT_PATHS)),
    params=st.lists(st.tuples(query_texts, query_texts), max_size=4),
    phase=st.sampled_from(list(Phase)),
)
def test_get_views_answer_whatever_the_query(
    loop: asyncio.AbstractEventLoop, edge_views: tuple[TestClient, EdgeService], agent_views: dict[str, TestClient],
    target: tuple[str, str], params: list[tuple[str, str]], phase: Phase,
) -> None:
    """Views without parameters ignore any query: 200 with their data (``/readyz``: 503 while not ready)."""
    edge_client, service = edge_views
    service.status.phase = phase
    where, path = target
    client = edge_client if where == "edge" else agent_views[where]
    status, kind, answer = loop.run_until_complete(call(client, "GET", path, params=params))
    if path == "/metrics":
        assert status == 200 and b"heater_" in answer
        return
    assert kind == "application/json", answer
    if path == "/readyz":
        assert status in (200, 503) and answer["ready"] is (status == 200)
        return
    if path == "/bank/stats" and status == 400:
        assert_refused_with_reason(status, kind, answer)  # a repeated or odd ``limit`` in the query
        return
    assert status == 200, answer
