"""The services' web server: Faust's aiohttp driver, with the platform's table views in place of Faust's.

Faust mounts its ``/table`` blueprint when ``web_tables_enabled`` is on. This driver mounts
:mod:`streams.table_views` (subclasses of Faust's views) at the same prefix under the same
setting instead, so there is one set of table views, not two side by side. Selected by the
``heater://`` web URL (:func:`streams.settings.faust_options`).

Every route goes through :mod:`streams.auth`'s middleware. A Faust view declares its role
with :func:`streams.auth.requires` on the function or class given to ``app.page``; the
driver carries it onto the handler it registers. Faust's own ``/router`` views (which worker
owns a key; the table views route requests themselves, forwarding the caller's token) take
the viewer role, declared here where the platform mounts them.

The server itself is :mod:`streams.tls`'s: the API port with mTLS and the plain probe port,
the same as every other kind of service; Faust's HTTP client (which forwards a table request
to the worker that owns the key) presents the service's own certificate.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping

import aiohttp
from faust.web import base
from faust.web.drivers import DRIVERS
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from streams import auth, tls

SCHEME = "heater"
#: A service's Faust app id is ``heater-NAME`` (streams.app); its certificate is NAME's.
APP_PREFIX = "heater-"
FAUST_TABLES = "faust.web.apps.tables.blueprint"
TABLES = "streams.table_views:blueprint"
#: Roles of the views of Faust's own blueprints (the platform's views declare their own): the
#: ``/router/...`` views (which worker owns a key) and Faust's index ``/`` (``{"status": "OK"}``).
FAUST_VIEW_ROLES: Mapping[str, auth.Role] = {"/router/": auth.Role.VIEWER, "/": auth.Role.VIEWER}


def faust_view_role(pattern: str) -> auth.Role | None:
    """The role of one of Faust's own views: ``/`` exactly, ``/router/`` and below."""
    if pattern == "/":
        return FAUST_VIEW_ROLES["/"]
    return FAUST_VIEW_ROLES["/router/"] if pattern.startswith("/router/") else None


class Web(AiohttpWeb):
    default_blueprints: ClassVar[base._BPList] = [
        (prefix, TABLES if blueprint == FAUST_TABLES else blueprint) for prefix, blueprint in base.DEFAULT_BLUEPRINTS
    ]
    blueprint_flags: ClassVar[Mapping[str, str]] = {**base.BLUEPRINT_FLAGS, TABLES: base.BLUEPRINT_FLAGS[FAUST_TABLES]}

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        auth.install(self.web_app)

    async def start_server(self) -> None:
        """The API port with mTLS and the plain probe port; table requests routed to another worker present
        this service's certificate."""
        from streams.settings import Settings

        settings = Settings.from_env()
        own = tls.ServiceTLS.from_settings(settings, self.app.conf.id.removeprefix(APP_PREFIX))
        tls.install(self.web_app, own)
        if own is not None:
            self.app.http_client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=own.client))
        await self._runner.setup()
        await tls.start_sites(self._runner, settings, own)

    def route(self, pattern: str, handler: Callable, cors_options: Any = None) -> None:
        role = faust_view_role(pattern)
        if auth.access_of(handler) is None and role is not None:
            setattr(handler, auth.ACCESS_ATTR, {"*": role})
        super().route(pattern, handler, cors_options)

    def _wrap_into_asyncdef(self, handler: Callable) -> Callable:
        """Faust's wrapper, carrying the view's declared access (the middleware reads it there)."""
        dispatch = super()._wrap_into_asyncdef(handler)
        access = auth.access_of(handler)
        if access is not None:
            setattr(dispatch, auth.ACCESS_ATTR, access)
        return dispatch


def register() -> None:
    """Make ``heater://`` web URLs select :class:`Web` (idempotent)."""
    DRIVERS[SCHEME] = f"{__name__}:Web"
