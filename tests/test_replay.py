"""Topic record/replay: the file format and range rules without Kafka, then round trips,
ranges, key filters, pacing and errors against the real embedded broker."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import given
from hypothesis import strategies as st

from heater import replay
from heater.replay import Bound, MalformedLine, RangeError, Recorded
from heater.runtime.broker import EmbeddedBroker, create_topics
from heater.runtime.processes import free_port
from streams.settings import Settings
from streams.topics import TopicSpec
from tests.support import consume_until, produce, run

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- range bounds (pure)


@pytest.mark.parametrize("text, bound", [
    ("offset:0", Bound("offset", 0)),
    ("offset:120", Bound("offset", 120)),
    ("epoch:1764745200", Bound("time", 1_764_745_200_000)),
    ("epoch:1764745200.25", Bound("time", 1_764_745_200_250)),
    ("2025-12-03T07:00:00Z", Bound("time", 1_764_745_200_000)),
    ("2025-12-03T08:00:00+01:00", Bound("time", 1_764_745_200_000)),
    ("2025-12-03T07:00:00.5Z", Bound("time", 1_764_745_200_500)),
])
def test_bounds_are_offsets_epoch_seconds_or_iso_times_with_a_zone(text: str, bound: Bound) -> None:
    assert replay.parse_bound(text) == bound
    assert replay.parse_bound(str(bound)) == bound


@pytest.mark.parametrize("text, says", [
    ("120", "ambiguous"),
    ("1764745200", "ambiguous"),
    ("offset:-1", "whole number"),
    ("offset:abc", "whole number"),
    ("offset:", "whole number"),
    ("epoch:-5", "epoch seconds"),
    ("epoch:soon", "epoch seconds"),
    ("epoch:nan", "epoch seconds"),
    ("2025-12-03T07:00:00", "time zone"),
    ("2025-12-03", "time zone"),
    ("yesterday", "ISO-8601"),
    ("", "ISO-8601"),
])
def test_anything_else_is_refused_with_the_forms_that_work(text: str, says: str) -> None:
    with pytest.raises(RangeError, match=says) as caught:
        replay.parse_bound(text)
    assert caught.value.exit_code == replay.USAGE_EXIT


def test_a_range_must_not_be_empty() -> None:
    assert replay.parse_range(None, None) == (None, None)
    assert replay.parse_range("offset:3", "offset:4") == (Bound("offset", 3), Bound("offset", 4))
    for start, stop in [("offset:5", "offset:5"), ("offset:9", "offset:2"), ("epoch:20", "epoch:10")]:
        with pytest.raises(RangeError, match="empty range"):
            replay.parse_range(start, stop)
    replay.parse_range("offset:9", "epoch:10")  # different kinds cannot be compared: allowed


@pytest.mark.parametrize("begin, end, start, stop, span", [
    (0, 10, None, None, (0, 10)),
    (0, 10, Bound("offset", 3), Bound("offset", 7), (3, 7)),
    (5, 10, Bound("offset", 2), None, (5, 10)),  # below the log's start: from its start
    (0, 10, None, Bound("offset", 50), (0, 10)),  # --to past the end: the end when recording starts
    (0, 10, Bound("offset", 12), None, (10, 10)),  # past the end: nothing
    (0, 10, Bound("time", 5), Bound("time", 9), (0, 10)),  # times are applied per record
    (0, 0, None, None, (0, 0)),
])
def test_offset_spans(begin: int, end: int, start: Bound | None, stop: Bound | None, span: tuple[int, int]) -> None:
    assert replay.offset_span(begin, end, start, stop) == span


def test_time_bounds_select_from_the_first_record_at_or_after_start_to_the_first_at_or_after_stop() -> None:
    start, stop = Bound("time", 100), Bound("time", 200)
    stamps = [50, 120, 90, 150, 210, 130]
    verdicts, started = [], False
    for ts in stamps:
        verdict = replay.time_verdict(ts, started, start, stop)
        started = started or verdict == "keep"
        verdicts.append(verdict)
        if verdict == "stop":
            break
    assert verdicts == ["skip", "keep", "keep", "keep", "stop"]  # 90 is kept: past the first at/after 100
    assert replay.time_verdict(10, False, Bound("offset", 3), None) == "keep"


# ---------------------------------------------------------------- line encoding (pure)


def test_bytes_are_text_when_that_round_trips_and_base64_otherwise() -> None:
    assert replay.encode_bytes(None) is None
    assert replay.encode_bytes(b"") == {"text": ""}
    assert replay.encode_bytes("23,5 °C".encode()) == {"text": "23,5 °C"}
    assert replay.encode_bytes(b"\x00\xff\xfe") == {"base64": "AP/+"}
    assert replay.encode_bytes(b"\xed\xa0\x80") == {"base64": "7aCA"}  # an encoded surrogate is not UTF-8


@given(key=st.none() | st.binary(max_size=20), value=st.none() | st.binary(max_size=60) | st.text(max_size=30).map(str.encode),
       headers=st.lists(st.tuples(st.sampled_from(["a", "trace", "a"]), st.none() | st.binary(max_size=10)), max_size=4),
       timestamp=st.integers(-1, 2**53), partition=st.integers(0, 99), offset=st.integers(0, 2**62))
def test_a_record_survives_its_line_exactly(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]],
                                            timestamp: int, partition: int, offset: int) -> None:
    original = Recorded(partition, offset, timestamp, key, value, tuple(headers), timestamp_type=1)
    line = replay.encode_record(original)
    assert "\n" not in line
    assert replay.decode_record(line) == original


@pytest.mark.parametrize("line, says", [
    ("{", "not JSON"),
    ("[1, 2]", "JSON object"),
    ('{"offset": 1, "timestamp_ms": 1, "key": null, "value": null}', "'partition'"),
    ('{"partition": -1, "offset": 1, "timestamp_ms": 1}', "'partition'"),
    ('{"partition": 0, "offset": "7", "timestamp_ms": 1}', "'offset'"),
    ('{"partition": 0, "offset": 1, "timestamp_ms": true}', "'timestamp_ms'"),
    ('{"partition": 0, "offset": 1, "timestamp_ms": 1, "value": "raw"}', "'value'"),
    ('{"partition": 0, "offset": 1, "timestamp_ms": 1, "value": {"base64": "@@"}}', "invalid base64"),
    ('{"partition": 0, "offset": 1, "timestamp_ms": 1, "key": {"hex": "00"}}', "'key'"),
    ('{"partition": 0, "offset": 1, "timestamp_ms": 1, "headers": [["a"]]}', "headers"),
    ('{"partition": 0, "offset": 1, "timestamp_ms": 1, "headers": [["a", {"base64": "!"}]]}', "header 'a'"),
])
def test_a_malformed_line_says_what_is_wrong(line: str, says: str) -> None:
    with pytest.raises(MalformedLine, match=says):
        replay.decode_record(line)


def write_recording(path: Path, *lines: str, partitions: int = 2) -> Path:
    header = replay.encode_header("t", partitions, None, None, {0: (0, 9)}, 0.0)
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def line(partition: int, offset: int, ts: int, key: bytes | None = b"k") -> str:
    return replay.encode_record(Recorded(partition, offset, ts, key, b"v"))


def test_a_recording_is_checked_line_by_line_and_indexed_in_play_order(tmp_path: Path) -> None:
    path = write_recording(tmp_path / "r.jsonl", line(0, 0, 100, b"a"), line(1, 0, 50, b"b"), line(0, 1, 40, b"b"),
                           line(1, 5, 300, b"a"), line(0, 2, 200, b"a"))
    recording = replay.index_recording(path)
    assert recording.lines == 6 and recording.selected == 5
    with path.open("rb") as handle:
        played = []
        for _ts, _partition, position in recording.schedule():
            handle.seek(position)
            item = replay.decode_record(handle.readline().decode())
            played.append((item.partition, item.offset))
    # each partition in offset order (partition 0's 40 ms record waits behind its 100 ms one)
    assert played == [(1, 0), (0, 0), (0, 1), (0, 2), (1, 5)]
    assert replay.index_recording(path, [b"a"]).selected == 3


def test_several_recordings_play_as_one_timeline_each_in_its_own_order(tmp_path: Path) -> None:
    jobs = write_recording(tmp_path / "jobs.jsonl", line(0, 0, 100, b"igniting"), line(0, 1, 250, b"heating"),
                           line(0, 2, 900, b"done"))
    water = write_recording(tmp_path / "water.jsonl", line(0, 7, 100, b"20"), line(1, 3, 90, b"21"),
                            line(0, 8, 300, b"93"), line(0, 9, 80, b"94"), line(1, 4, 950, b"95"))
    recordings = [replay.index_recording(jobs), replay.index_recording(water)]
    played = []
    handles = [r.path.open("rb") for r in recordings]
    try:
        for _ts, index, _partition, position in replay.merged_schedule(recordings):
            handles[index].seek(position)
            item = replay.decode_record(handles[index].readline().decode())
            played.append((index, item.partition, item.offset))
    finally:
        for handle in handles:
            handle.close()
    # by timestamp across files and partitions; each partition in offset order (the 80 ms record waits
    # behind its partition's 300 ms one); at equal timestamps (100 ms) the file named first goes first
    assert played == [(1, 1, 3), (0, 0, 0), (1, 0, 7), (0, 0, 1), (1, 0, 8), (1, 0, 9), (0, 0, 2), (1, 1, 4)]


@pytest.mark.parametrize("lines, where, says", [
    (["not json"], ":2:", "not JSON"),
    ([line(0, 0, 1), line(0, 1, 2), '{"partition": 0}'], ":4:", "'offset'"),
    ([line(0, 3, 1), line(0, 2, 2)], ":3:", "out of order"),
    ([line(2, 0, 1)], ":2:", "header says 2 partition"),
    ([line(0, 0, 1), ""], ":3:", "not JSON"),
])
def test_a_bad_line_is_reported_with_its_number(tmp_path: Path, lines: list[str], where: str, says: str) -> None:
    path = write_recording(tmp_path / "r.jsonl", *lines)
    with pytest.raises(MalformedLine, match=f"{where}.*{says}"):
        replay.index_recording(path)


def test_bad_lines_can_be_skipped_each_reported_with_its_number(tmp_path: Path) -> None:
    path = write_recording(tmp_path / "r.jsonl", line(0, 0, 1), "not json", line(0, 1, 2), b"\xff".decode("latin-1"),
                           '{"partition": 0}', line(0, 2, 3), line(0, 1, 4))
    recording = replay.index_recording(path, skip_bad=True)
    assert recording.selected == 3
    assert [s.split(": ", 1)[0] for s in recording.skipped] == [f"{path}:{n}" for n in (3, 5, 6, 8)]
    assert "not JSON" in recording.skipped[0] and "out of order" in recording.skipped[3]
    with pytest.raises(MalformedLine, match=":3: not JSON"):  # the default: refuse the whole file
        replay.index_recording(path)
    header_broken = tmp_path / "h.jsonl"
    header_broken.write_text("not a header\n" + line(0, 0, 1) + "\n")
    with pytest.raises(MalformedLine, match=":1:"):  # a file without its header is no recording to skip in
        replay.index_recording(header_broken, skip_bad=True)


def test_a_file_that_is_not_a_recording_is_refused(tmp_path: Path) -> None:
    cases = {
        "empty.jsonl": b"",
        "other.jsonl": b'{"format": "something-else"}\n',
        "future.jsonl": b'{"format": "heater-replay", "version": 99, "partitions": 1}\n',
        "binary.jsonl": write_recording(tmp_path / "x", line(0, 0, 1)).read_bytes() + b"\xff\xfe\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(MalformedLine, match=":1:|:3: not UTF-8"):
            replay.index_recording(tmp_path / name)
    with pytest.raises(replay.ReplayError) as missing:
        replay.index_recording(tmp_path / "absent.jsonl")
    assert missing.value.exit_code == replay.NO_INPUT_EXIT


# ---------------------------------------------------------------- progress and settings (pure)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_shows_count_rate_and_time_left() -> None:
    text = replay.format_bar("record t", 250, 1000, 2.0, width=8)
    assert text == "record t [##------] 250/1,000  25% 125/s ETA 0:06"
    assert replay.format_duration(3725) == "1:02:05"
    assert "ETA ?" in replay.format_bar("play t", 0, 10, 0.0)


def test_a_bar_only_on_a_terminal_and_a_summary_always() -> None:
    for stream, bar in [(io.StringIO(), False), (Terminal(), True)]:
        progress = replay.Progress("record t", 10, stream)
        progress.show(5, force=True)
        progress.finish("recorded 10 records")
        assert ("\r" in stream.getvalue()) is bar
        assert stream.getvalue().endswith("recorded 10 records\n")


def test_bootstrap_comes_from_the_environment_unless_given() -> None:
    env = {"HEATER_BROKER_URL": "tansu://127.0.0.1:9999"}
    assert replay.broker_settings(None, env).broker_bootstrap == "127.0.0.1:9999"
    assert replay.broker_settings("127.0.0.1:1234", env).broker_bootstrap == "127.0.0.1:1234"
    with pytest.raises(replay.ReplayError, match="SASL_USERNAME") as caught:
        replay.broker_settings(None, {"HEATER_PROFILE": "production", "HEATER_BROKER_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
    assert caught.value.exit_code == replay.CONFIG_EXIT


# ---------------------------------------------------------------- against the embedded broker

PARTITIONS = 3
PER_PARTITION = 8
BASE_MS = int(time.time() * 1000) - 3_600_000


def scratch_topic(broker: EmbeddedBroker, partitions: int = PARTITIONS) -> str:
    name = f"replay-{uuid.uuid4().hex[:10]}"
    create_topics(broker.bootstrap, [TopicSpec(name, partitions=partitions, retention_ms=3_600_000)])
    return name


def sample_records() -> list[Recorded]:
    """Keys, binary and text values, repeated and empty headers, a tombstone; distinct timestamps."""
    records = []
    for p in range(PARTITIONS):
        for i in range(PER_PARTITION):
            n = p * PER_PARTITION + i
            value = None if n == 5 else (bytes([n, 0, 255, 254]) if n % 2 else f"reading {n} °C".encode())
            headers = (("trace", f"t{n}".encode()), ("raw", b"\x00\x80"), ("trace", b"again"), ("empty", None))
            key = None if n == 7 else f"sensor-{n % 3}".encode()
            records.append(Recorded(p, i, BASE_MS + 1000 * i + 7 * p, key, value, headers[: n % 5]))
    return records


async def produce_records(bootstrap: str, topic: str, records: list[Recorded]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    try:
        futures = [await producer.send(topic, r.value, key=r.key, partition=r.partition, timestamp_ms=r.timestamp_ms,
                                       headers=list(r.headers)) for r in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def read_back(broker: EmbeddedBroker, topic: str, count: int) -> dict[int, list[tuple[Any, ...]]]:
    """Every record of ``topic`` by partition, as (key, value, headers, timestamp) in offset order."""
    messages = run(consume_until(broker.bootstrap, topic, lambda got: len(got) >= count, timeout=15))
    time.sleep(0.3)  # and nothing more arrives
    assert len(messages) == count, f"{topic}: {len(messages)} records, expected {count}"
    by_partition: dict[int, list[tuple[Any, ...]]] = {}
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        by_partition.setdefault(m.partition, []).append((m.key, m.value, tuple(m.headers), m.timestamp))
    return by_partition


def expected(records: list[Recorded]) -> dict[int, list[tuple[Any, ...]]]:
    by_partition: dict[int, list[tuple[Any, ...]]] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append((r.key, r.value, r.headers, r.timestamp_ms))
    return by_partition


@pytest.fixture(scope="module")
def source(broker: EmbeddedBroker) -> tuple[str, list[Recorded]]:
    """A three-partition topic holding :func:`sample_records`."""
    topic, records = scratch_topic(broker), sample_records()
    run(produce_records(broker.bootstrap, topic, records))
    return topic, records


def record_to(broker: EmbeddedBroker, topic: str, out: Path, start: str | None = None, stop: str | None = None) -> int:
    return replay.record_main(topic, start, stop, out, bootstrap=broker.bootstrap)


def play_into(broker: EmbeddedBroker, path: Path, topic: str, speed: float | None = None,
              keys: list[str] | None = None) -> int:
    return replay.play_main(path, topic, speed=speed, keys=keys, bootstrap=broker.bootstrap)


def recorded(path: Path) -> list[Recorded]:
    """The records of a file by partition, then offset (partitions interleave in the file)."""
    return sorted((replay.decode_record(text) for text in path.read_text().splitlines()[1:]),
                  key=lambda r: (r.partition, r.offset))


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


def test_the_cli_records_and_plays_a_topic_back_identically(broker: EmbeddedBroker, source: tuple[str, list[Recorded]],
                                                            tmp_path: Path) -> None:
    topic, records = source
    target, out = scratch_topic(broker), tmp_path / "all.jsonl"
    env = {**os.environ, "HEATER_BROKER_URL": broker.url, "HEATER_PROFILE": "local"}

    def heater(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "heater", "replay", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)

    recorded = heater("record", "--topic", topic, "--out", str(out))
    assert recorded.returncode == 0, recorded.stderr
    assert f"recorded {len(records)} records of {topic}" in recorded.stderr
    assert "\r" not in recorded.stderr  # no bar when stderr is not a terminal
    header = json.loads(out.read_text().splitlines()[0])
    assert header["topic"] == topic and header["partitions"] == PARTITIONS
    assert header["offsets"] == {str(p): [0, PER_PARTITION] for p in range(PARTITIONS)}

    played = heater("play", str(out), "--topic", target, "--as-fast-as-possible")
    assert played.returncode == 0, played.stderr
    assert f"played {len(records)} records" in played.stderr
    assert read_back(broker, target, len(records)) == expected(records)


def test_offset_and_time_ranges_record_only_their_records(broker: EmbeddedBroker, source: tuple[str, list[Recorded]],
                                                          tmp_path: Path) -> None:
    topic, records = source
    by_offset = tmp_path / "offsets.jsonl"
    assert record_to(broker, topic, by_offset, "offset:2", "offset:6") == 0
    assert recorded(by_offset) == [r for r in records if 2 <= r.offset < 6]

    by_time = tmp_path / "times.jsonl"  # records i = 3..5 of each partition (stamped BASE + 1000 i + 7 p)
    assert record_to(broker, topic, by_time, iso(BASE_MS + 3000), f"epoch:{(BASE_MS + 5500) / 1000}") == 0
    got = recorded(by_time)
    assert got == [r for r in records if 3 <= r.offset <= 5]

    target = scratch_topic(broker)
    assert play_into(broker, by_time, target) == 0
    assert read_back(broker, target, len(got)) == expected(got)


def test_filter_plays_only_that_key(broker: EmbeddedBroker, source: tuple[str, list[Recorded]], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    topic, records = source
    out, target = tmp_path / "all.jsonl", scratch_topic(broker)
    assert record_to(broker, topic, out) == 0
    assert play_into(broker, out, target, keys=["sensor-1"]) == 0
    wanted = [r for r in records if r.key == b"sensor-1"]
    assert f"played {len(wanted)} of {len(records)} records" in capsys.readouterr().err
    assert read_back(broker, target, len(wanted)) == expected(wanted)


def test_speed_keeps_the_gaps_divided_by_n(broker: EmbeddedBroker, tmp_path: Path) -> None:
    topic, target = scratch_topic(broker, partitions=1), scratch_topic(broker, partitions=1)
    records = [Recorded(0, i, BASE_MS + 400 * i, b"k", b"v%d" % i) for i in range(6)]  # 2 s from first to last
    run(produce_records(broker.bootstrap, topic, records))
    out = tmp_path / "paced.jsonl"
    assert record_to(broker, topic, out) == 0
    started = time.monotonic()
    assert play_into(broker, out, target, speed=2.0) == 0
    assert time.monotonic() - started >= 0.95  # 2 s / 2, less a little for the clock's granularity
    assert read_back(broker, target, len(records)) == expected(records)


def test_recording_ends_at_the_end_the_log_had_when_it_started(broker: EmbeddedBroker, tmp_path: Path) -> None:
    topic = scratch_topic(broker, partitions=1)
    run(produce(broker.bootstrap, topic, [b"before-%d" % i for i in range(50)], key=b"k"))
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.is_set():
            run(produce(broker.bootstrap, topic, [b"during"] * 20, key=b"k"))

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        out = tmp_path / "growing.jsonl"
        assert record_to(broker, topic, out) == 0
    finally:
        stop.set()
        writer.join()
    lines = out.read_text().splitlines()
    first, last = json.loads(lines[0])["offsets"]["0"]
    assert first == 0 and last >= 50 and len(lines) - 1 == last


def test_errors_are_clear_and_exit_nonzero(broker: EmbeddedBroker, source: tuple[str, list[Recorded]], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    topic, _ = source
    out = tmp_path / "x.jsonl"
    assert record_to(broker, "noSuchTopic", out) == replay.TOPIC_EXIT
    assert "unknown topic 'noSuchTopic'" in capsys.readouterr().err
    assert not out.exists() and not out.with_name("x.jsonl.partial").exists()

    assert record_to(broker, topic, out, start="7") == replay.USAGE_EXIT
    assert "ambiguous" in capsys.readouterr().err
    assert record_to(broker, topic, tmp_path / "missing-dir" / "x.jsonl") == replay.CANNOT_WRITE_EXIT

    started = time.monotonic()
    dead = f"127.0.0.1:{free_port()}"
    assert replay.record_main(topic, None, None, out, bootstrap=dead) == replay.BROKER_EXIT
    assert f"broker {dead} unreachable" in capsys.readouterr().err
    assert time.monotonic() - started < replay.CONNECT_TIMEOUT_S + 3

    good = tmp_path / "good.jsonl"
    assert record_to(broker, topic, good) == 0
    assert play_into(broker, good, "noSuchTopic") == replay.TOPIC_EXIT
    assert play_into(broker, good, scratch_topic(broker, partitions=1)) == replay.TOPIC_EXIT
    assert "has 1 partition(s); the recording needs 3" in capsys.readouterr().err
    assert replay.play_main(good, topic, speed=None, bootstrap=dead) == replay.BROKER_EXIT
    assert play_into(broker, good, topic, speed=0.0) == replay.USAGE_EXIT
    assert play_into(broker, tmp_path / "absent.jsonl", topic) == replay.NO_INPUT_EXIT

    broken = tmp_path / "broken.jsonl"
    lines = good.read_text().splitlines()
    lines[4] = lines[4].replace('"partition"', '"partiton"')
    broken.write_text("\n".join(lines) + "\n")
    empty_target = scratch_topic(broker)
    capsys.readouterr()
    assert play_into(broker, broken, empty_target) == replay.DATA_EXIT
    assert f"{broken}:5: 'partition' must be an integer" in capsys.readouterr().err


def test_play_skips_bad_lines_when_asked_and_names_each(broker: EmbeddedBroker, source: tuple[str, list[Recorded]],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topic, records = source
    good, broken = tmp_path / "good.jsonl", tmp_path / "broken.jsonl"
    assert record_to(broker, topic, good) == 0
    lines = good.read_text().splitlines()
    dropped = [replay.decode_record(lines[i]) for i in (4, 9)]
    lines[4] = lines[4][: len(lines[4]) // 2]  # a torn line
    lines[9] = lines[9].replace('"offset"', '"ofset"')
    broken.write_text("\n".join(lines) + "\n")
    target = scratch_topic(broker)
    capsys.readouterr()
    assert replay.play_main(broken, target, speed=None, bootstrap=broker.bootstrap, skip_bad_lines=True) == 0
    err = capsys.readouterr().err
    assert f"skipped {broken}:5: not JSON" in err and f"skipped {broken}:10: 'offset' must be an integer" in err
    assert f"played {len(records) - 2} records" in err and "(2 bad line(s) skipped)" in err
    kept = [r for r in records if (r.partition, r.offset) not in {(d.partition, d.offset) for d in dropped}]
    assert read_back(broker, target, len(kept)) == expected(kept)


def test_several_recordings_play_back_into_the_topics_they_came_from(broker: EmbeddedBroker, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    first, second = scratch_topic(broker, partitions=1), scratch_topic(broker, partitions=2)
    ones = [Recorded(0, i, BASE_MS + 100 * i, b"a", b"one-%d" % i) for i in range(4)]
    twos = [Recorded(i % 2, i // 2, BASE_MS + 100 * i + 50, b"b", b"two-%d" % i) for i in range(6)]
    run(produce_records(broker.bootstrap, first, ones))
    run(produce_records(broker.bootstrap, second, twos))
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert record_to(broker, first, a) == 0 and record_to(broker, second, b) == 0
    capsys.readouterr()
    assert replay.play_main([a, b], None, speed=None, bootstrap=broker.bootstrap) == 0
    assert f"played 10 records from {a}, {b} into {first}, {second}" in capsys.readouterr().err
    assert read_back(broker, first, 8) == expected(ones + [Recorded(0, 4 + r.offset, r.timestamp_ms, r.key, r.value) for r in ones])
    doubled = twos + [Recorded(r.partition, 3 + r.offset, r.timestamp_ms, r.key, r.value) for r in twos]
    assert read_back(broker, second, 12) == expected(sorted(doubled, key=lambda r: (r.partition, r.offset)))

    assert replay.play_main([a, b], first, speed=None, bootstrap=broker.bootstrap) == replay.USAGE_EXIT
    assert "several recordings each go back to the topic they were recorded from" in capsys.readouterr().err
