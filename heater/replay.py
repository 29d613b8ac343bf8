"""Record a topic to JSON lines and play a recording back into a topic, against any Kafka.

``heater replay record`` copies every partition of a topic, over a range, to a file;
``heater replay play`` produces that file into a topic, keeping each record's partition,
key, value, headers and timestamp, per-partition order and (with ``--speed``) the original
gaps between records. It is the diagnostics tool for "what did the heater see": capture a
morning's ``sensorData`` on the Pi, play it into a local platform at ten times the speed.

File format (version 1): UTF-8 JSON lines. The first line is a header::

    {"format": "heater-replay", "version": 1, "topic": "sensorData", "partitions": 1,
     "from": "offset:120", "to": null, "offsets": {"0": [120, 5000]},
     "recorded_at": "2026-12-03T07:05:00Z"}

``from``/``to`` are the bounds as asked (canonical text, ``null`` when not given) and
``offsets`` the offset range ``[first, end)`` read in each partition. Every further line is
one record, in offset order within its partition::

    {"partition": 0, "offset": 120, "timestamp_ms": 1764745200000, "timestamp_type": 0,
     "key": {"text": "sensor-1"}, "value": {"base64": "AP8="},
     "headers": [["traceparent", {"text": "00-..."}], ["empty", null]]}

A byte string (key, value, header value) is ``null`` when absent, ``{"text": ...}`` when it
is valid UTF-8 (decoding and encoding it again gives the same bytes, so this is lossless)
and ``{"base64": ...}`` otherwise. Headers are a list of ``[name, bytes]`` pairs, so order
and repeated names are kept. ``timestamp_ms`` is the record's timestamp, which play hands
to the producer as is (a target topic set to ``LogAppendTime`` replaces it, as Kafka does).

Range bounds (``--from`` inclusive, ``--to`` exclusive), the same in every partition:

* ``offset:N`` — an offset;
* an ISO-8601 time with a zone (``2026-12-03T07:00:00Z``) or ``epoch:SECONDS``.

A time bound selects, per partition, from the first record stamped at or after it (the
rule of Kafka's offsets-for-times lookup), but it is applied by the reader to each record's
timestamp rather than asked of the broker's time index: the embedded broker answers that
lookup wrongly, and one rule keeps the command the same on every Kafka. A time-bounded
recording therefore reads the partitions from their start. A bare number is refused, being
either an offset or a time. ``--to`` is capped at the end of the log when recording starts,
so a recording always ends.

Playing keeps per-partition order; across partitions records go out in timestamp order,
so ``--speed N`` reproduces the gaps between records divided by N. Several recordings play
as one timeline the same way, each into the topic it was recorded from: an incident's topics
arrive at a service that follows them together in the order they did the first time. The file is read twice:
once to check every line, once to play. A bad record line refuses the whole file (nothing is
produced), or, with ``--skip-bad-lines``, is left out and reported with its line number; a bad
header always refuses the file.

Exit codes: see the ``*_EXIT`` constants below.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import heapq
import json
import logging
import math
import sys
import time
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Literal, Sequence

from streams import exitcodes, kafka_clients
from streams.settings import Settings, SettingsError

log = logging.getLogger(__name__)

FORMAT = "heater-replay"
VERSION = 1

BROKER_EXIT = exitcodes.DEPENDENCY_MISSING  # broker unreachable, or it stopped answering
UNDELIVERED_EXIT = exitcodes.UNDELIVERED  # the broker refused a record being played
USAGE_EXIT = exitcodes.USAGE  # bad --from/--to/--speed
DATA_EXIT = exitcodes.DATA_ERROR  # malformed input file
NO_INPUT_EXIT = exitcodes.NO_INPUT  # input file missing or unreadable
TOPIC_EXIT = exitcodes.UNKNOWN_TOPIC  # unknown topic, or too few partitions for the recording
CANNOT_WRITE_EXIT = exitcodes.CANNOT_WRITE  # output file cannot be written
CONFIG_EXIT = exitcodes.CONFIG  # broker settings invalid
INTERRUPTED_EXIT = exitcodes.INTERRUPTED

#: A broker that does not answer within this long counts as unreachable (no hang).
CONNECT_TIMEOUT_S = 5.0
#: A recording whose partitions stop advancing for this long has lost its broker.
STALL_S = 10.0
#: Fetch wait while recording: the embedded broker never answers a fetch before it.
FETCH_WAIT_MS = 50


class ReplayError(Exception):
    """A failure reported as one line on stderr with its exit code."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class RangeError(ReplayError, ValueError):
    """A --from/--to bound that cannot be read, or a range that is empty."""

    exit_code = USAGE_EXIT


