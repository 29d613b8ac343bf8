"""The operator's status page on AlarmsServer: the platform's state at a glance, in a browser.

``GET /dashboard`` is one HTML page: the platform state and the FATAL latch, the relays as
the board last reported them, a plot of the water temperature over the last hour, the
active alarms and every service's health. The page reloads its body from
``GET /dashboard/body`` every :data:`REFRESH_S` seconds, so the plot is live; the plot is
an inline SVG drawn here, so the page shows data without running any script.

AlarmsServer holds the latch and the alarms; the rest comes from the topics its HomeKit
feed already follows (:mod:`streams.homekit_feed`): relays from ``relayState``, the water
temperature from ``sensorData`` (:mod:`streams.water_history`), and health from
``heartbeats`` (each service's last phase and how long ago it beat). The page only shows.
Rendering is plain functions of plain data, tested without Kafka.

A browser opens the page with a one-time link (:mod:`streams.auth`, *Browsers*): a viewer's
client ``POST``s to ``/dashboard/link`` with its bearer token and gets a path with a ticket
(``heater dashboard`` prints the whole URL); ``GET /dashboard/open?ticket=…`` exchanges it
once for an HttpOnly, SameSite=Strict session cookie on ``/dashboard`` and redirects to the
page, whose body refreshes then carry the cookie.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from faust.web import View
from aiohttp import web as aiohttp_web

from streams import auth, topics
from streams.auth import TICKET, Role, requires
from streams.codec import DecodeError, decode
from streams.heartbeats import BEAT_PERIOD_S
from streams.homekit_feed import HomeKitFeed, alarm_rows, latch_row
from streams.records import Heartbeat, SensorReading
from streams.water_history import HOUR_S, Point, WaterHistory

PAGE_PATH = "/dashboard"
BODY_PATH = "/dashboard/body"
LINK_PATH = "/dashboard/link"
OPEN_PATH = "/dashboard/open"
REFRESH_S = 2.0
#: A service whose last beat is older than this shows as silent: three beats missed.
SILENT_AFTER_S = 3 * BEAT_PERIOD_S
PLOT_COLOUR = "#d62728"
PLOT_WIDTH, PLOT_HEIGHT, PLOT_MARGIN = 720, 240, 40


@dataclass
class Beats:
    """Each service's last heartbeat, as the page shows health."""

    last: dict[str, tuple[str, float]] = field(default_factory=dict)  # service → (phase, beat time)

    def add(self, service: str, phase: str, at: float) -> None:
        self.last[service] = (phase, at)


def service_health(beats: Beats, now: float) -> list[dict[str, Any]]:
    """One row per service that beat since AlarmsServer started: its phase, or silent."""
    rows = []
    for name, (phase, at) in sorted(beats.last.items()):
        age = max(0.0, now - at)
        rows.append({"service": name, "state": "silent" if age > SILENT_AFTER_S else phase, "last_beat_s": round(age, 1)})
    return rows


def platform_state(latch: dict[str, Any], alarms: list[dict[str, Any]]) -> str:
    """The one word at the top of the page."""
    if latch["latched"]:
        return "FATAL — latched"
    if any(a["severity"] == "CRITICAL" for a in alarms):
        return "critical alarm"
    if alarms:
        return "running, with alarms"
    return "running"


def plot_svg(points: list[Point], now: float, width: int = PLOT_WIDTH, height: int = PLOT_HEIGHT) -> str:
    """The last hour of water temperature as an SVG line (time across, °C up), with its range labelled."""
    left, right, top, bottom = PLOT_MARGIN, width - 10, 10, height - 25
    frame = (f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="#fff" stroke="#999"/>'
             f'<text x="{left}" y="{height - 8}" font-size="11">−60 min</text>'
             f'<text x="{right - 30}" y="{height - 8}" font-size="11">now</text>')
    if not points:
        body = f'<text x="{left + 10}" y="{(top + bottom) // 2}" font-size="13">no readings yet</text>'
    else:
        values = [v for _, v in points]
        low, high = min(values) - 1.0, max(values) + 1.0
        def x(t: float) -> float:
            return left + (right - left) * (1 - min(HOUR_S, max(0.0, now - t)) / HOUR_S)
        def y(v: float) -> float:
            return bottom - (bottom - top) * (v - low) / (high - low)
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        if len(points) == 1:  # one point is still worth seeing
            path += f" {x(points[0][0]) - 3:.1f},{y(points[0][1]):.1f}"
        body = (f'<polyline points="{path}" fill="none" stroke="{PLOT_COLOUR}" stroke-width="3"/>'
                f'<text x="4" y="{top + 10}" font-size="11">{high:.0f} °C</text>'
                f'<text x="4" y="{bottom}" font-size="11">{low:.0f} °C</text>'
                f'<text x="{left + 8}" y="{top + 16}" font-size="13">{values[-1]:.1f} °C</text>')
    return (f'<svg id="water-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{frame}{body}</svg>')


