"""Property-based fuzzing of every decoder that reads bytes the platform did not make itself.

Each generated input must end one of two ways, checked per case:

* accepted: it became a valid record (or frame) that round-trips, keeps the meaning of
  every field it was sent with, and was counted as handled; or
* refused, visibly: the refusal counter of that path went up by one with a reason, and
  where the path dead-letters, the original bytes are in the dead letter.

An unhandled exception, or an input that vanishes without either, fails the test. The
paths are the real ones, in-process, with Kafka replaced by recorders: the agents'
``HeaterService.records`` (dead letters), the platform watch, the CAN adapter's frame
handler and the DBC codec, the I2C adapter's command, reading and operator-reset
handlers (on the simulator's Pico register model), the heating job's inputs, and the
Pico's I2C line protocol.

Generated cases (``max_examples``), this module: records of 13 topics × 300 = 3,900;
platform watch 500; CAN frames 1,400; CAN encoders 500; DBC messages 500; relay
commands 350; relay-adapter readings 250; operator resets 300; heating-job inputs 250;
Pico line protocol 450 — 8,400. With ``tests/test_fuzz_http.py`` (2,210) the fuzz suite
runs 10,610 cases.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import math
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Iterator

import can
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from prometheus_client import CollectorRegistry

from adapters.can import frames
from adapters.can import metrics as can_metrics
from adapters.can import translate
from adapters.can.bus import Received
from adapters.can.service import SPEC as CAN_SPEC
from adapters.can.service import CanAdapter
from adapters.i2c import metrics as i2c_metrics
from adapters.i2c import registers
from adapters.i2c.board import RelayBoard
from adapters.i2c.ledger import ResetLedger
from adapters.i2c.resets import ResetGate
from adapters.i2c.service import SPEC as I2C_SPEC
from adapters.i2c.service import RelayAdapter
from simulator.i2c_server import PicoServer
from simulator.nvram import Nvram
from simulator.pico import Pico
from streams import metrics, topics
from streams.agents.bank import TICKS, BankTick
from streams.alarm_client import AlarmClient
from streams.app import HeaterService
from streams.codec import MAX_MESSAGE_BYTES, DecodeError, decode, encode
from streams.edge import EdgeService
from streams.heating.job import SPEC as JOB_SPEC
from streams.heating.job import HeatingJob
from streams.heating.machine import HeatingMachine
from streams.latch import LatchView, Occurrence, not_named
from streams.lifecycle import ServiceKind, ServiceSpec
from streams.platform_watch import PlatformWatch
from streams.records import RECORD_FOR_TOPIC, Alarm, HeaterRecord, OperatorReset, RelayAction, Severity
from streams.settings import Settings
from tests.fuzzing import quiet_logs  # noqa: F401  (module fixture; the session loop is in conftest)
from tests.inprocess import InlineExecutor, Outbox, PicoBus

#: Hypothesis settings shared by every test here: no deadline (the machine is shared),
#: no example database written into the work tree.
FUZZ: dict[str, Any] = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DECODE_REASONS = ("empty", "oversized", "malformed", "schema_version", "invalid")


# -- shared helpers ---------------------------------------------------------------------


def series(counter: Any, **choices: Iterable[str]) -> dict[tuple[tuple[str, str], ...], float]:
    """Some series of a labelled counter (every combination of ``choices``): label set → value.

    Only these series are read: collecting the whole counter would build every series the
    run has created, hundreds of them, on every example.
    """
    names = counter._labelnames
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for combination in itertools.product(*(tuple(choices[name]) for name in names)):
        labels = dict(zip(names, combination))
        found[tuple(sorted(labels.items()))] = counter.labels(**labels)._value.get()
    return found


def increments(before: dict[Any, float], after: dict[Any, float]) -> dict[Any, float]:
    """Label sets whose value went up, and by how much."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def same_json(sent: Any, kept: Any) -> bool:
    """Whether a value survived decode → encode with its meaning (numbers compare as numbers)."""
    if isinstance(sent, bool) or isinstance(kept, bool):
        return type(sent) is type(kept) and sent == kept
    if isinstance(sent, (int, float)) and isinstance(kept, (int, float)):
        return sent == kept if isinstance(sent, int) and isinstance(kept, int) else float(sent) == float(kept)
    if isinstance(sent, dict) and isinstance(kept, dict):
        return sent.keys() == kept.keys() and all(same_json(sent[k], kept[k]) for k in sent)
    if isinstance(sent, list) and isinstance(kept, list):
        return len(sent) == len(kept) and all(same_json(a, b) for a, b in zip(sent, kept))
    return type(sent) is type(kept) and sent == kept


def assert_faithful(record: HeaterRecord, payload: bytes) -> None:
    """An accepted record round-trips and keeps every field exactly as it was sent."""
    record_type = type(record)
    again = decode(encode(record), record_type)
    assert again == record, f"{record_type.__name__} does not round-trip: {record!r} → {again!r}"
    sent = json.loads(payload)
    kept = json.loads(encode(record))
    for name, value in sent.items():
        assert same_json(value, kept[name]), f"{record_type.__name__}.{name}: sent {value!r}, record holds {kept[name]!r}"
    for name, declared in _declared(record_type).items():
        assert isinstance(getattr(record, name), declared), f"{record_type.__name__}.{name} is {getattr(record, name)!r}"