class MalformedLine(ReplayError, ValueError):
    """A line of a recording that is not what the format says."""

    exit_code = DATA_EXIT


# ---------------------------------------------------------------- range bounds


@dataclass(frozen=True)
class Bound:
    """One end of a range: an offset, or a time in epoch milliseconds."""

    kind: Literal["offset", "time"]
    value: int

    def __str__(self) -> str:
        if self.kind == "offset":
            return f"offset:{self.value}"
        return datetime.fromtimestamp(self.value / 1000, timezone.utc).isoformat().replace("+00:00", "Z")


def parse_bound(text: str) -> Bound:
    """``offset:N``, ``epoch:SECONDS`` or an ISO-8601 time with a zone; RangeError otherwise."""
    text = text.strip()
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    if sep and kind == "offset":
        if not (rest.isascii() and rest.isdigit()):
            raise RangeError(f"{text!r}: an offset is a whole number >= 0, e.g. offset:120")
        return Bound("offset", int(rest))
    if sep and kind == "epoch":
        try:
            seconds = float(rest)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < 0:
            raise RangeError(f"{text!r}: epoch seconds are a number >= 0, e.g. epoch:1764745200")
        return Bound("time", round(seconds * 1000))
    if text.lstrip("-+").replace(".", "", 1).isdigit():
        raise RangeError(f"{text!r} is ambiguous: write offset:{text} for an offset or epoch:{text} for a time")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RangeError(f"{text!r}: expected offset:N, epoch:SECONDS or an ISO-8601 time such as "
                         "2026-12-03T07:00:00Z") from None
    if moment.tzinfo is None:
        raise RangeError(f"{text!r}: give the time zone, e.g. {text}Z or {text}+01:00")
    return Bound("time", round(moment.timestamp() * 1000))


def parse_range(start: str | None, stop: str | None) -> tuple[Bound | None, Bound | None]:
    """Both bounds of a recording; an empty range (stop at or before start) is an error."""
    first = parse_bound(start) if start is not None else None
    end = parse_bound(stop) if stop is not None else None
    if first and end and first.kind == end.kind and end.value <= first.value:
        raise RangeError(f"empty range: --to {end} is not after --from {first} (--to is exclusive)")
    return first, end


def offset_span(begin: int, end: int, start: Bound | None, stop: Bound | None) -> tuple[int, int]:
    """The offsets ``[first, last)`` to read in one partition whose log holds ``[begin, end)``."""
    first = max(begin, start.value) if start and start.kind == "offset" else begin
    last = min(end, stop.value) if stop and stop.kind == "offset" else end
    return min(first, last), last


Verdict = Literal["skip", "keep", "stop"]


def time_verdict(timestamp_ms: int, started: bool, start: Bound | None, stop: Bound | None) -> Verdict:
    """What a time range does with the next record of a partition, in offset order.

    ``started`` says whether an earlier record of the partition was kept: from the first
    record at or after the start time on, every record is kept until the first one at or
    after the stop time ends the partition.
    """
    if stop is not None and stop.kind == "time" and timestamp_ms >= stop.value:
        return "stop"
    if not started and start is not None and start.kind == "time" and timestamp_ms < start.value:
        return "skip"
    return "keep"


# ---------------------------------------------------------------- line encoding


