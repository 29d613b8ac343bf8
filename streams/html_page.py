"""JSON views read by people: the same payload as a small HTML page when a browser asks for it.

Operators open the platform's views in a browser; scripts and tests read JSON. One
rule decides which (:func:`wants_html`) and one renderer turns any JSON payload into
nested HTML tables (:func:`render`), so no view keeps a second, hand-written HTML copy
of its data that could drift from the JSON.
"""

from __future__ import annotations

import html
import json
from typing import Any

STYLE = (
    "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin:.2em 0}td,th{border:1px solid #ccc;padding:.2em .5em;"
    "text-align:left;vertical-align:top}th{background:#f3f3f3}code{font-size:13px}a{color:#0645ad}"
)


def wants_html(accept: str | None) -> bool:
    """True when the client prefers HTML to JSON (a browser); JSON stays the default.

    Browsers send ``text/html`` first in ``Accept``; ``curl``, scripts and ``*/*`` get JSON.
    """
    if not accept:
        return False
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranked.append((-quality, index, media.lower()))
    for _, _, media in sorted(ranked):
        if media in ("text/html", "application/xhtml+xml"):
            return True
        if media in ("application/json", "*/*", "application/*"):
            return False
    return False


def render(title: str, payload: Any, links: dict[str, str] | None = None) -> str:
    """A whole HTML page showing ``payload`` (any JSON value) as nested tables; ``links`` maps labels to URLs."""
    nav = " · ".join(f'<a href="{html.escape(url)}">{html.escape(label)}</a>' for label, url in (links or {}).items())
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"{f'<p>{nav}</p>' if nav else ''}{fragment(payload)}</body></html>"
    )


def fragment(value: Any) -> str:
    """One JSON value as HTML: objects as two-column tables, lists of objects as one table."""
    if isinstance(value, dict):
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{fragment(v)}</td></tr>" for k, v in value.items())
        return f"<table>{rows}</table>" if rows else "<i>empty</i>"
    if isinstance(value, list):
        if not value:
            return "<i>none</i>"
        if all(isinstance(item, dict) for item in value):
            columns = list(dict.fromkeys(k for item in value for k in item))
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{fragment(item.get(c, ''))}</td>" for c in columns) + "</tr>" for item in value
            )
            return f"<table><tr>{head}</tr>{body}</table>"
        return "<br>".join(fragment(item) for item in value)
    if isinstance(value, str):
        return html.escape(value)
    return f"<code>{html.escape(json.dumps(value))}</code>"