@functools.lru_cache(maxsize=None)
def _declared(record_type: type[HeaterRecord]) -> dict[str, type]:
    """Field → the Python type its value must have in a record."""
    hints = typing.get_type_hints(record_type)
    return {name: _runtime_type(hints[name]) for name in record_type._options.fields}


def _runtime_type(hint: Any) -> Any:
    """What ``isinstance`` checks for a type hint (an optional field: the type or None)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(_runtime_type(arg) for arg in typing.get_args(hint))
    return typing.get_origin(hint) or hint


def run_in(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    """Run one async entry point to completion on the module's loop."""
    return loop.run_until_complete(coro)


@functools.lru_cache(maxsize=None)
def _ready_service(spec: ServiceSpec) -> EdgeService:
    """One ready edge service per spec, shared by the examples (it holds no per-message state)."""
    service = EdgeService(spec, Settings.from_env())
    service.mark_ready()
    return service


# -- payload strategies -------------------------------------------------------------------

#: The FATAL occurrence that latches in the reset gate's view.
FUZZ_OCCURRENCE = "bank/overtemp@1796000000.0"

TIME_FIELDS = {"raised_at", "cleared_at", "received_at", "detected_at", "issued_at", "read_at", "changed_at", "at", "now"}

#: Hand-picked values that break decoders, drawn as one choice each: cheap to generate,
#: so the example budget goes to variety of messages rather than to long random strings.
EDGE_STRINGS = (
    "", " ", "x", "FATAL", "false", "true", "null", "1", "NaN", "water.0", "a/b/c", "\\u0046ATAL",
    "ünï©ødé", "𝄞", "\x00\x1f\x7f", "\ud800", "x\udfffy", "a" * 201, "\u202e",
)
EDGE_VALUES = (
    None, True, False, 0, -1, 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 0.5, -0.0, 1e-320, 1e308,
    float("nan"), float("inf"), float("-inf"), "", "x", "false", "1", "\ud800", [], [1, "a"], {}, {"a": "b"},
    {"a": 1}, [[[]]], {"a": {"b": None}},
)
texts = st.one_of(st.sampled_from(EDGE_STRINGS), st.text(max_size=10))
json_values = st.one_of(
    st.sampled_from(EDGE_VALUES), st.integers(-(2**70), 2**70), st.floats(), texts,
    st.lists(st.sampled_from(EDGE_VALUES), max_size=3), st.dictionaries(texts, st.sampled_from(EDGE_VALUES), max_size=2),
)
timestamps = st.one_of(
    st.floats(-30, 2).map(lambda ago: time.time() + ago),
    st.sampled_from((0, -1, 0.0, 1e308, -1e308, 2**53, 2**63 - 1)),
    st.floats(allow_nan=False, allow_infinity=False),
)
finite = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**60), 2**60), st.sampled_from((0, -0.0, 1e308, 2**64 - 1)))


def weighted(*choices: tuple[int, SearchStrategy[Any]]) -> SearchStrategy[Any]:
    """One of several strategies, picked with the given weights (``one_of`` would pick them evenly)."""
    picks = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(range(len(picks))).flatmap(lambda i: picks[i])


GOOD_STRINGS = ("a", "bank", "water.1", "burner.flame", "i2c/valve", "bank/overtemp/water.0", "ünï©ødé", "FATAL", "x" * 120)
GOOD_MAPS = ({}, {"a": "b"}, {"sensor": "water.0", "value": "61.5"}, {"ü": ""})
GOOD_DOCUMENTS = ({}, {"max_target_c": 75}, {"a": [1, 2.5, None], "b": {"c": "d"}}, {"ü": True})


def _field_strategy(record_type: type[HeaterRecord], name: str, declared: Any) -> SearchStrategy[Any]:
    """Values the record accepts (one choice each: cheap); ``mutated`` brings the wrong ones."""
    special: dict[tuple[str, str], SearchStrategy[Any]] = {
        ("SensorReading", "kind"): st.sampled_from(("temperature", "flame")),
        ("SensorReading", "sensor"): st.sampled_from(("water.0", "water.1", "water.2", "burner.flame", "water.200")),
        ("SensorReading", "value"): st.floats(-40, 150),
        ("SensorReading", "status"): st.sampled_from((0, 1, 2, 255)),
        ("HeatingJobState", "state"): st.sampled_from(("idle", "igniting", "heating", "done", "failed")),
        ("RelayCommand", "lease_s"): st.floats(0, 30),
        ("OperatorReset", "nonce"): st.binary(min_size=8, max_size=16).map(bytes.hex),
        # A reset names the occurrence that latches in the gate's view, or not; for the trip the Pico is at, or not.
        ("OperatorReset", "occurrences"): st.sampled_from(([FUZZ_OCCURRENCE], [], ["bank/other@1.0"])),
        ("OperatorReset", "trip_count"): st.sampled_from((None, 0, 7)),
    }
    if (record_type.__name__, name) in special:
        return special[(record_type.__name__, name)]
    if name == "schema_version":
        return st.just(1)
    if name in TIME_FIELDS:
        return timestamps
    origin = typing.get_origin(declared) or declared
    if origin is Severity:
        return st.sampled_from([s.value for s in Severity])
    if origin is RelayAction:
        return st.sampled_from([a.value for a in RelayAction])
    if origin is str:
        return st.sampled_from(GOOD_STRINGS)
    if origin is float:
        return finite
    if origin is bool:
        return st.booleans()
    if origin is int:
        return st.integers(-(2**63), 2**63 - 1)
    if origin is dict:
        return st.sampled_from(GOOD_MAPS if typing.get_args(declared) == (str, str) else GOOD_DOCUMENTS)
    return json_values


