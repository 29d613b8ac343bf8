"""The services' web server: Faust's aiohttp driver, with the platform's table views in place of Faust's.

Faust mounts its ``/table`` blueprint when ``web_tables_enabled`` is on. This driver mounts
:mod:`streams.table_views` (subclasses of Faust's views) at the same prefix under the same
setting instead, so there is one set of table views, not two side by side. Selected by the
``heater://`` web URL (:func:`streams.settings.faust_options`).
"""

from __future__ import annotations

from typing import ClassVar, Mapping

from faust.web import base
from faust.web.drivers import DRIVERS
from faust.web.drivers.aiohttp import Web as AiohttpWeb

SCHEME = "heater"
FAUST_TABLES = "faust.web.apps.tables.blueprint"
TABLES = "streams.table_views:blueprint"


class Web(AiohttpWeb):
    default_blueprints: ClassVar[base._BPList] = [
        (prefix, TABLES if blueprint == FAUST_TABLES else blueprint) for prefix, blueprint in base.DEFAULT_BLUEPRINTS
    ]
    blueprint_flags: ClassVar[Mapping[str, str]] = {**base.BLUEPRINT_FLAGS, TABLES: base.BLUEPRINT_FLAGS[FAUST_TABLES]}


def register() -> None:
    """Make ``heater://`` web URLs select :class:`Web` (idempotent)."""
    DRIVERS[SCHEME] = f"{__name__}:Web"
