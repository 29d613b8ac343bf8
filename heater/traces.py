"""`heater trace`: one trace from the run directory's span files, as a timeline.

The services' ``file`` exporter (:mod:`streams.tracing`) writes one JSON line per finished
span to ``RUN_DIR/traces/SERVICE.jsonl`` (and the previous file as ``SERVICE.jsonl.1``).
This module reads them back: the spans of one trace sorted by start, each with its
service, name, start offset from the trace's first span, duration and attributes. Reading
and formatting are plain functions so they are tested without a platform.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

from streams import exitcodes

Span = dict[str, Any]
#: How a FATAL alarm's span reads in a span file (compact JSON, as the exporter writes it).
FATAL_MARK = '"heater.severity":"FATAL"'
#: Lines read from the end of each file to list the newest traces.
LIST_LINES = 5000


def span_files(trace_dir: Path) -> list[Path]:
    """Every span file of a run (older rotated ones first)."""
    return sorted(trace_dir.glob("*.jsonl.1")) + sorted(trace_dir.glob("*.jsonl"))


def read_spans(files: Iterable[Path], containing: str | None = None, last: int | None = None) -> Iterator[Span]:
    """The spans of the files; a line cut short by a process that died mid-write is passed over.

    ``containing`` keeps only lines with that text (a trace id: no need to parse the rest of
    files of up to 32 MiB each); ``last`` reads only each file's newest lines.
    """
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines[-last:] if last else lines:
            if containing is not None and containing not in line:
                continue
            try:
                span = json.loads(line)
            except ValueError:
                continue
            if isinstance(span, dict) and span.get("trace_id") and isinstance(span.get("start_ns"), int):
                yield span


def by_trace(spans: Iterable[Span]) -> dict[str, list[Span]]:
    """Spans grouped by trace id, each trace sorted by start."""
    traces: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        traces[span["trace_id"]].append(span)
    for members in traces.values():
        members.sort(key=lambda s: (s["start_ns"], s.get("end_ns") or 0))
    return dict(traces)


def last_fatal(traces: dict[str, list[Span]]) -> str | None:
    """The id of the newest trace in which a FATAL alarm was handled."""
    fatal = [(members[0]["start_ns"], trace_id) for trace_id, members in traces.items()
             if any(s.get("attributes", {}).get("heater.severity") == "FATAL" for s in members)]
    return max(fatal)[1] if fatal else None


def duration_ms(span: Span) -> float:
    end = span.get("end_ns") or span["start_ns"]
    return (end - span["start_ns"]) / 1e6


def timeline(spans: list[Span]) -> list[str]:
    """One trace as lines: start offset (ms), duration (ms), service, span name, attributes; by start."""
    if not spans:
        return []
    spans = sorted(spans, key=lambda s: (s["start_ns"], s.get("end_ns") or 0))
    origin = spans[0]["start_ns"]
    depth = _depths(spans)
    lines = [f"trace {spans[0]['trace_id']}: {len(spans)} span(s), "
             f"{(max((s.get('end_ns') or s['start_ns']) for s in spans) - origin) / 1e6:.1f} ms",
             f"{'start ms':>10} {'dur ms':>8}  {'service':<10} span"]
    for span in spans:
        attributes = " ".join(f"{k}={_short(v)}" for k, v in sorted((span.get("attributes") or {}).items()))
        name = "  " * depth[span.get("span_id")] + span.get("name", "?")
        status = " [error]" if span.get("status") == "error" else ""
        lines.append(f"{(span['start_ns'] - origin) / 1e6:>10.1f} {duration_ms(span):>8.1f}  "
                     f"{span.get('service', '?'):<10} {name}{status}  {attributes}".rstrip())
    return lines


def _depths(spans: list[Span]) -> dict[Any, int]:
    """How deep each span sits under the trace's spans that are in the files (for indentation)."""
    parent = {s.get("span_id"): s.get("parent_id") for s in spans}
    depth: dict[Any, int] = {}
    for span_id in parent:
        level, seen, current = 0, {span_id}, parent[span_id]
        while current in parent and current not in seen:
            seen.add(current)
            level, current = level + 1, parent[current]
        depth[span_id] = level
    return depth


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def summary(traces: dict[str, list[Span]], limit: int) -> list[str]:
    """The newest traces, one line each: id, spans, services, first span."""
    newest = sorted(traces.items(), key=lambda item: item[1][0]["start_ns"], reverse=True)[:limit]
    lines = []
    for trace_id, members in newest:
        services = ",".join(sorted({s.get("service", "?") for s in members}))
        first = members[0]
        lines.append(f"{trace_id}  {len(members):>3} span(s)  {services:<32} {first.get('service')}: {first.get('name')}")
    return lines


def main(run_dir: Path, trace_id: str | None, fatal: bool = False, limit: int = 20) -> int:
    """Print one trace (by id, or the last FATAL's), or list the newest; exit 66 when there is none."""
    trace_dir = run_dir / "traces"
    files = span_files(trace_dir)
    if not files:
        print(f"heater trace: no span files in {trace_dir} (is HEATER_TRACE_EXPORTER=file?)", file=sys.stderr)
        return exitcodes.NO_INPUT
    if fatal:
        trace_id = last_fatal(by_trace(read_spans(files, containing=FATAL_MARK)))
        if trace_id is None:
            print(f"heater trace: no trace in {trace_dir} handled a FATAL alarm", file=sys.stderr)
            return exitcodes.NO_INPUT
    if trace_id is None:
        print("\n".join(summary(by_trace(read_spans(files, last=LIST_LINES)), limit)))
        return exitcodes.DONE
    spans = by_trace(read_spans(files, containing=trace_id.lower())).get(trace_id.lower())
    if not spans:
        print(f"heater trace: no trace {trace_id} in {trace_dir} ({len(files)} span file(s); "
              "`heater trace` lists the newest)", file=sys.stderr)
        return exitcodes.NO_INPUT
    print("\n".join(timeline(spans)))
    return exitcodes.DONE