@dataclass(frozen=True)
class Recorded:
    """One record as the file keeps it."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_type: int = 0


def encode_bytes(data: bytes | None) -> dict[str, str] | None:
    """JSON for a byte string: readable text when that round-trips exactly, base64 otherwise."""
    if data is None:
        return None
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def decode_bytes(obj: Any, what: str) -> bytes | None:
    """The byte string :func:`encode_bytes` wrote; MalformedLine names ``what`` otherwise."""
    if obj is None:
        return None
    if isinstance(obj, dict) and len(obj) == 1:
        (kind, text), = obj.items()
        if kind == "text" and isinstance(text, str):
            try:
                return text.encode("utf-8")
            except UnicodeEncodeError:
                raise MalformedLine(f"{what}: text is not valid unicode") from None
        if kind == "base64" and isinstance(text, str):
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise MalformedLine(f"{what}: invalid base64") from None
    raise MalformedLine(f'{what}: expected null, {{"text": ...}} or {{"base64": ...}}')


def encode_record(record: Recorded) -> str:
    """One line of the file (without its newline)."""
    return json.dumps({
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        "timestamp_type": record.timestamp_type,
        "key": encode_bytes(record.key),
        "value": encode_bytes(record.value),
        "headers": [[name, encode_bytes(value)] for name, value in record.headers],
    }, ensure_ascii=False, separators=(",", ":"))


def _integer(obj: dict[str, Any], name: str, minimum: int | None = 0) -> int:
    value = obj.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        raise MalformedLine(f"{name!r} must be an integer" + (f" >= {minimum}" if minimum is not None else ""))
    return value


def decode_record(line: str) -> Recorded:
    """A record from one line of the file; MalformedLine says what is wrong with it."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise MalformedLine(f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MalformedLine("expected a JSON object")
    headers = obj.get("headers", [])
    if not isinstance(headers, list) or not all(
        isinstance(h, list) and len(h) == 2 and isinstance(h[0], str) for h in headers
    ):
        raise MalformedLine("'headers' must be a list of [name, bytes] pairs")
    return Recorded(
        partition=_integer(obj, "partition"),
        offset=_integer(obj, "offset"),
        timestamp_ms=_integer(obj, "timestamp_ms", minimum=None),
        timestamp_type=_integer(obj, "timestamp_type") if "timestamp_type" in obj else 0,
        key=decode_bytes(obj.get("key"), "'key'"),
        value=decode_bytes(obj.get("value"), "'value'"),
        headers=tuple((name, decode_bytes(value, f"header {name!r}")) for name, value in headers),
    )


def encode_header(topic: str, partitions: int, start: Bound | None, stop: Bound | None,
                  spans: dict[int, tuple[int, int]], recorded_at: float) -> str:
    """The first line of a recording: what was recorded, from where, over which range."""
    return json.dumps({
        "format": FORMAT,
        "version": VERSION,
        "topic": topic,
        "partitions": partitions,
        "from": str(start) if start else None,
        "to": str(stop) if stop else None,
        "offsets": {str(p): list(span) for p, span in sorted(spans.items())},
        "recorded_at": str(Bound("time", round(recorded_at * 1000))),
    }, separators=(",", ":"))