@functools.lru_cache(maxsize=None)
def record_dicts(record_type: type[HeaterRecord]) -> SearchStrategy[dict[str, Any]]:
    """Dicts shaped like ``record_type``: every required field, some optional ones."""
    hints = typing.get_type_hints(record_type)
    fields = record_type._options.fields
    defaults = record_type._options.defaults
    required = {n: _field_strategy(record_type, n, hints[n]) for n in fields if n not in defaults}
    optional = {n: _field_strategy(record_type, n, hints[n]) for n in fields if n in defaults and n != "schema_version"}
    return st.fixed_dictionaries({**required, "schema_version": st.just(1)}, optional=optional)


@st.composite
def mutated(draw: st.DrawFn, record_type: type[HeaterRecord]) -> dict[str, Any]:
    """A record-shaped dict, often with 1–3 mutations: a wrong-typed value, a missing or unknown field, a bad version."""
    data = dict(draw(record_dicts(record_type)))
    for _ in range(draw(st.sampled_from((0, 0, 0, 1, 1, 2, 3)))):
        kind = draw(st.sampled_from(("junk", "junk", "junk", "drop", "extra", "version")))
        names = sorted(data)
        if kind == "junk" and names:
            data[draw(st.sampled_from(names))] = draw(json_values)
        elif kind == "drop" and names:
            del data[draw(st.sampled_from(names))]
        elif kind == "extra":
            data[draw(st.text(max_size=10))] = draw(json_values)
        else:
            data["schema_version"] = draw(st.sampled_from((0, 2, -1, "1", True, 1.0, None, 2**64, [1])))
    return data


def _dump(data: Any, style: str) -> bytes:
    """JSON bytes in one of the spellings a producer might use (or get wrong)."""
    if style == "utf-16":
        return json.dumps(data).encode("utf-16")
    if style == "bom":
        return b"\xef\xbb\xbf" + json.dumps(data).encode()
    if style == "raw-surrogates":
        return json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if style == "pretty":
        return json.dumps(data, indent=2).encode()
    return json.dumps(data, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=None)
def encoded(record_type: type[HeaterRecord]) -> SearchStrategy[bytes]:
    """JSON bytes of record-shaped dicts (or of any JSON value), in the spellings of ``_dump``."""
    styles = st.sampled_from(("compact",) * 6 + ("pretty", "utf-16", "bom", "raw-surrogates"))
    return st.builds(_dump, weighted((3, mutated(record_type)), (1, json_values)), styles)


def _flip(payload: bytes, at: int, value: int, cut: bool) -> bytes:
    """``payload`` truncated at, or with one byte replaced at, position ``at``."""
    if not payload:
        return bytes([value])
    at %= len(payload)
    return payload[:at] if cut else payload[:at] + bytes([value]) + payload[at + 1 :]


def _padded(payload: bytes, size: int) -> bytes:
    """``payload`` padded with JSON whitespace to ``size`` bytes (just under, at, just over the limit)."""
    return payload + b" " * max(0, size - len(payload))


def _nested(depth: int, obj: bool) -> bytes:
    """Arrays or objects nested ``depth`` deep: deeper than the JSON parser's recursion limit."""
    if obj:
        return b'{"schema_version": 1, "a": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
    return b"[" * depth + b"]" * depth


@functools.lru_cache(maxsize=None)
def payloads(record_type: type[HeaterRecord]) -> SearchStrategy[bytes | None]:
    """Message values for a topic of ``record_type``: mostly near-valid, some hostile."""
    valid = encoded(record_type)
    return weighted(
        (12, valid),
        (1, st.builds(_flip, valid, st.integers(0, 10**6), st.integers(0, 255), st.booleans())),
        (1, st.binary(max_size=80)),
        (1, st.builds(_padded, valid, st.sampled_from((MAX_MESSAGE_BYTES - 1, MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1)))),
        (1, st.builds(_nested, st.integers(1, 30_000), st.booleans())),
        (1, st.integers(10, 6_000).map(lambda n: b'{"schema_version": 1, "n": ' + b"9" * n + b"}")),
        (1, st.sampled_from((b"NaN", b'{"schema_version": 1, "x": Infinity}', b'{"schema_version": 1, "x": 1e999}', b"{}", b"null", b""))),
        (1, st.none()),
    )


# -- 1. every topic through the agents' decode path (dead letters) -----------------------------


