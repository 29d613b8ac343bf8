"""Diagnostics views without Kafka: content negotiation, HTML rendering, table paging, the status page's
water-temperature history, health rows and plot."""

from __future__ import annotations

import re

import pytest

from streams import dashboard, html_page, table_views
from streams.water_history import HOUR_S, MAX_RECENT, RECENT_S, WaterHistory


@pytest.mark.parametrize("accept, html", [
    (None, False),
    ("", False),
    ("*/*", False),
    ("application/json", False),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # a browser
    ("application/json, text/html;q=0.5", False),
    ("application/json;q=0.1, text/html", True),
    ("text/html;q=oops, application/json", False),
    ("image/png", False),
])
def test_json_unless_the_client_prefers_html(accept: str | None, html: bool) -> None:
    assert html_page.wants_html(accept) is html


def test_any_json_payload_renders_as_escaped_tables() -> None:
    page = html_page.render("t <1>", {"rows": [{"a": 1, "b": "<x>"}, {"a": None}], "n": 2.5, "e": {}},
                            {"next": "/table/x/?offset=2"})
    assert "<title>t &lt;1&gt;</title>" in page and "&lt;x&gt;" in page and "<x>" not in page
    assert "<th>a</th><th>b</th>" in page and "<code>null</code>" in page and '<a href="/table/x/?offset=2">' in page


@pytest.mark.parametrize("query, bounds", [
    ({}, (0, table_views.DEFAULT_LIMIT)),
    ({"offset": "10", "limit": "5"}, (10, 5)),
    ({"limit": str(table_views.MAX_LIMIT)}, (0, table_views.MAX_LIMIT)),
])
def test_page_bounds(query: dict[str, str], bounds: tuple[int, int]) -> None:
    assert table_views.page_bounds(query) == bounds


@pytest.mark.parametrize("query", [{"offset": "-1"}, {"limit": "0"}, {"limit": "501"}, {"offset": "x"}, {"limit": "1.5"}])
def test_a_query_that_is_not_a_page_is_refused(query: dict[str, str]) -> None:
    with pytest.raises(table_views.PageError):
        table_views.page_bounds(query)


def test_pages_walk_the_sorted_keys_once() -> None:
    keys = [f"k{i:02d}" for i in range(7)][::-1]
    seen, offset = [], 0
    while offset is not None:
        got = table_views.page(keys, offset, 3)
        assert got["total"] == 7
        seen += got["keys"]
        offset = got["next_offset"]
    assert seen == sorted(keys)
    assert table_views.page(keys, 50, 3) == {"total": 7, "offset": 50, "limit": 3, "keys": [], "next_offset": None}


def test_the_water_history_plots_the_median_of_the_water_sensors() -> None:
    history = WaterHistory(["w0", "w1", "w2"])
    history.add("w0", 20.0, 1000.0)
    history.add("flame", 900.0, 1000.5)  # not water
    history.add("w1", 30.0, 1001.0)
    history.add("w2", 22.0, 1002.0)
    assert history.points(1002.0) == [(1000.0, 20.0), (1001.0, 25.0), (1002.0, 22.0)]


def test_the_water_history_stays_bounded_and_keeps_an_hour_by_minute() -> None:
    history = WaterHistory(["w"])
    start = 1_000_000.0
    for i in range(int(2 * HOUR_S * 10)):  # two hours at 10 readings a second
        history.add("w", 20.0 + (i % 600) / 100, start + i / 10)
    now = start + 2 * HOUR_S
    points = history.points(now)
    assert len(history.recent) <= MAX_RECENT and len(history.minutes) <= 61
    assert all(now - HOUR_S < t <= now for t, _ in points)
    assert [t for t, _ in points] == sorted(t for t, _ in points)
    older = [t for t, _ in points if t < now - RECENT_S]
    assert 50 <= len(older) <= 60, "one point per minute before the recent window"


def test_health_rows_show_the_phase_or_silence() -> None:
    beats = dashboard.Beats()
    beats.add("bank", "ready", 100.0)
    beats.add("alarms", "halted", 99.0)
    beats.add("can", "ready", 90.0)
    assert dashboard.service_health(beats, 101.0) == [
        {"service": "alarms", "state": "halted", "last_beat_s": 2.0},
        {"service": "bank", "state": "ready", "last_beat_s": 1.0},
        {"service": "can", "state": "silent", "last_beat_s": 11.0},
    ]


def test_the_platform_state_in_one_phrase() -> None:
    latched = {"latched": True}
    assert dashboard.platform_state(latched, []) == "FATAL — latched"
    free = {"latched": False}
    assert dashboard.platform_state(free, [{"severity": "CRITICAL"}]) == "critical alarm"
    assert dashboard.platform_state(free, [{"severity": "WARNING"}]) == "running, with alarms"
    assert dashboard.platform_state(free, []) == "running"


def test_the_plot_draws_the_last_hour_in_the_plot_colour() -> None:
    now = 10_000.0
    svg = dashboard.plot_svg([(now - 120, 20.0), (now - 60, 25.0), (now, 30.0)], now)
    points = re.search(r'<polyline points="([^"]+)" fill="none" stroke="([^"]+)"', svg)
    assert points and points.group(2) == dashboard.PLOT_COLOUR
    xy = [tuple(map(float, p.split(","))) for p in points.group(1).split()]
    assert [x for x, _ in xy] == sorted(x for x, _ in xy) and xy[-1][0] == dashboard.PLOT_WIDTH - 10
    assert xy[0][1] > xy[1][1] > xy[2][1], "warmer is higher"
    assert "no readings yet" in dashboard.plot_svg([], now) and "polyline" not in dashboard.plot_svg([], now)


def test_the_page_body_shows_latch_relays_services_and_alarms() -> None:
    relays = {"power_on": False, "valve_open": False, "spark_on": False, "trip_latched": True, "read_at": 1.0}
    state = {"at": 0.0, "platform": "FATAL — latched", "relays": relays, "plot": "<svg></svg>",
             "latch": {"latched": True, "reason": "", "occurrences": ["disaster/overtemp@1"]},
             "alarms": [{"severity": "FATAL", "alarm_id": "disaster/overtemp", "message": "<hot>"}],
             "services": [{"service": "bank", "state": "silent", "last_beat_s": 9.0}]}
    body = dashboard.render_body(state)
    assert 'class="banner fatal"' in body and "disaster/overtemp@1" in body and "&lt;hot&gt;" in body
    assert "<td>gas valve</td><td>off</td>" in body and "<td>cut-off trip latched</td><td>yes</td>" in body
    assert "<td>bank</td><td>silent</td>" in body
    page = dashboard.render_page(state | {"relays": None, "alarms": [], "services": []})
    assert "no readback from the board yet" in page and dashboard.BODY_PATH in page