def _table(rows: list[dict[str, Any]], columns: list[str], empty: str) -> str:
    if not rows:
        return f"<p><i>{html.escape(empty)}</i></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_body(state: dict[str, Any]) -> str:
    """The page's content: what ``GET /dashboard/body`` returns and the page refreshes."""
    latch, relays = state["latch"], state["relays"]
    banner = "fatal" if latch["latched"] else ("warn" if state["alarms"] else "ok")
    relay_rows = [{"relay": name, "state": "on" if relays[key] else "off"}
                  for name, key in (("power", "power_on"), ("gas valve", "valve_open"), ("spark", "spark_on"))
                  ] + [{"relay": "cut-off trip latched", "state": "yes" if relays["trip_latched"] else "no"}] if relays else []
    latch_text = (f"latched: {', '.join(latch['occurrences']) or latch['reason']}" if latch["latched"]
                  else "not latched")
    return (
        f'<div class="banner {banner}" id="platform-state">{html.escape(state["platform"])}</div>'
        f'<p id="latch">FATAL latch: {html.escape(latch_text)}</p>'
        f"<h2>Water temperature, last hour</h2>{state['plot']}"
        f"<div class='cols'><div><h2>Relays</h2>{_table(relay_rows, ['relay', 'state'], 'no readback from the board yet')}</div>"
        f"<div><h2>Services</h2>{_table(state['services'], ['service', 'state', 'last_beat_s'], 'no heartbeats yet')}</div></div>"
        f"<h2>Active alarms</h2>{_table(state['alarms'], ['severity', 'alarm_id', 'message'], 'none')}"
        f"<p class='small'>updated {time.strftime('%H:%M:%S', time.localtime(state['at']))}</p>"
    )


STYLE = (
    "body{font:14px system-ui,sans-serif;margin:1.2em;color:#222}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}th{background:#f3f3f3}"
    ".banner{font-size:22px;font-weight:bold;padding:.4em .8em;color:#fff}.ok{background:#2a7d2a}"
    ".warn{background:#c77700}.fatal{background:#b00020}.cols{display:flex;gap:3em}.small{color:#777}"
)
SCRIPT = (
    f"setInterval(async()=>{{try{{const r=await fetch('{BODY_PATH}');"
    "if(r.ok)document.getElementById('body').innerHTML=await r.text();}catch(e){}}"
    f",{int(REFRESH_S * 1000)});"
)


def render_page(state: dict[str, Any]) -> str:
    """The whole page, refreshing its body every :data:`REFRESH_S` seconds."""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>heater: status</title><style>{STYLE}</style>'
            f'</head><body><h1>Heater platform</h1><div id="body">{render_body(state)}</div>'
            f"<script>{SCRIPT}</script></body></html>")


class Dashboard:
    """What the page shows, gathered from AlarmsServer's tables and the feed's live topics."""

    def __init__(self, feed: HomeKitFeed, active_alarms: Callable[[], Iterable[Any]], latch: Callable[[], Any]) -> None:
        self.feed = feed
        self.water = WaterHistory()
        self.beats = Beats()
        self._active_alarms = active_alarms
        self._latch = latch

    def observe(self, topic: str, payload: bytes | None) -> None:
        """One live message (from the feed's reader); a malformed one is skipped (the feed counts nothing here)."""
        try:
            if topic == topics.SENSOR_DATA.name:
                reading = decode(payload, SensorReading)
                self.water.add(reading.sensor, reading.value, reading.received_at)
            elif topic == topics.HEARTBEATS.name:
                beat = decode(payload, Heartbeat)
                self.beats.add(beat.service, beat.phase, beat.at)
        except DecodeError:
            return

    def state(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        alarms, latch = alarm_rows(self._active_alarms()), latch_row(self._latch())
        return {"at": now, "platform": platform_state(latch, alarms), "latch": latch, "relays": self.feed.state.relays,
                "alarms": alarms, "services": service_health(self.beats, now),
                "plot": plot_svg(self.water.points(now), now)}


def register(service: Any, feed: HomeKitFeed, active_alarms: Callable[[], Iterable[Any]],
             latch: Callable[[], Any]) -> Dashboard:
    """Serve the page on AlarmsServer's web server; it follows ``heartbeats`` through the feed's reader."""
    dashboard = Dashboard(feed, active_alarms, latch)
    feed.observers.append(dashboard.observe)
    feed.extra_topics.append(topics.HEARTBEATS.name)

    @requires(Role.VIEWER)
    async def page(web: Any, request: Any) -> Any:
        return web.html(render_page(dashboard.state()))

    @requires(Role.VIEWER)
    async def body(web: Any, request: Any) -> Any:
        return web.html(render_body(dashboard.state()))

    service.app.page(PAGE_PATH)(page)
    service.app.page(BODY_PATH)(body)
    service.app.page(LINK_PATH)(Link)
    service.app.page(OPEN_PATH)(open_page)
    return dashboard


@requires(Role.VIEWER)
class Link(View):
    """``POST``, with a bearer token (never a cookie): a one-time link to the page, valid for a minute."""

    async def post(self, request: Any) -> Any:
        ticket = request.app[auth.GATE].sessions.ticket(auth.principal(request))
        return self.json({"path": f"{OPEN_PATH}?ticket={ticket}", "expires_in_s": auth.TICKET_TTL_S},
                         headers={"Cache-Control": "no-store"})


@requires(TICKET)
async def open_page(web: Any, request: Any) -> Any:
    """The ticket was redeemed by the middleware: give the browser its session cookie, and the page."""
    response = aiohttp_web.Response(status=303, headers={"Location": PAGE_PATH, "Cache-Control": "no-store",
                                                         "Referrer-Policy": "no-referrer"})
    auth.set_session_cookie(request, response, request[auth.SESSION], auth.principal(request), PAGE_PATH)
    return response