@dataclass
class _Message:
    """Where a consumed message came from (what ``dead_letter`` reports)."""

    topic: str
    partition: int
    offset: int


@dataclass
class _Event:
    """A consumed message as a Faust stream yields it: its origin and its raw value."""

    message: _Message
    value: bytes | None


class _Stream:
    """The part of a Faust stream ``HeaterService.records`` uses: its events."""

    def __init__(self, events: list[_Event]) -> None:
        self._events = events

    async def events(self) -> AsyncIterator[_Event]:
        for item in self._events:
            yield item


@dataclass
class _Sent:
    """One message sent to the dead-letter topic."""

    key: Any
    value: Any
    headers: dict[str, bytes]


class _DeadLetters:
    """Stands in for the dead-letter topic; keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[_Sent] = []

    async def send(self, key: Any = None, value: Any = None, headers: dict[str, bytes] | None = None) -> "asyncio.Future[None]":
        """Like a Faust topic's send: the returned future resolves once the broker has the record."""
        self.sent.append(_Sent(key, value, dict(headers or {})))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


FUZZ_SERVICE = HeaterService(ServiceSpec("fuzz-agent", ServiceKind.DISPLAY, description="fuzzed decode path"))
TOPIC_TYPES: list[tuple[str, type[HeaterRecord], bool]] = [
    *((name, record_type, False) for name, record_type in sorted(RECORD_FOR_TOPIC.items())),
    (TICKS.name, BankTick, True),
]


@pytest.mark.parametrize(("topic", "record_type", "explicit"), TOPIC_TYPES, ids=[t for t, _, _ in TOPIC_TYPES])
@settings(max_examples=300, **FUZZ)
@given(data=st.data())
def test_topic_message_is_a_record_or_a_dead_letter(
    loop: asyncio.AbstractEventLoop, topic: str, record_type: type[HeaterRecord], explicit: bool, data: st.DataObject
) -> None:
    """Agents decode raw bytes; a bad message is counted and dead-lettered with its bytes, never lost or fatal."""
    payload = data.draw(payloads(record_type), label="payload")
    offset = data.draw(st.integers(0, 2**40), label="offset")
    service = FUZZ_SERVICE
    letters = service._dead_letters = _DeadLetters()  # type: ignore[assignment]
    watched = dict(service=[service.spec.name], topic=[topic])
    rejected_before = series(metrics.MESSAGES_REJECTED, **watched, reason=DECODE_REASONS)
    processed_before = series(metrics.MESSAGES_PROCESSED, **watched)

    async def consume() -> list[HeaterRecord]:
        stream = _Stream([_Event(_Message(topic, 0, offset), payload)])
        return [r async for r in service.records(stream, record_type if explicit else None)]  # type: ignore[arg-type]

    records = run_in(loop, consume())
    rejected = increments(rejected_before, series(metrics.MESSAGES_REJECTED, **watched, reason=DECODE_REASONS))
    processed = increments(processed_before, series(metrics.MESSAGES_PROCESSED, **watched))
    if records:
        event("accepted")
        (record,) = records
        assert isinstance(record, record_type) and not letters.sent and not rejected
        assert processed == {(("service", service.spec.name), ("topic", topic)): 1.0}
        assert payload is not None
        assert_faithful(record, payload)
        return
    assert len(letters.sent) == 1, "a refused message must be dead-lettered"
    letter = letters.sent[0]
    reason = letter.headers["reason"].decode()
    event(f"dead-lettered: {reason}")
    assert reason in DECODE_REASONS and letter.headers["detail"]
    assert letter.value == (payload or b""), "the dead letter keeps the original bytes"
    assert letter.headers["source-topic"] == topic.encode() and letter.headers["source-offset"] == str(offset).encode()
    assert rejected == {(("reason", reason), ("service", service.spec.name), ("topic", topic)): 1.0}
    with pytest.raises(DecodeError) as refused:
        decode(payload, record_type)
    assert refused.value.reason == reason


# -- 2. the platform watch (every service's view of alarms and the latch) ---------------------


WATCH_SERVICE = "fuzz-watch"
WATCH_TOPICS = (topics.CREATE_ALARM.name, topics.DELETE_ALARM.name, topics.PLATFORM_LATCH.name)
watch_topics = st.sampled_from(WATCH_TOPICS)


