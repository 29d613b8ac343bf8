"""The auth middleware and the token verifier, without Kafka or Vault (tokens from tests/tokens.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from typing import Any, AsyncIterator

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from streams import auth
from streams.auth import OPEN, Role, requires
from tests import tokens

pytestmark = pytest.mark.asyncio(loop_scope="session")


@requires(Role.VIEWER)
async def look(request: web.Request) -> web.Response:
    return web.json_response({"who": auth.principal(request).name, "role": auth.principal(request).role.label})


@requires(get=Role.VIEWER, post=Role.ADMIN)
async def settings_view(request: web.Request) -> web.Response:
    return web.json_response({"who": auth.principal(request).name})


@requires(OPEN)
async def alive(request: web.Request) -> web.Response:
    return web.json_response({"alive": True})


async def undeclared(request: web.Request) -> web.Response:
    return web.json_response({"oops": True})


def make_app(fetch: tokens.Fetches) -> web.Application:
    app = web.Application()
    auth.install(app, tokens.verifier(fetch))
    app.router.add_get("/look", look)
    app.router.add_get("/settings", settings_view)
    app.router.add_post("/settings", settings_view)
    app.router.add_get("/alive", alive)
    app.router.add_get("/undeclared", undeclared)
    return app


@pytest.fixture
def fetch() -> tokens.Fetches:
    return tokens.Fetches()


@pytest.fixture
async def client(fetch: tokens.Fetches) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(make_app(fetch))) as running:
        yield running


async def status_of(client: TestClient, method: str, path: str, token: str | None = None, scheme: str = "Bearer") -> tuple[int, Any]:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    async with client.request(method, path, headers=headers) as response:
        return response.status, await response.json()


async def test_no_token_is_401_with_a_bearer_challenge(client: TestClient) -> None:
    async with client.get("/look") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "viewer" in (await response.json())["error"]


async def test_the_right_role_passes_and_the_handler_sees_the_caller(client: TestClient) -> None:
    assert await status_of(client, "GET", "/look", tokens.token("viewer", name="bob")) == (200, {"who": "bob", "role": "viewer"})


async def test_a_higher_role_includes_the_lower_ones(client: TestClient) -> None:
    for role in ("operator", "admin"):
        assert (await status_of(client, "GET", "/look", tokens.token(role)))[0] == 200


async def test_roles_per_method(client: TestClient) -> None:
    assert (await status_of(client, "GET", "/settings", tokens.token("viewer")))[0] == 200
    status, body = await status_of(client, "POST", "/settings", tokens.token("operator"))
    assert status == 403 and "admin" in body["error"]
    assert (await status_of(client, "POST", "/settings", tokens.token("admin")))[0] == 200


async def test_open_route_needs_no_token(client: TestClient) -> None:
    assert (await status_of(client, "GET", "/alive"))[0] == 200


async def test_a_route_without_a_declared_role_is_refused_even_to_an_admin(client: TestClient) -> None:
    assert (await status_of(client, "GET", "/undeclared"))[0] == 403
    assert (await status_of(client, "GET", "/undeclared", tokens.token("admin")))[0] == 403


async def test_unknown_paths_keep_their_404(client: TestClient) -> None:
    async with client.get("/nowhere") as response:
        assert response.status == 404


@pytest.mark.parametrize("make, reason", [
    (lambda: tokens.token("admin", ttl=-60), "expired"),
    (lambda: tokens.token("admin", iss="http://evil/v1/identity/oidc"), "issuer"),
    (lambda: tokens.token("admin", aud="someone-else"), "audience"),
    (lambda: tokens.token("admin", exp=None), "exp"),
    (lambda: tokens.token("admin", kid="unpublished"), "unknown key"),
    (lambda: "not-a-jwt", "malformed"),
    (lambda: tokens.token("admin")[:-4] + "AAAA", "signature"),
])
async def test_unusable_tokens_are_401(client: TestClient, make: Any, reason: str) -> None:
    status, body = await status_of(client, "GET", "/look", make())
    assert status == 401 and reason in body["error"].lower(), body


async def test_a_token_without_a_heater_role_is_403(client: TestClient) -> None:
    status, body = await status_of(client, "GET", "/look", tokens.token(None))
    assert status == 403 and "no heater role" in body["error"]
    assert (await status_of(client, "GET", "/look", tokens.token("root")))[0] == 403


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part(header)}.{part(claims)}."


async def test_alg_none_and_hmac_with_the_public_key_are_refused(client: TestClient) -> None:
    claims = jwt.decode(tokens.token("admin"), options={"verify_signature": False})
    status, body = await status_of(client, "GET", "/look", _unsigned({"alg": "none", "kid": tokens.KID}, claims))
    assert status == 401 and "algorithm" in body["error"]
    public_pem = tokens.private_key().public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": tokens.KID, "typ": "JWT"}
    signing_input = _unsigned(header, claims)[:-1].encode()
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, signing_input, hashlib.sha256).digest()).rstrip(b"=").decode()
    status, body = await status_of(client, "GET", "/look", signing_input.decode() + "." + signature)
    assert status == 401 and "algorithm" in body["error"]


async def test_basic_or_empty_authorization_is_401(client: TestClient) -> None:
    assert (await status_of(client, "GET", "/look", "dXNlcjpwYXNz", scheme="Basic"))[0] == 401
    assert (await status_of(client, "GET", "/look", "", scheme="Bearer"))[0] == 401


async def test_keys_are_cached_and_unknown_key_ids_do_not_hammer_the_issuer(client: TestClient, fetch: tokens.Fetches) -> None:
    for _ in range(5):
        assert (await status_of(client, "GET", "/look", tokens.token("viewer")))[0] == 200
    assert fetch.count == 1
    for _ in range(5):
        assert (await status_of(client, "GET", "/look", tokens.token("viewer", kid="rotated")))[0] == 401
    assert fetch.count == 1  # fetched less than MIN_REFRESH_S ago: an unknown key id does not refetch


async def test_a_rotated_key_is_picked_up() -> None:
    fetch = tokens.Fetches()
    clock = [0.0]
    verifier = auth.TokenVerifier("memory://jwks", tokens.ISSUER, tokens.AUDIENCE, fetch=fetch, clock=lambda: clock[0])
    assert (await verifier.verify(tokens.token("viewer"))).role is Role.VIEWER
    fetch.document = tokens.jwks(tokens.KID, "next-key")
    clock[0] += auth.MIN_REFRESH_S
    assert (await verifier.verify(tokens.token("operator", kid="next-key"))).role is Role.OPERATOR
    assert fetch.count == 2


async def test_unreachable_keys_are_503_not_a_pass() -> None:
    async def down(url: str) -> Any:
        raise OSError("connection refused")

    app = web.Application()
    auth.install(app, auth.TokenVerifier("http://127.0.0.1:9/keys", tokens.ISSUER, tokens.AUDIENCE, fetch=down))
    app.router.add_get("/look", look)
    async with TestClient(TestServer(app)) as running:
        status, body = await status_of(running, "GET", "/look", tokens.token("admin"))
    assert status == 503 and "unreachable" in body["error"]


async def test_keys_served_over_http_are_fetched_with_aiohttp() -> None:
    keys = web.Application()
    keys.router.add_get("/v1/identity/oidc/.well-known/keys", _published_keys)
    async with TestServer(keys) as issuer:
        verifier = auth.TokenVerifier(str(issuer.make_url("/v1/identity/oidc/.well-known/keys")), tokens.ISSUER, tokens.AUDIENCE)
        assert (await verifier.verify(tokens.token("admin", name="carol"))).name == "carol"


async def _published_keys(request: web.Request) -> web.Response:
    return web.json_response(tokens.jwks())


async def test_no_token_appears_in_answers_or_logs(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    presented = [tokens.token("viewer", ttl=-60), tokens.token("viewer"), tokens.token("viewer", kid="unknown"),
                 tokens.token("viewer")[:-4] + "AAAA"]
    bodies = []
    for token in presented:
        for path, method in (("/look", "GET"), ("/settings", "POST"), ("/undeclared", "GET")):
            bodies.append(json.dumps((await status_of(client, method, path, token))[1]))
    text = "\n".join(bodies) + "\n".join(r.getMessage() for r in caplog.records)
    for token in presented:
        for piece in token.split("."):
            assert piece not in text


async def test_a_role_cannot_be_declared_on_a_bound_method() -> None:
    class View:
        async def view(self, request: Any) -> Any: ...

    with pytest.raises(TypeError):
        requires(Role.VIEWER)(View().view)


async def test_role_names() -> None:
    assert Role.parse("Operator") is Role.OPERATOR
    with pytest.raises(ValueError):
        Role.parse("root")
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN


# -- browser sessions: a one-time ticket exchanged for a viewer cookie ------------------------------


@requires(Role.VIEWER)
async def make_link(request: web.Request) -> web.Response:
    ticket = request.app[auth.GATE].sessions.ticket(auth.principal(request))
    return web.json_response({"path": f"/page/open?ticket={ticket}"})


@requires(auth.TICKET)
async def open_page(request: web.Request) -> web.Response:
    response = web.Response(status=303, headers={"Location": "/page"})
    auth.set_session_cookie(request, response, request[auth.SESSION], auth.principal(request), "/page")
    return response


@requires(Role.VIEWER)
async def act(request: web.Request) -> web.Response:
    return web.json_response({"done": True})


@requires(Role.OPERATOR)
async def operate(request: web.Request) -> web.Response:
    return web.json_response({"operated": True})


@pytest.fixture
async def browser_client(fetch: tokens.Fetches) -> AsyncIterator[TestClient]:
    app = make_app(fetch)
    app.router.add_get("/page", look)
    app.router.add_post("/page/link", make_link)
    app.router.add_get("/page/open", open_page)
    app.router.add_post("/page/act", act)
    app.router.add_get("/page/operate", operate)
    async with TestClient(TestServer(app)) as running:
        yield running


async def open_link(client: TestClient, role: str = "viewer", name: str = "bob") -> tuple[str, Any]:
    """Ask for a link with a bearer token and open it: the link's path and the answer's cookie."""
    async with client.post("/page/link", headers=tokens.headers(role, name=name)) as response:
        assert response.status == 200
        path = (await response.json())["path"]
    async with client.get(path, allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/page"
        cookie = response.cookies[auth.SESSION_COOKIE]
    client.session.cookie_jar.clear()  # each case sends the cookie it means to
    return path, cookie


async def with_cookie(client: TestClient, method: str, path: str, session: str) -> tuple[int, Any]:
    async with client.request(method, path, headers={"Cookie": f"{auth.SESSION_COOKIE}={session}"}) as response:
        return response.status, await response.json()


async def test_a_ticket_opens_a_viewer_session_cookie_httponly_samesite_strict(browser_client: TestClient) -> None:
    _, cookie = await open_link(browser_client, "admin", "carol")
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/page"
    assert 0 < int(cookie["max-age"]) <= 300, "no longer than the token that asked for it"
    status, body = await with_cookie(browser_client, "GET", "/page", cookie.value)
    assert (status, body) == (200, {"who": "carol", "role": "viewer"}), "an admin's link opens a viewer's session"


async def test_a_ticket_is_exchanged_once(browser_client: TestClient) -> None:
    path, _ = await open_link(browser_client)
    async with browser_client.get(path, allow_redirects=False) as response:
        assert response.status == 401 and auth.SESSION_COOKIE not in response.cookies
    for bad in ("/page/open", "/page/open?ticket=", "/page/open?ticket=made-up"):
        async with browser_client.get(bad, allow_redirects=False) as response:
            assert response.status == 401


async def test_an_expired_ticket_opens_nothing(browser_client: TestClient) -> None:
    sessions = browser_client.server.app[auth.GATE].sessions
    async with browser_client.post("/page/link", headers=tokens.headers("viewer")) as response:
        path = (await response.json())["path"]
    sessions._clock = lambda: time.time() + auth.TICKET_TTL_S + 1
    try:
        async with browser_client.get(path, allow_redirects=False) as response:
            assert response.status == 401
    finally:
        sessions._clock = time.time


async def test_the_cookie_never_counts_for_a_post_or_more_than_viewer(browser_client: TestClient) -> None:
    _, cookie = await open_link(browser_client, "admin")
    assert (await with_cookie(browser_client, "POST", "/page/act", cookie.value))[0] == 401, "no CSRF: POST needs a bearer"
    assert (await with_cookie(browser_client, "POST", "/page/link", cookie.value))[0] == 401, "a cookie cannot mint links"
    assert (await with_cookie(browser_client, "GET", "/page/operate", cookie.value))[0] == 401
    assert (await with_cookie(browser_client, "POST", "/settings", cookie.value))[0] == 401
    assert (await with_cookie(browser_client, "GET", "/page", "forged"))[0] == 401


async def test_a_session_ends_with_its_token(browser_client: TestClient) -> None:
    async with browser_client.post("/page/link", headers=tokens.headers("viewer", ttl=30)) as response:
        path = (await response.json())["path"]
    async with browser_client.get(path, allow_redirects=False) as response:
        session = response.cookies[auth.SESSION_COOKIE].value
    browser_client.session.cookie_jar.clear()
    sessions = browser_client.server.app[auth.GATE].sessions
    sessions._clock = lambda: time.time() + 31
    try:
        assert (await with_cookie(browser_client, "GET", "/page", session))[0] == 401
    finally:
        sessions._clock = time.time