def decode_header(line: str) -> dict[str, Any]:
    """The header of a recording, checked for the format and version this module reads."""
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise MalformedLine(f"not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise MalformedLine(f'not a recording: the first line must be the header {{"format": "{FORMAT}", ...}}')
    if header.get("version") != VERSION:
        raise MalformedLine(f"format version {header.get('version')!r}; this command reads version {VERSION}")
    _integer(header, "partitions", minimum=1)
    return header


# ---------------------------------------------------------------- progress


def format_duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_bar(label: str, done: int, total: int, elapsed_s: float, width: int = 24) -> str:
    """One progress line: bar, count, rate and time left."""
    fraction = min(1.0, done / total) if total else 1.0
    filled = int(fraction * width)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = format_duration((total - done) / rate) if rate > 0 and total >= done else "?"
    return (f"{label} [{'#' * filled}{'-' * (width - filled)}] {done:,}/{total:,} {fraction:4.0%} "
            f"{rate:,.0f}/s ETA {eta}")


@dataclass
class Progress:
    """A progress bar on a terminal's stderr (redrawn at most ten times a second), else silent."""

    label: str
    total: int
    stream: IO[str] = field(default_factory=lambda: sys.stderr)
    started: float = field(default_factory=time.monotonic)
    _drawn: float = 0.0

    def __post_init__(self) -> None:
        self._drawn = self.started  # a rate measured over the first instant says nothing

    @property
    def enabled(self) -> bool:
        return self.stream.isatty()

    def show(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (force or now - self._drawn >= 0.1):
            self._drawn = now
            self.stream.write("\r" + format_bar(self.label, done, self.total, now - self.started) + "\x1b[K")
            self.stream.flush()

    def finish(self, summary: str) -> None:
        """Replace the bar by a one-line summary (always printed)."""
        self.stream.write(("\r\x1b[K" if self.enabled else "") + summary + "\n")
        self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


# ---------------------------------------------------------------- broker clients


def broker_settings(bootstrap: str | None, env: dict[str, str] | None = None) -> Settings:
    """The broker the clients connect to, with the profile's security: ``--bootstrap`` over ``HEATER_BROKER_URL``.

    The security settings are built here once, so a missing credential is a clear error
    before anything is read or sent.
    """
    try:
        settings = Settings.from_env(env)
        if bootstrap:
            settings = settings.with_overrides(broker_url=bootstrap)
        kafka_clients.security(settings)
        return settings
    except (SettingsError, OSError) as exc:
        raise ReplayError(f"broker settings: {exc}", CONFIG_EXIT) from None


async def start_client(client: Any, bootstrap: str) -> None:
    """Start a consumer or producer, or fail with a clear error within :data:`CONNECT_TIMEOUT_S`."""
    from aiokafka.errors import KafkaError

    try:
        await asyncio.wait_for(client.start(), CONNECT_TIMEOUT_S)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        await stop_client(client)
        raise ReplayError(f"broker {bootstrap} unreachable: {exc or type(exc).__name__}", BROKER_EXIT) from None


async def stop_client(client: Any) -> None:
    """Stop a client without hanging on a broker that went away."""
    try:
        await asyncio.wait_for(client.stop(), CONNECT_TIMEOUT_S)
    except Exception as exc:  # stopping must not hide the error being reported
        log.debug("client stop: %r", exc)


def require_topic(topic: str, partitions: set[int] | None) -> list[int]:
    """The partition ids of ``topic`` from every topic's metadata, or an unknown-topic error.

    Clients here ask for all topics' metadata: asking for one topic by name makes a broker
    with topic auto-creation create it, and a typo would then record nothing, successfully.
    """
    if not partitions:
        raise ReplayError(f"unknown topic {topic!r} on the broker", TOPIC_EXIT)
    return sorted(partitions)


# ---------------------------------------------------------------- record


async def record(topic: str, start: Bound | None, stop: Bound | None, out: IO[str],
                 settings: Settings) -> tuple[int, Progress]:
    """Write the header and every record of the range to ``out``; return how many records."""
    from aiokafka import TopicPartition
    from aiokafka.errors import KafkaError

    consumer = kafka_clients.consumer(settings=settings, group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="earliest", fetch_max_wait_ms=FETCH_WAIT_MS,
                                      request_timeout_ms=10_000)
    await start_client(consumer, settings.broker_bootstrap)
    try:
        await asyncio.wait_for(consumer.topics(), CONNECT_TIMEOUT_S * 2)
        ids = require_topic(topic, consumer.partitions_for_topic(topic))
        tps = [TopicPartition(topic, p) for p in ids]
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await kafka_clients.log_ends(consumer, tps, follow=False, settings=settings)
        spans = {tp.partition: offset_span(begins[tp], ends[tp], start, stop) for tp in tps}
        out.write(encode_header(topic, len(ids), start, stop, spans, time.time()) + "\n")
        progress = Progress(f"record {topic}", sum(last - first for first, last in spans.values()))
        count = await _copy_spans(consumer, tps, spans, start, stop, out, progress)
        return count, progress
    except (KafkaError, asyncio.TimeoutError) as exc:
        raise ReplayError(f"broker {settings.broker_bootstrap}: {exc or type(exc).__name__}", BROKER_EXIT) from None
    finally:
        await stop_client(consumer)


async def _copy_spans(consumer: Any, tps: list[Any], spans: dict[int, tuple[int, int]], start: Bound | None,
                      stop: Bound | None, out: IO[str], progress: Progress) -> int:
    """Read each partition over its span, in offset order, writing the records the range keeps."""
    started = {tp: False for tp in tps}
    scanned = {tp: 0 for tp in tps}
    remaining = set()
    for tp in tps:
        first, last = spans[tp.partition]
        consumer.seek(tp, first)
        if first < last:
            remaining.add(tp)
        else:
            consumer.pause(tp)
    count, moved_at = 0, time.monotonic()
    while remaining:
        batches = await consumer.getmany(timeout_ms=200)
        for tp, records in batches.items():
            first, last = spans[tp.partition]
            for r in records:
                verdict = "stop" if r.offset >= last else time_verdict(r.timestamp, started[tp], start, stop)
                if verdict == "stop":
                    scanned[tp] = last - first
                    break
                scanned[tp] = r.offset + 1 - first
                if verdict == "keep":
                    started[tp] = True
                    out.write(encode_record(Recorded(tp.partition, r.offset, r.timestamp, r.key, r.value,
                                                     tuple(r.headers), r.timestamp_type)) + "\n")
                    count += 1
            if scanned[tp] >= last - first or await consumer.position(tp) >= last:
                scanned[tp] = last - first
                remaining.discard(tp)
                consumer.pause(tp)
        if batches:
            moved_at = time.monotonic()
        elif time.monotonic() - moved_at > STALL_S:
            await _end_stalled(consumer, remaining, spans)
            moved_at = time.monotonic()
        progress.show(sum(scanned.values()))
    progress.show(sum(scanned.values()), force=True)
    return count


async def _end_stalled(consumer: Any, remaining: set[Any], spans: dict[int, tuple[int, int]]) -> None:
    """Partitions that stopped advancing: done if their log now ends there, else the broker is lost."""
    for tp in list(remaining):
        highwater = consumer.highwater(tp)
        if highwater is not None and highwater <= await consumer.position(tp):
            log.warning("%s ends at %d, before the expected %d", tp, highwater, spans[tp.partition][1])
            remaining.discard(tp)
    if remaining:
        where = ", ".join(f"partition {tp.partition} short of offset {spans[tp.partition][1]}" for tp in remaining)
        raise ReplayError(f"no data from the broker for {STALL_S:.0f} s ({where})", BROKER_EXIT)


def record_main(topic: str, start: str | None, stop: str | None, out: Path, *, bootstrap: str | None = None) -> int:
    """``heater replay record``: the exit code, with one line on stderr for any error."""
    partial = out.with_name(out.name + ".partial")
    try:
        bounds = parse_range(start, stop)
        settings = broker_settings(bootstrap)
        try:
            handle = partial.open("w", encoding="utf-8")
        except OSError as exc:
            raise ReplayError(f"cannot write {out}: {exc.strerror or exc}", CANNOT_WRITE_EXIT) from None
        with handle:
            count, progress = asyncio.run(record(topic, *bounds, handle, settings))
        partial.replace(out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        print(f"heater replay record: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return CANNOT_WRITE_EXIT
    except ReplayError as exc:
        partial.unlink(missing_ok=True)
        print(f"heater replay record: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        partial.unlink(missing_ok=True)
        print("heater replay record: interrupted; nothing written", file=sys.stderr)
        return INTERRUPTED_EXIT
    progress.finish(f"recorded {count:,} records of {topic} to {out} in {progress.elapsed:.1f} s")
    return exitcodes.DONE


# ---------------------------------------------------------------- play


@dataclass
class Recording:
    """A checked recording: its header and, per partition, where each record to play sits."""

    path: Path
    header: dict[str, Any]
    lines: int = 0
    timestamps: dict[int, array] = field(default_factory=dict)
    positions: dict[int, array] = field(default_factory=dict)
    #: Record lines left out (``--skip-bad-lines``): each as ``FILE:LINE: what is wrong``.
    skipped: list[str] = field(default_factory=list)

    @property
    def selected(self) -> int:
        return sum(len(ts) for ts in self.timestamps.values())

    def schedule(self) -> Iterator[tuple[int, int, int]]:
        """``(timestamp_ms, partition, file position)`` in play order.

        Each partition's records stay in file (offset) order; between partitions the one whose
        next record is earliest goes first, so the gaps between records follow the clock.
        """
        return heapq.merge(*(zip(ts, [p] * len(ts), self.positions[p]) for p, ts in self.timestamps.items()))


def index_recording(path: Path, keys: Iterable[bytes] | None = None, *, skip_bad: bool = False) -> Recording:
    """Check every line of a recording and note where the records to play are.

    Only records whose key is in ``keys`` are noted when ``keys`` is given. Offsets must grow
    within each partition: a shuffled file would replay out of order. A bad record line raises
    :class:`MalformedLine` naming ``FILE:LINE``, or with ``skip_bad`` is noted in
    ``Recording.skipped`` and left out, so an incident file with one torn line still plays.
    """
    wanted = set(keys) if keys is not None else None
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror or exc}", NO_INPUT_EXIT) from None
    with handle:
        recording: Recording | None = None
        last_offset: dict[int, int] = {}
        number = 0
        while True:
            position, raw = handle.tell(), handle.readline()
            if not raw:
                break
            number += 1
            try:
                line = raw.decode("utf-8")
                if recording is None:
                    recording = Recording(path, decode_header(line))
                    continue
                item = decode_record(line)
                if item.partition >= recording.header["partitions"]:
                    raise MalformedLine(f"partition {item.partition}, but the header says "
                                        f"{recording.header['partitions']} partition(s)")
                if item.offset <= last_offset.get(item.partition, -1):
                    raise MalformedLine(f"offset {item.offset} after {last_offset[item.partition]} in "
                                        f"partition {item.partition}: the file is out of order")
            except (UnicodeDecodeError, MalformedLine) as exc:
                bad = MalformedLine(f"{path}:{number}: {'not UTF-8 text' if isinstance(exc, UnicodeDecodeError) else exc}")
                if not (skip_bad and recording is not None):
                    raise bad from None
                recording.skipped.append(str(bad))
                continue
            last_offset[item.partition] = item.offset
            if wanted is None or item.key in wanted:
                recording.timestamps.setdefault(item.partition, array("q")).append(item.timestamp_ms)
                recording.positions.setdefault(item.partition, array("q")).append(position)
        if recording is None:
            raise MalformedLine(f"{path}:1: empty file, expected the recording's header")
        recording.lines = number
        return recording


def merged_schedule(recordings: list[Recording]) -> Iterator[tuple[int, int, int, int]]:
    """``(timestamp_ms, recording index, partition, file position)`` over several recordings, in play order.

    The recordings interleave as the partitions of one do (:meth:`Recording.schedule`): the
    earliest next record goes first; at equal timestamps the recording named first does.
    """
    def tagged(index: int, recording: Recording) -> Iterator[tuple[int, int, int, int]]:
        return ((ts, index, partition, position) for ts, partition, position in recording.schedule())

    return heapq.merge(*(tagged(i, r) for i, r in enumerate(recordings)))


async def play(recordings: list[Recording], topics: list[str], speed: float | None, settings: Settings) -> Progress:
    """Produce each recording's selected records into its topic, all in one timeline, paced by ``speed`` (None: no pacing)."""
    from aiokafka.errors import KafkaError

    producer = kafka_clients.producer(settings=settings, acks="all", linger_ms=5, request_timeout_ms=10_000)
    await start_client(producer, settings.broker_bootstrap)
    progress = Progress(f"play {', '.join(dict.fromkeys(topics))}", sum(r.selected for r in recordings))
    try:
        try:
            cluster = await asyncio.wait_for(producer.client.fetch_all_metadata(), CONNECT_TIMEOUT_S * 2)
        except (KafkaError, asyncio.TimeoutError) as exc:
            raise ReplayError(f"broker {settings.broker_bootstrap}: {exc or type(exc).__name__}", BROKER_EXIT) from None
        for recording, topic in zip(recordings, topics):
            target = require_topic(topic, cluster.partitions_for_topic(topic))
            needed = max(recording.timestamps, default=-1) + 1
            if needed > len(target):
                raise ReplayError(f"topic {topic!r} has {len(target)} partition(s); the recording needs {needed} "
                                  f"({recording.path})", TOPIC_EXIT)
        try:
            await _send_all(producer, recordings, topics, speed, progress)
        except KafkaError as exc:
            raise ReplayError(f"the broker refused a record: {exc}", UNDELIVERED_EXIT) from None
        return progress
    finally:
        await stop_client(producer)


async def _send_all(producer: Any, recordings: list[Recording], topics: list[str], speed: float | None,
                    progress: Progress) -> None:
    """Send in schedule order; wait for deliveries in chunks so a refusal stops the play early."""
    pending: list[asyncio.Future[Any]] = []
    sent, clock_start, first_ts = 0, time.monotonic(), None
    with contextlib.ExitStack() as files:
        handles = [files.enter_context(r.path.open("rb")) for r in recordings]
        for timestamp, index, _partition, position in merged_schedule(recordings):
            if speed is not None:
                first_ts = timestamp if first_ts is None else first_ts
                delay = (timestamp - first_ts) / 1000 / speed - (time.monotonic() - clock_start)
                if delay > 0:
                    await asyncio.sleep(delay)
            handles[index].seek(position)
            item = decode_record(handles[index].readline().decode("utf-8"))
            pending.append(await producer.send(topics[index], item.value, key=item.key, partition=item.partition,
                                               timestamp_ms=item.timestamp_ms, headers=list(item.headers)))
            sent += 1
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
            progress.show(sent)
    await asyncio.gather(*pending)
    progress.show(sent, force=True)


def play_main(paths: Path | Sequence[Path], topic: str | None = None, *, speed: float | None = 1.0,
              keys: list[str] | None = None, bootstrap: str | None = None, skip_bad_lines: bool = False) -> int:
    """``heater replay play``: the exit code, with one line on stderr for any error and for each skipped line.

    ``topic`` is where one recording goes; without it each recording goes back to the topic it
    was recorded from, which is how an incident's topics are played together in their order.
    """
    files = [paths] if isinstance(paths, Path) else list(paths)
    try:
        if speed is not None and not (math.isfinite(speed) and speed > 0):
            raise ReplayError(f"--speed {speed}: must be a number > 0", USAGE_EXIT)
        if topic is not None and len(files) > 1:
            raise ReplayError("--topic names the target of one recording; several recordings each go back "
                              "to the topic they were recorded from", USAGE_EXIT)
        recordings = [index_recording(path, [k.encode("utf-8") for k in keys] if keys else None,
                                      skip_bad=skip_bad_lines) for path in files]
        for skipped in (line for recording in recordings for line in recording.skipped):
            print(f"heater replay play: skipped {skipped}", file=sys.stderr)
        targets = [topic or str(recording.header.get("topic") or "") for recording in recordings]
        for recording, target in zip(recordings, targets):
            if not target:
                raise ReplayError(f"{recording.path}: the header names no topic; give --topic", USAGE_EXIT)
        progress = asyncio.run(play(recordings, targets, speed, broker_settings(bootstrap)))
    except ReplayError as exc:
        print(f"heater replay play: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("heater replay play: interrupted; the records sent so far stay in the topic", file=sys.stderr)
        return INTERRUPTED_EXIT
    total = sum(r.lines - 1 - len(r.skipped) for r in recordings)
    selected_count = sum(r.selected for r in recordings)
    bad = sum(len(r.skipped) for r in recordings)
    selected = f"{selected_count:,} of {total:,}" if keys else f"{total:,}"
    skipped = f" ({bad:,} bad line(s) skipped)" if bad else ""
    sources = ", ".join(str(path) for path in files)
    progress.finish(f"played {selected} records from {sources} into {', '.join(dict.fromkeys(targets))} "
                    f"in {progress.elapsed:.1f} s{skipped}")
    return exitcodes.DONE