@settings(max_examples=500, **FUZZ)
@given(data=st.data())
def test_platform_watch_sees_every_fatal_and_counts_what_it_skips(data: st.DataObject) -> None:
    """A FATAL alarm that decodes must latch the watch whatever its key; an undecodable one it reads is counted."""
    topic = data.draw(watch_topics, label="topic")
    payload = data.draw(payloads(RECORD_FOR_TOPIC[topic]), label="payload")
    key = data.draw(st.none() | st.sampled_from((f"{WATCH_SERVICE}/x".encode(), b"bank/overtemp")) | st.binary(max_size=12), label="key")
    watch = PlatformWatch("127.0.0.1:9", WATCH_SERVICE)
    counted = dict(service=[WATCH_SERVICE], topic=WATCH_TOPICS, reason=DECODE_REASONS)
    before = series(metrics.WATCH_SKIPPED, **counted)
    watch._apply(topic, key, payload)
    skipped = increments(before, series(metrics.WATCH_SKIPPED, **counted))
    try:
        record = decode(payload, RECORD_FOR_TOPIC[topic])
    except DecodeError as exc:
        own = (key or b"").startswith(f"{WATCH_SERVICE}/".encode())
        may_be_fatal = payload is not None and (b'"FATAL"' in payload or b"\\u" in payload)
        read = topic == topics.PLATFORM_LATCH.name or own or (topic == topics.CREATE_ALARM.name and may_be_fatal)
        if read:
            assert skipped == {(("reason", exc.reason), ("service", WATCH_SERVICE), ("topic", topic)): 1.0}
        else:
            assert not skipped  # another service's non-FATAL message: AlarmsServer dead-letters it
        assert not watch.latch.latched
        return
    assert not skipped
    if isinstance(record, Alarm) and record.is_fatal:
        assert watch.latch.latched and watch.latch.fatal_alarm_id == record.alarm_id, "a decodable FATAL alarm was missed"


# -- 3. CAN frames: the adapter's frame handler and the DBC codec ------------------------------


def _can_adapter() -> tuple[CanAdapter, CollectorRegistry]:
    """A fresh CAN adapter whose counters are exported to a registry of its own."""
    adapter = CanAdapter(_ready_service(CAN_SPEC), bus=None)
    registry = CollectorRegistry()
    can_metrics.register(adapter.stats, registry)
    return adapter, registry


def _can_samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exported CAN counter sample, read in one scrape: (name, labels) → value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name.endswith("_total")
    }


def _frame(arbitration_id: int, data: bytes, extended: bool, remote: bool, error: bool) -> can.Message:
    """A frame as python-can hands it to the reader (no validation: the bus delivers what it gets)."""
    return can.Message(
        arbitration_id=arbitration_id, data=data, is_extended_id=extended, is_remote_frame=remote,
        is_error_frame=error, is_fd=len(data) > 8, check=False,
    )


def _water(sensor: int, tenths: int, sequence: int, status: int, reserved: bytes) -> bytes:
    """A valid WaterTemp payload whose reserved bytes 6–7 carry anything."""
    _, data = frames.encode_water_temp(sensor, tenths / 10, sequence, status)
    return data[:6] + reserved


ours = st.sampled_from((frames.WATER_TEMP_ID, frames.BURNER_STATUS_ID))
can_frames = st.one_of(
    st.builds(_frame, ours, st.binary(min_size=8, max_size=8), st.just(False), st.just(False), st.just(False)),
    st.builds(
        _frame, st.just(frames.WATER_TEMP_ID),
        st.builds(_water, st.integers(0, 255), st.integers(-400, 1500), st.integers(0, 2**16), st.integers(0, 255), st.binary(min_size=2, max_size=2)),
        st.just(False), st.just(False), st.just(False),
    ),
    st.builds(_frame, ours, st.binary(max_size=16), st.booleans(), st.booleans(), st.just(False)),
    st.builds(_frame, st.integers(0, 0x7FF), st.binary(max_size=8), st.just(False), st.booleans(), st.just(False)),
    st.builds(_frame, st.integers(0, 0x1FFFFFFF), st.binary(max_size=64), st.booleans(), st.booleans(), st.booleans()),
)


@settings(max_examples=1400, **FUZZ)
@given(message=can_frames, received_at=timestamps, now=st.floats(0, 1e6))
def test_can_frame_is_a_reading_or_a_counted_rejection(message: can.Message, received_at: float, now: float) -> None:
    """Every frame off the bus is a ``sensorData`` message, a bad frame counted by reason, or a counted error frame."""
    adapter, registry = _can_adapter()
    received_at = float(received_at)
    before = _can_samples(registry)
    out = adapter.handle(Received(message, received_at), now)
    changed = increments(before, _can_samples(registry))
    after = {
        name: {labels: value for (sample_name, labels), value in changed.items() if sample_name == name}
        for name in ("heater_can_frames_total", "heater_can_bad_frames_total", "heater_can_error_frames_total")
    }
    adapter.health.assess(now)
    adapter.snapshot()
    if message.is_error_frame:
        assert out is None and not after["heater_can_frames_total"] and not after["heater_can_bad_frames_total"]
        assert sum(after["heater_can_error_frames_total"].values()) >= 1
        return
    try:
        frame = translate.decode_message(message.arbitration_id, message.data, message.is_extended_id, message.is_remote_frame)
    except frames.FrameError as exc:
        assert out is None and not after["heater_can_frames_total"]
        assert after["heater_can_bad_frames_total"] == {(("reason", translate.reason_of(exc)),): 1.0}
        return
    assert out is not None and not after["heater_can_bad_frames_total"]
    assert after["heater_can_frames_total"] == {(("kind", frame.kind.value),): 1.0}
    key, value, _ = out
    reading = decode(value, RECORD_FOR_TOPIC[topics.SENSOR_DATA.name])
    assert_faithful(reading, value)
    assert key == reading.sensor.encode() and reading.received_at == received_at and reading.sequence == frame.sequence
    data = bytes(message.data)
    if frame.kind is frames.FrameKind.WATER_TEMP:
        assert frame.value is not None and frame.sensor is not None
        _, again = frames.encode_water_temp(frame.sensor, frame.value, frame.sequence, frame.status)
        assert again[:6] == data[:6], "the reading says what the frame's signals say"
        assert reading.value == frame.value and reading.status == frame.status
    else:
        _, again = frames.encode_burner_status(bool(frame.flame), frame.sequence)
        assert again[1:3] == data[1:3] and (again[0] & 1) == (data[0] & 1)
        assert reading.value == (1.0 if data[0] & 1 else 0.0)


