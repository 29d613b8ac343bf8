"""Trace context through Kafka headers, the span files, and `heater trace`'s timeline (no broker needed)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from heater import traces
from streams import exitcodes, topics, tracing
from streams.consistency import Effect, LedgerRow, Step
from streams.settings import Settings, SettingsError

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def recorded() -> Iterator[tuple[Tracer, InMemorySpanExporter]]:
    """A tracer whose finished spans are kept in memory, exported as each ends."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


def message(headers: Any, topic: str = topics.SENSOR_DATA.name, offset: int = 7) -> SimpleNamespace:
    """A consumed record as the agents and readers see it: topic, partition, offset, headers."""
    return SimpleNamespace(topic=topic, partition=0, offset=offset, headers=headers)


def only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


# -- propagation --------------------------------------------------------------------


def test_a_sent_record_continues_its_trace_where_it_is_consumed(recorded: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = recorded
    with tracing.sending(tracer, topics.I2C_HEATING.name) as sent_headers:
        pass
    assert [key for key, _ in sent_headers] == ["traceparent"]
    with tracing.consumed(tracer, message(sent_headers, topics.I2C_HEATING.name, offset=42)):
        pass
    sent, handled = only(exporter, "I2CHeating send"), only(exporter, "I2CHeating process")
    assert handled.context.trace_id == sent.context.trace_id
    assert handled.parent is not None and handled.parent.span_id == sent.context.span_id
    assert handled.attributes["messaging.destination.name"] == "I2CHeating"
    assert handled.attributes["messaging.kafka.offset"] == 42


def test_faust_dict_headers_carry_the_context_too(recorded: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = recorded
    with tracing.consumed(tracer, message({"traceparent": TRACEPARENT.encode()})):
        pass
    span = only(exporter, "sensorData process")
    assert format(span.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"


@pytest.mark.parametrize("raw", [None, [], {}, [("other", b"x")]])
def test_a_record_without_a_traceparent_starts_a_new_trace(recorded: tuple[Tracer, InMemorySpanExporter], raw: Any) -> None:
    tracer, exporter = recorded
    with tracing.consumed(tracer, message(raw)):
        pass
    with tracing.consumed(tracer, message(raw)):
        pass
    first, second = exporter.get_finished_spans()
    assert first.parent is None and second.parent is None
    assert first.context.trace_id != second.context.trace_id


def test_a_consumer_starts_new_traces_within_its_budget_and_continues_every_traced_record(
        recorded: tuple[Tracer, InMemorySpanExporter]) -> None:
    """A flooding sensor's readings, past the adapter's budget, come untraced: a consumer starts no trace for each."""
    tracer, exporter = recorded
    budget = tracing.TraceBudget(per_s=5.0)
    for offset in range(50):
        with tracing.consumed(tracer, message([], offset=offset), new_traces=budget) as span:
            assert span.is_recording() is (offset < 5)
        with tracing.consumed(tracer, message([("traceparent", TRACEPARENT.encode())], offset=offset), new_traces=budget):
            pass
    spans = exporter.get_finished_spans()
    assert [s.attributes["messaging.kafka.offset"] for s in spans if s.parent is None] == [0, 1, 2, 3, 4]
    assert sum(1 for s in spans if s.parent is not None) == 50, "a record that carries a trace always continues it"
    with tracing.consumed(tracer, message([], topics.I2C_HEATING.name), new_traces=budget) as span:
        assert span.is_recording(), "each topic has its own budget"
    with tracing.consumed(tracer, message([("traceparent", TRACEPARENT.encode())])):
        with tracing.consumed(tracer, message([]), new_traces=budget):
            with tracing.sending(tracer, topics.CREATE_ALARM.name):
                pass
    assert only(exporter, "createAlarm send").parent is None, "what an untraced record causes starts a trace of its own"


@pytest.mark.parametrize("garbage", [
    b"garbage", b"", b"\xff\xfe\x00", b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
    b"zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", TRACEPARENT.encode() + b"-extra-" * 100, 12345,
])
def test_a_garbage_traceparent_is_ignored_without_error(
    recorded: tuple[Tracer, InMemorySpanExporter], garbage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tracer, exporter = recorded
    with caplog.at_level(logging.WARNING):
        assert tracing.extract([("traceparent", garbage)]) is None
        with tracing.consumed(tracer, message([("traceparent", garbage)])):
            pass
    span = only(exporter, "sensorData process")
    assert span.parent is None and span.context.is_valid
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_untraced_topics_make_no_spans(recorded: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = recorded
    with tracing.consumed(tracer, message([("traceparent", TRACEPARENT.encode())], topics.HEARTBEATS.name)):
        pass
    with tracing.sending(tracer, topics.HEARTBEATS.name) as sent_headers:
        pass
    assert exporter.get_finished_spans() == () and sent_headers == []


def test_an_owed_effect_carries_the_trace_of_the_step_that_owed_it(recorded: tuple[Tracer, InMemorySpanExporter]) -> None:
    """The ledger sends effects after the step (and again after a restart): the traceparent travels in the row."""
    tracer, exporter = recorded
    step = Step(ledger=None)  # type: ignore[arg-type]
    with tracing.consumed(tracer, message([("traceparent", TRACEPARENT.encode())])):
        asyncio.run(step.owe(topics.CREATE_ALARM.name, b"bank/over", b"{}"))
    asyncio.run(step.owe(topics.CREATE_ALARM.name, b"bank/outside", b"{}"))
    handled = only(exporter, "sensorData process")
    traced, untraced = step.effects
    assert traced.traceparent == f"00-{handled.context.trace_id:032x}-{handled.context.span_id:016x}-01"
    assert traced.headers() == [("traceparent", traced.traceparent.encode())]
    assert untraced.traceparent == "" and untraced.headers() == []
    row = LedgerRow(seq=1, effects=[traced, untraced], settled=False)
    again = LedgerRow.from_row(json.loads(json.dumps(row.to_row())))
    assert again.effects == [traced, untraced]
    assert LedgerRow.from_row({"seq": 1, "effects": [["t", "k", "v"]]}).effects == [Effect("t", "k", "v")]


def test_a_batched_reading_span_starts_at_the_frame_reception(recorded: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = recorded
    received = time.time() - 0.25
    sent_headers = tracing.emitted(tracer, topics.SENSOR_DATA.name, received, {"heater.sensor": "water_temp_0"})
    tracing.emitted(tracer, topics.SENSOR_DATA.name, 1e308, {})  # a broken clock: the span starts now
    span, broken = exporter.get_finished_spans()
    assert abs(span.start_time / 1e9 - received) < 1e-3 and span.end_time >= span.start_time
    assert dict(sent_headers)["traceparent"].decode().split("-")[1] == f"{span.context.trace_id:032x}"
    assert broken.start_time / 1e9 == pytest.approx(time.time(), abs=5)


def test_the_trace_budget_traces_every_reading_at_rest() -> None:
    budget = tracing.TraceBudget(per_s=50.0)
    assert all(budget.take(sensor, 1000.0 + i * 0.1) for i in range(600) for sensor in ("water.0", "water.1"))


def test_the_trace_budget_holds_a_flooding_sensor_and_no_other() -> None:
    budget = tracing.TraceBudget(per_s=50.0)
    flood = [budget.take("water.2", 1000.0 + i / 9000) for i in range(9000)]  # one second at 9,000 frames/s
    assert 99 <= sum(flood) <= 101, sum(flood)  # the burst of 50, then 50 more in the second
    assert all(flood[:50]) and not any(flood[60:170])
    assert all(budget.take("water.0", 1000.0 + i * 0.1) for i in range(10))
    assert budget.take("water.2", 1001.1), "a tenth of a second later it may start a trace again"


def test_the_trace_budget_takes_a_clock_going_back_as_no_time() -> None:
    budget = tracing.TraceBudget(per_s=2.0)
    assert budget.take("s", 10.0) and budget.take("s", 10.0)
    assert not budget.take("s", 5.0), "time going back refills nothing"


# -- the tracer and its exporters -----------------------------------------------------


def test_the_file_exporter_writes_json_lines_under_the_run_dir(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path)
    tracer = tracing.tracer("tracing-test-file", settings)
    with tracing.sending(tracer, topics.CREATE_ALARM.name, **{"heater.severity": "FATAL"}):
        pass
    tracing.flush()
    [line] = (tmp_path / "traces" / "tracing-test-file.jsonl").read_text().splitlines()
    assert traces.FATAL_MARK in line, "`heater trace --last-fatal` finds FATAL spans by this text"
    span = json.loads(line)
    assert span["service"] == "tracing-test-file" and span["name"] == "createAlarm send" and span["kind"] == "producer"
    assert len(span["trace_id"]) == 32 and span["end_ns"] >= span["start_ns"]


def test_a_span_file_rotates_at_its_bound(tmp_path: Path, recorded: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, memory = recorded
    for _ in range(30):
        with tracing.sending(tracer, topics.CREATE_ALARM.name):
            pass
    exporter = tracing.JsonLinesExporter(tmp_path / "svc.jsonl", max_bytes=2000)
    for span in memory.get_finished_spans():
        exporter.export([span])
    assert (tmp_path / "svc.jsonl.1").exists()
    assert (tmp_path / "svc.jsonl").stat().st_size <= 2000 + 1000
    kept = list(traces.read_spans(traces.span_files(tmp_path)))
    assert 0 < len(kept) < 30


def test_an_export_failure_never_reaches_the_service(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    tracer = tracing.tracer("tracing-test-broken", Settings(run_dir=blocker))  # traces/ cannot be created
    started = time.perf_counter()
    for _ in range(2000):
        with tracing.sending(tracer, topics.CREATE_ALARM.name):
            pass
    assert time.perf_counter() - started < 2.0
    with caplog.at_level(logging.WARNING, logger="streams.tracing"):
        tracing.flush()
    assert any("spans not written" in r.getMessage() for r in caplog.records)


def test_otlp_without_its_package_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(tracing.TracingUnavailable, match="opentelemetry-exporter-otlp-proto-http"):
        tracing.tracer("tracing-test-otlp", Settings(run_dir=tmp_path, trace_exporter="otlp"))


def test_the_exporter_setting_is_checked() -> None:
    assert Settings.from_env({"HEATER_TRACE_EXPORTER": "none"}).trace_exporter == "none"
    assert Settings.from_env({}).trace_exporter == "file"
    with pytest.raises(SettingsError, match="HEATER_TRACE_EXPORTER"):
        Settings.from_env({"HEATER_TRACE_EXPORTER": "jaeger"})


def test_tracing_off_sends_no_headers(tmp_path: Path) -> None:
    tracer = tracing.tracer("tracing-test-none", Settings(run_dir=tmp_path, trace_exporter="none"))
    with tracing.sending(tracer, topics.CREATE_ALARM.name) as sent_headers:
        pass
    assert sent_headers == [] and tracing.emitted(tracer, topics.SENSOR_DATA.name, time.time(), {}) == []
    assert not (tmp_path / "traces").exists()


# -- heater trace ---------------------------------------------------------------------


def span(trace_id: str, span_id: str, parent: str | None, service: str, name: str, start_ms: float, dur_ms: float,
         **attributes: Any) -> dict[str, Any]:
    base = 1_700_000_000_000_000_000
    return {"trace_id": trace_id, "span_id": span_id, "parent_id": parent, "service": service, "name": name,
            "kind": "internal", "start_ns": base + int(start_ms * 1e6), "end_ns": base + int((start_ms + dur_ms) * 1e6),
            "status": "unset", "attributes": attributes}


FATAL_TRACE = "a" * 32
SPANS = [
    span(FATAL_TRACE, "4", "3", "i2c", "FATAL trip", 30.5, 2.0, **{"heater.reason": "FATAL bank/over-temperature"}),
    span(FATAL_TRACE, "1", None, "can", "sensorData send", 0.0, 0.2, **{"heater.sensor": "water_temp_0"}),
    span(FATAL_TRACE, "3", "2", "alarms", "createAlarm process", 25.0, 3.0, **{"heater.severity": "FATAL"}),
    span(FATAL_TRACE, "2", "1", "bank", "sensorData process", 12.25, 1.5),
    span("b" * 32, "9", None, "can", "sensorData send", 100.0, 0.1),
]


def test_the_timeline_lists_a_trace_by_start_with_offsets_and_durations() -> None:
    lines = traces.timeline([s for s in SPANS if s["trace_id"] == FATAL_TRACE])
    assert lines[0] == f"trace {FATAL_TRACE}: 4 span(s), 32.5 ms"
    rows = lines[2:]
    assert [r.split()[2] for r in rows] == ["can", "bank", "alarms", "i2c"]
    assert rows[0].split()[:2] == ["0.0", "0.2"]
    assert rows[1].split()[:2] == ["12.2", "1.5"] or rows[1].split()[:2] == ["12.3", "1.5"]
    assert rows[3].split()[:2] == ["30.5", "2.0"]
    assert "      FATAL trip" in rows[3], "a child sits under its parent"
    assert "heater.severity=FATAL" in rows[2]


def test_heater_trace_prints_one_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_spans(tmp_path)
    assert traces.main(tmp_path, FATAL_TRACE.upper()) == exitcodes.DONE
    out = capsys.readouterr().out
    assert out.count("\n") == 6 and "b" * 32 not in out


def test_heater_trace_finds_the_last_fatal_and_lists_the_newest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_spans(tmp_path)
    assert traces.main(tmp_path, None, fatal=True) == exitcodes.DONE
    assert capsys.readouterr().out.startswith(f"trace {FATAL_TRACE}")
    assert traces.main(tmp_path, None) == exitcodes.DONE
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["b" * 32, FATAL_TRACE]


def test_heater_trace_of_an_unknown_id_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert traces.main(tmp_path, "c" * 32) == exitcodes.NO_INPUT
    assert "no span files" in capsys.readouterr().err
    write_spans(tmp_path)
    assert traces.main(tmp_path, "c" * 32) == exitcodes.NO_INPUT
    assert f"no trace {'c' * 32}" in capsys.readouterr().err


def write_spans(run_dir: Path) -> None:
    """The spans as services write them, one file each, with a line cut short by a kill."""
    (run_dir / "traces").mkdir(exist_ok=True)
    for service in {s["service"] for s in SPANS}:
        lines = [json.dumps(s, separators=(",", ":")) for s in SPANS if s["service"] == service]
        (run_dir / "traces" / f"{service}.jsonl").write_text("\n".join(lines) + '\n{"trace_id": "cut')


def test_a_worker_with_an_exporter_that_cannot_work_stops_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from heater import cli

    monkeypatch.setattr(tracing, "_tracers", {})
    monkeypatch.setenv("HEATER_TRACE_EXPORTER", "otlp")
    with caplog.at_level(logging.ERROR):
        assert cli.run_worker("bank") == exitcodes.CONFIG
    assert "opentelemetry-exporter-otlp-proto-http" in caplog.text


def test_the_heater_command_has_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from heater import cli

    write_spans(tmp_path)
    assert cli.main(["--run-dir", str(tmp_path), "trace", "--last-fatal"]) == exitcodes.DONE
    assert capsys.readouterr().out.startswith(f"trace {FATAL_TRACE}")
    assert cli.main(["--run-dir", str(tmp_path), "trace", "0" * 32]) == exitcodes.NO_INPUT
