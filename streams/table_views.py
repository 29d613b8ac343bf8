"""Faust's table views, extended for operators: every changelog table of a service, inspectable.

Faust serves ``/table/`` (the tables), ``/table/{name}/`` (one table) and
``/table/{name}/{key}/`` (one key, routed to the worker that owns it) when
``web_tables_enabled`` is on. These views subclass Faust's and are served in their place,
under the same setting (:mod:`streams.web_driver`), adding what an operator inspecting a
table needs: its size, its keys a page at a time, its changelog topic and how far the local
store has applied that changelog against where the log ends. JSON by default; a browser
(``Accept: text/html``) gets the same payload as a page (:mod:`streams.html_page`).

Tables are read through :func:`streams.consistency.on_partition_zero`: the services'
tables have one partition, and a read outside an agent's event must say which one.
Every view takes the viewer role (:mod:`streams.auth`). A key another worker owns is fetched
from it with the caller's own request headers (Faust's routing), so its token is checked again
there: no worker-to-worker exemption is needed. The worker that serves a key logs who asked
and which client certificate the request came with (a forward: the service's own).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Iterable, Mapping, cast
from urllib.parse import quote

from faust import web
from faust.app.router import SameNode
from faust.types import TP, TableT
from faust.utils import json as faust_json
from faust.web.apps import tables as faust_tables

from streams import html_page
from streams.auth import Role, principal, requires
from streams.consistency import on_partition_zero
from streams.tls import peer_subject

log = logging.getLogger(__name__)

blueprint = web.Blueprint("tables")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: A changelog's end is asked of the broker; a view never waits longer than this for it.
END_OFFSETS_TIMEOUT_S = 5.0


class PageError(ValueError):
    """A ``limit``/``offset`` query that is not a page."""


def page_bounds(query: Mapping[str, str]) -> tuple[int, int]:
    """``(offset, limit)`` from a query: offset ≥ 0, 1 ≤ limit ≤ :data:`MAX_LIMIT`; PageError otherwise."""
    try:
        offset = int(query.get("offset", 0))
        limit = int(query.get("limit", DEFAULT_LIMIT))
    except ValueError as exc:
        raise PageError(f"offset and limit are whole numbers: {exc}") from None
    if offset < 0 or not 1 <= limit <= MAX_LIMIT:
        raise PageError(f"expected offset >= 0 and 1 <= limit <= {MAX_LIMIT}")
    return offset, limit


def page(keys: Iterable[Any], offset: int, limit: int) -> dict[str, Any]:
    """One page of a table's keys in sorted order (stable across requests), with the total."""
    ordered = sorted(keys, key=str)
    chosen = ordered[offset : offset + limit]
    following = offset + len(chosen)
    return {"total": len(ordered), "offset": offset, "limit": limit, "keys": [str(k) for k in chosen],
            "next_offset": following if following < len(ordered) else None}


def changelog_partitions(table: TableT) -> list[TP]:
    topic = table.changelog_topic.get_topic_name()
    return [TP(topic, p) for p in range(table.partitions or table.app.conf.topic_partitions)]


def stored_offsets(table: TableT) -> dict[int, int | None]:
    """Per changelog partition, the newest changelog offset the local store has applied (None: none yet)."""
    return {tp.partition: table.data.persisted_offset(tp) for tp in changelog_partitions(table)}


async def end_offsets(table: TableT) -> dict[int, int] | str:
    """Per changelog partition, where the log ends now (the next offset to be written); an error text if unknown."""
    tps = changelog_partitions(table)
    try:
        ends = await asyncio.wait_for(table.app.consumer.highwaters(*tps), END_OFFSETS_TIMEOUT_S)
    except Exception as exc:  # the broker may be away: the view still shows the store
        return f"unknown: {exc!r}"
    return {tp.partition: int(ends[tp]) for tp in tps if ends.get(tp) is not None}


@requires(Role.VIEWER)
class TableView(faust_tables.TableView):
    """Faust's table view with JSON or HTML by the client's ``Accept``, and table reads on partition 0."""

    def respond(self, request: web.Request, title: str, payload: Any, links: dict[str, str] | None = None,
                status: int = 200) -> web.Response:
        data = json.loads(faust_json.dumps(payload))  # records, enums and the like as their JSON form
        if html_page.wants_html(request.headers.get("Accept")):
            return self.html(html_page.render(title, data, links), status=status)
        return self.json(data, status=status)

    def table_json(self, table: TableT, **kwargs: Any) -> Mapping:
        """Faust's name and help, plus size and changelog topic."""
        with on_partition_zero():
            size = len(table)
        return {**super().table_json(table), "size": size, "partitions": table.partitions,
                "changelog_topic": table.changelog_topic.get_topic_name(), "url": f"/table/{quote(table.name)}/"}

    def tables(self) -> list[TableT]:
        return sorted((cast(TableT, t) for t in self.app.tables.values()), key=lambda t: t.name)


@blueprint.route("/", name="list")
class TableList(TableView, faust_tables.TableList):
    """Every changelog table of this service: name, help, size, changelog topic."""

    async def get(self, request: web.Request) -> web.Response:
        payload = [self.table_json(t) for t in self.tables()]
        return self.respond(request, f"{self.app.conf.id}: tables", payload,
                            {t.name: f"/table/{quote(t.name)}/" for t in self.tables()})


@blueprint.route("/{name}/", name="detail")
class TableDetail(TableView, faust_tables.TableDetail):
    """One table: its size, changelog topic and offsets, and a page of its keys (``?offset=&limit=``)."""

    async def get(self, request: web.Request, name: str) -> web.Response:
        table = self.get_table_or_404(name)
        try:
            offset, limit = page_bounds(request.query)
        except PageError as exc:
            return self.respond(request, "bad query", {"error": str(exc)}, status=400)
        with on_partition_zero():
            keys = list(table.keys())
        stored, ends = stored_offsets(table), await end_offsets(table)
        payload = {
            **self.table_json(table),
            "changelog": {"topic": table.changelog_topic.get_topic_name(), "partitions": [
                {"partition": p, "stored_offset": stored[p],
                 "end_offset": ends.get(p) if isinstance(ends, dict) else ends}
                for p in sorted(stored)
            ]},
            **page(keys, offset, limit),
        }
        links = {"all tables": "/table/"} | {k: f"/table/{quote(name)}/{quote(k, safe='')}/" for k in payload["keys"]}
        if payload["next_offset"] is not None:
            links["next page"] = f"/table/{name}/?offset={payload['next_offset']}&limit={limit}"
        return self.respond(request, f"table {name}", payload, links)


@blueprint.route("/{name}/{key}/", name="key-detail")
class TableKeyDetail(TableView, faust_tables.TableKeyDetail):
    """One key's value, from the worker that owns the key (Faust's routing), or 404."""

    async def get(self, request: web.Request, name: str, key: str) -> web.Response:
        try:
            return await self.app.router.route_req(name, key, self.web, request)
        except SameNode:
            table = self.get_table_or_404(name)
            with on_partition_zero():
                value = self.get_table_value_or_404(table, key)
            caller = principal(request)
            log.info("table %s key %s served to %s (%s), client certificate %s", name, key, caller.name,
                     caller.role.label, peer_subject(request))
            payload = {"table": name, "key": key, "value": value}
            return self.respond(request, f"table {name}: {key}", payload, {"table": f"/table/{name}/"})