@settings(max_examples=500, **FUZZ)
@given(
    sensor=st.integers(-3, 260),
    temperature=st.floats() | st.floats(-41, 151),
    sequence=st.integers(-(2**70), 2**70),
    status=st.integers(-3, 260),
)
def test_can_encoders_refuse_out_of_range_or_round_trip(sensor: int, temperature: float, sequence: int, status: int) -> None:
    """What the simulated sensors put on the bus is either refused with OutOfRange or decodes to the same values."""
    try:
        arbitration_id, data = frames.encode_water_temp(sensor, temperature, sequence, status)
    except frames.OutOfRange:
        assert not (0 <= sensor <= 255 and 0 <= status <= 255 and math.isfinite(temperature) and -40 <= temperature <= 150)
        return
    decoded = frames.decode(arbitration_id, data)
    assert (decoded.sensor, decoded.status, decoded.sequence) == (sensor, status, sequence % frames.SEQUENCE_MODULO)
    assert decoded.value == round(temperature, 1)
    arbitration_id, data = frames.encode_burner_status(bool(sensor & 1), sequence)
    assert frames.decode(arbitration_id, data).flame is bool(sensor & 1)


@settings(max_examples=500, **FUZZ)
@given(index=st.integers(0, 100), data=st.binary(min_size=8, max_size=8))
def test_every_dbc_message_decodes_as_cantools_reads_it_or_is_refused(index: int, data: bytes) -> None:
    """Every message of ``heater.dbc`` (not only the two the code names) decodes consistently with the DBC."""
    messages = frames.database().messages
    message = messages[index % len(messages)]
    signals = message.decode(data, decode_choices=False)
    try:
        frame = frames.decode(message.frame_id, data)
    except frames.OutOfRange:
        assert message.frame_id == frames.WATER_TEMP_ID
        assert not -40 <= round(float(signals["temperature"]), 1) <= 150
        return
    assert frame.arbitration_id == message.frame_id and frame.sequence == signals["sequence"]
    if message.name == "WaterTemp":
        assert frame.kind is frames.FrameKind.WATER_TEMP
        assert (frame.sensor, frame.status, frame.value) == (signals["sensor"], signals["status"], round(float(signals["temperature"]), 1))
    else:
        assert message.name == "BurnerStatus" and frame.kind is frames.FrameKind.BURNER_STATUS
        assert frame.flame is bool(signals["flame"])


# -- 4. the I2C relay adapter: commands, readings, operator resets --------------------------------


#: The series of the relay adapter's counters a message can move.
COMMAND_SERIES = dict(
    action=[*(a.value for a in RelayAction), "unknown"], result=["applied", "accepted", "refused", "unconfirmed", "halted", "malformed"]
)
SKIPPED_SERIES = dict(topic=[topics.I2C_HEATING.name, topics.SENSOR_FRESHNESS.name], reason=DECODE_REASONS)
RESET_RESULTS = ("released", "failed", "vault-unavailable", *(f"refused-{k}" for k in ("invalid", "forged", "replayed", "stale", "outdated")))


@dataclass
class _Consumed:
    """What the adapters and the job read of a consumed Kafka message: its value."""

    value: bytes | None


def _edge(spec: ServiceSpec, outbox: Outbox) -> EdgeService:
    """The (ready) edge service of ``spec``, sending to ``outbox`` instead of Kafka."""
    service = _ready_service(spec)
    service.producer = outbox  # type: ignore[assignment]
    service.alarms = AlarmClient(spec.name, outbox)
    return service


class _Watch:
    """What the reset gate reads from the platform watch: the latch."""

    def __init__(self, fatal_at: float) -> None:
        self.latch = LatchView({FUZZ_OCCURRENCE: Occurrence(FUZZ_OCCURRENCE, "bank/overtemp", "fuzz", fatal_at)})
        self.on_change: list[Any] = []


def _relay_adapter(run_dir: Path, outbox: Outbox) -> RelayAdapter:
    """A ready relay adapter on a Pico whose watchdog is armed and never expires (its clock stands still)."""
    pico = Pico(Nvram(run_dir), clock=lambda: 0.0)
    board = RelayBoard(PicoBus(pico))  # type: ignore[arg-type]
    board.kick()
    adapter = RelayAdapter(_edge(I2C_SPEC, outbox), board)
    adapter.io._executor = InlineExecutor()  # type: ignore[assignment]
    adapter.service.watch = _Watch(time.time() - 60)  # type: ignore[assignment]
    return adapter


@pytest.fixture(scope="module")
def i2c_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the simulated Picos keep their NVRAM and the reset gate its ledger."""
    return tmp_path_factory.mktemp("fuzz-i2c")


@settings(max_examples=350, **FUZZ)
@given(commands=st.lists(payloads(RECORD_FOR_TOPIC[topics.I2C_HEATING.name]), min_size=1, max_size=2))
def test_relay_command_is_carried_out_or_counted_as_malformed(
    loop: asyncio.AbstractEventLoop, i2c_dir: Path, commands: list[bytes | None]
) -> None:
    """Every ``I2CHeating`` message ends as exactly one counted result; a malformed one also counts its reason."""
    outbox = Outbox()
    adapter = _relay_adapter(i2c_dir, outbox)
    try:
        for payload in commands:
            before = series(i2c_metrics.COMMANDS, **COMMAND_SERIES)
            skipped_before = series(i2c_metrics.SKIPPED, **SKIPPED_SERIES)
            run_in(loop, adapter.on_command(payload))
            counted = increments(before, series(i2c_metrics.COMMANDS, **COMMAND_SERIES))
            skipped = increments(skipped_before, series(i2c_metrics.SKIPPED, **SKIPPED_SERIES))
            try:
                record = decode(payload, RECORD_FOR_TOPIC[topics.I2C_HEATING.name])
            except DecodeError as exc:
                assert counted == {(("action", "unknown"), ("result", "malformed")): 1.0}
                assert skipped == {(("reason", exc.reason), ("topic", topics.I2C_HEATING.name)): 1.0}
                continue
            assert not skipped and len(counted) == 1 and sum(counted.values()) == 1.0
            ((labels, _),) = counted.items()
            assert dict(labels)["action"] == record.action.value  # type: ignore[attr-defined]
            assert dict(labels)["result"] in {"applied", "accepted", "refused", "unconfirmed"}
            assert adapter.last_command is not None and adapter.last_command["command_id"] == record.command_id  # type: ignore[attr-defined]
        for alarm in outbox.alarms():
            assert alarm.source == I2C_SPEC.name
    finally:
        adapter.io.close()


@pytest.fixture(scope="module")
def reading_adapter(i2c_dir: Path) -> Iterator[RelayAdapter]:
    """One relay adapter for the freshness test: freshness only moves its data-freshness clocks."""
    adapter = _relay_adapter(i2c_dir, Outbox())
    yield adapter
    adapter.io.close()


@settings(max_examples=250, **FUZZ)
@given(batch=st.lists(payloads(RECORD_FOR_TOPIC[topics.SENSOR_FRESHNESS.name]), min_size=1, max_size=4))
def test_relay_adapter_freshness_is_used_or_counted(reading_adapter: RelayAdapter, batch: list[bytes | None]) -> None:
    """The adapter takes the newest freshness record that decodes; every bad one it reads on the way is counted."""
    before = series(i2c_metrics.SKIPPED, **SKIPPED_SERIES)
    reading_adapter.on_freshness([_Consumed(v) for v in batch])  # type: ignore[misc]
    skipped = increments(before, series(i2c_metrics.SKIPPED, **SKIPPED_SERIES))
    expected: dict[Any, float] = {}
    for payload in reversed(batch):
        try:
            decode(payload, RECORD_FOR_TOPIC[topics.SENSOR_FRESHNESS.name])
        except DecodeError as exc:
            labels = (("reason", exc.reason), ("topic", topics.SENSOR_FRESHNESS.name))
            expected[labels] = expected.get(labels, 0.0) + 1
            continue
        break  # older records than the newest valid one are not read: nothing to count
    assert skipped == expected


def _signature(payload: bytes) -> str:
    """The test's stand-in for a Vault transit signature: a digest of the signed bytes."""
    return "fuzz:" + hashlib.sha256(payload).hexdigest()


async def _verify(payload: bytes, signature: str) -> bool:
    """The verifier the reset gate gets instead of Vault's."""
    return signature == _signature(payload)


@st.composite
def reset_payloads(draw: st.DrawFn) -> bytes | None:
    """``operatorReset`` values; some carry a signature the test's verifier accepts."""
    if draw(st.booleans()):
        return draw(payloads(OperatorReset))
    data = dict(draw(record_dicts(OperatorReset)))
    try:
        data["signature"] = _signature(OperatorReset(**data).signed_payload())
    except (ValueError, TypeError, OverflowError):
        pass
    return _dump(data, "compact")


@settings(max_examples=300, **FUZZ)
@given(payload=reset_payloads())
def test_operator_reset_record_is_refused_with_an_alarm_or_released(
    loop: asyncio.AbstractEventLoop, i2c_dir: Path, payload: bytes | None
) -> None:
    """The halted adapter acts on a reset only once verified; every other record is a counted refusal and an alarm."""
    outbox = Outbox()
    adapter = _relay_adapter(i2c_dir, outbox)
    gate = ResetGate(adapter, ResetLedger(i2c_dir / "ledger"), verifier=_verify)
    try:
        before = series(i2c_metrics.RESETS, result=RESET_RESULTS)
        run_in(loop, gate.handle(_Consumed(payload)))  # type: ignore[arg-type]
        results = increments(before, series(i2c_metrics.RESETS, result=RESET_RESULTS))
        try:
            record = decode(payload, OperatorReset)
        except DecodeError:
            assert results == {(("result", "refused-invalid"),): 1.0}
            assert [a.code for a in outbox.alarms()] == ["reset-refused"]
            return
        assert gate.latch.latched
        assert len(results) == 1 and sum(results.values()) == 1.0
        ((labels, _),) = results.items()
        result = dict(labels)["result"]
        event(f"reset {result}")
        if result.startswith("refused-"):
            assert [a.code for a in outbox.alarms()] == ["reset-refused"]
        else:
            assert result == "released" and record.nonce in gate.ledger.used_nonces  # type: ignore[attr-defined]
            assert record.signature == _signature(record.signed_payload())  # type: ignore[attr-defined]
            assert not not_named(gate.latch, record.occurrences), "released only naming every FATAL that latches"  # type: ignore[attr-defined]
    finally:
        adapter.io.close()


# -- 5. the heating job's inputs -------------------------------------------------------------------


@pytest.fixture(scope="module")
def heating_job(loop: asyncio.AbstractEventLoop) -> HeatingJob:
    """A started heating job (its commands, states and alarms go to a recorder)."""
    job = HeatingJob(_edge(JOB_SPEC, Outbox()), HeatingMachine(45.0), "fuzz")
    run_in(loop, job.carry_out(job.machine.start(time.monotonic())))
    return job


@settings(max_examples=250, **FUZZ)
@given(
    topic=st.sampled_from((topics.SENSOR_DATA.name, topics.RELAY_STATE.name)),
    batch=st.data(),
)
def test_heating_job_inputs_are_used_or_counted(
    loop: asyncio.AbstractEventLoop, heating_job: HeatingJob, topic: str, batch: st.DataObject
) -> None:
    """The job reads readings and relay states itself; each one it cannot decode is counted, not just logged."""
    values = batch.draw(st.lists(payloads(RECORD_FOR_TOPIC[topic]), min_size=1, max_size=2), label="values")
    job = heating_job
    counted = dict(service=[JOB_SPEC.name], topic=[topics.SENSOR_DATA.name, topics.RELAY_STATE.name], reason=DECODE_REASONS)
    before = series(metrics.SKIPPED, **counted)
    run_in(loop, job.on_messages(topic, [_Consumed(v) for v in values]))  # type: ignore[misc]
    skipped = increments(before, series(metrics.SKIPPED, **counted))
    expected: dict[Any, float] = {}
    for payload in values:
        try:
            decode(payload, RECORD_FOR_TOPIC[topic])
        except DecodeError as exc:
            labels = (("reason", exc.reason), ("service", JOB_SPEC.name), ("topic", topic))
            expected[labels] = expected.get(labels, 0.0) + 1
    assert skipped == expected


# -- 6. the Pico's I2C line protocol (the simulated hardware's entry point) ----------------------------


def _line(op: str, address: int, register: int, value: int | None, spelling: str) -> str:
    """A request line of the Pico's protocol (``R aa rr`` / ``W aa rr vv``), spelled one of three ways."""
    parts = [op, format(address, "x"), format(register, "x")] + ([] if value is None else [format(value, "x")])
    if spelling == "upper":
        parts = [p.upper() for p in parts]
    elif spelling == "0x":
        parts = [parts[0], *("0x" + p for p in parts[1:])]
    return " ".join(parts)


pico_lines = st.one_of(
    st.builds(
        _line, st.sampled_from("RW"),
        st.sampled_from((registers.PICO_ADDRESS,)) | st.integers(-5, 300),
        st.integers(0, 20) | st.integers(-(2**70), 2**70),
        st.none() | st.integers(0, 255) | st.sampled_from((registers.KICK_MAGIC, registers.RESET_ARM, registers.RESET_CONFIRM)) | st.integers(-300, 2**20),
        st.sampled_from(("plain", "upper", "0x")),
    ),
    st.text(max_size=40),
    st.binary(max_size=64).map(lambda b: b.decode("ascii", "replace")),
)


@settings(max_examples=450, **FUZZ)
@given(lines=st.lists(pico_lines, min_size=1, max_size=4))
def test_pico_answers_every_line_with_ok_or_nack(loop: asyncio.AbstractEventLoop, i2c_dir: Path, lines: list[str]) -> None:
    """The simulated board answers each request line ``OK``/``OK xx`` or ``NACK`` (the bus's refusal), never crashes."""
    pico = Pico(Nvram(i2c_dir / "pico"), clock=lambda: 0.0)
    server = PicoServer(pico, "127.0.0.1", 0)

    async def transact() -> list[str]:
        return [server.handle(line) for line in lines]

    try:
        replies = run_in(loop, transact())
    finally:
        if server._timer is not None:
            server._timer.cancel()
    for line, reply in zip(lines, replies):
        assert reply == "OK" or reply == "NACK" or (reply.startswith("OK ") and len(reply) == 5 and int(reply[3:], 16) <= 0xFF), (line, reply)
        parts = line.split()
        if reply != "NACK":
            assert parts[0] in "RW" and len(parts) == (3 if parts[0] == "R" else 4)
