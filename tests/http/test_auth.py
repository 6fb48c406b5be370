"""Who may publish, read private channels and see the admin endpoints (in-process).

Streams that must stay open (expiry, per-address caps) are in
tests/integration/test_security.py, against a real uvicorn.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hub.http.app import HubApp, create_app
from hub.settings import Settings
from hub.tokens import mint

pytestmark = pytest.mark.anyio

SECRET = "s" * 40
OTHER_SECRET = "o" * 40
LOCAL = ("127.0.0.1", 40000)
REMOTE = ("203.0.113.9", 40000)
JSON = {"Content-Type": "application/json"}
EVENT = b'{"data": {"n": 1}}'


@asynccontextmanager
async def hub_app(**settings: Any) -> AsyncIterator[HubApp]:
    app = create_app(Settings(**settings))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def as_client(app: HubApp, client: tuple[str, int] = LOCAL) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=client), base_url="http://hub")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def publish(app: HubApp, headers: dict[str, str], client: tuple[str, int] = LOCAL) -> httpx.Response:
    async with as_client(app, client) as http:
        return await http.post("/channels/orders-1/events", headers={**JSON, **headers}, content=EVENT)


def assert_error(r: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["error"] == error, body
    assert body["detail"], body
    return body


# -- publishing with no credential configured --------------------------------------------------


async def test_with_no_credential_only_local_unproxied_clients_publish() -> None:
    async with hub_app() as app:
        assert (await publish(app, {})).status_code == 202
        body = assert_error(await publish(app, {}, REMOTE), 403, "forbidden")
        assert "HUB_PUBLISH_TOKENS" in body["detail"]
        # Through a proxy on the same host (nginx): not local.
        assert_error(await publish(app, {"X-Forwarded-For": "198.51.100.7"}), 403, "forbidden")
        assert_error(await publish(app, {"Forwarded": "for=198.51.100.7"}), 403, "forbidden")
        assert_error(await publish(app, {"X-Real-IP": "198.51.100.7"}), 403, "forbidden")
        # A token sent to a hub that has none changes nothing.
        assert_error(await publish(app, bearer("whatever"), REMOTE), 403, "forbidden")


async def test_publish_open_lets_every_client_publish() -> None:
    async with hub_app(publish_open=True) as app:
        assert (await publish(app, {}, REMOTE)).status_code == 202
        assert (await publish(app, {"X-Forwarded-For": "198.51.100.7"})).status_code == 202


@pytest.mark.parametrize("cors", ["*", "https://app.example"])
@pytest.mark.parametrize("open_", [False, True])
async def test_with_no_credential_a_page_from_another_origin_cannot_publish(cors: str, open_: bool) -> None:
    """A text/plain POST is a "simple" request: the browser sends it without a preflight (CSRF)."""
    async with hub_app(cors_origins=cors, publish_open=open_) as app, as_client(app) as http:
        r = await http.post(
            "/channels/c/events",
            headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
            content=b"hi",
        )
        assert_error(r, 403, "forbidden")
        assert app.hub is not None
        assert "c" not in app.hub.channels
        # "*" lets any page read public streams, never publish.
        listed = await http.post(
            "/channels/c/events", headers={"Content-Type": "text/plain", "Origin": cors}, content=b"hi"
        )
        assert listed.status_code == (403 if cors == "*" else 202), listed.text


# -- publish tokens --------------------------------------------------------------------------


async def test_publish_tokens_any_of_them_exactly() -> None:
    async with hub_app(publish_tokens="tok-one-AAAA, tok-two-BBBB") as app:
        for token in ("tok-one-AAAA", "tok-two-BBBB"):
            assert (await publish(app, bearer(token), REMOTE)).status_code == 202
        assert (await publish(app, {"Authorization": "bearer tok-two-BBBB"}, REMOTE)).status_code == 202
        missing = await publish(app, {}, REMOTE)
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == 'Bearer realm="ssehub"'
        # Local clients need one too, once there is one to give.
        assert_error(await publish(app, {}), 401, "unauthorized")
        for wrong in ("TOK-ONE-AAAA", "tok-one-AAA", "tok-one-AAAAx", "tok-one-AAAA,tok-two-BBBB", "x"):
            r = await publish(app, bearer(wrong), REMOTE)
            assert_error(r, 401, "unauthorized")
            assert 'error="invalid_token"' in r.headers["www-authenticate"]
        empty = await publish(app, {"Authorization": "Bearer "}, REMOTE)
        assert_error(empty, 401, "unauthorized")
        assert_error(
            await publish(app, {"Authorization": "Basic dG9rLW9uZS1BQUFB"}, REMOTE), 401, "unauthorized"
        )


async def test_a_credential_makes_the_origin_irrelevant() -> None:
    """A bearer header cannot be sent cross-site without the page holding the token."""
    async with hub_app(publish_tokens="tok-one-AAAA") as app:
        r = await publish(app, {**bearer("tok-one-AAAA"), "Origin": "http://other.example"}, REMOTE)
        assert r.status_code == 202


# -- JWTs ------------------------------------------------------------------------------------


def token(secret: str = SECRET, **claims: Any) -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, secret, algorithm="HS256")


async def test_a_jwt_publishes_where_its_globs_say() -> None:
    async with hub_app(jwt_secret=SECRET) as app:
        good = mint(SECRET, publish=["orders-*"])
        assert (await publish(app, bearer(good), REMOTE)).status_code == 202
        body = assert_error(
            await publish(app, bearer(mint(SECRET, publish=["users-*"])), REMOTE), 403, "forbidden"
        )
        assert "orders-1" in body["detail"]
        # A subscribe-only token never grants publishing.
        assert_error(await publish(app, bearer(mint(SECRET, subscribe=["*"])), REMOTE), 403, "forbidden")


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: token(exp=int(time.time()) - 60, hub={"publish": ["*"]}), "expired"),
        (lambda: token(nbf=int(time.time()) + 600, hub={"publish": ["*"]}), "not valid yet"),
        (lambda: token(OTHER_SECRET, hub={"publish": ["*"]}), "signature"),
        (lambda: "not.a.jwt", "malformed"),
        (lambda: "x" * 9000, "over"),
        (lambda: token(hub="everything"), "hub claim"),
        (lambda: token(hub={"publish": [1, 2]}), "list"),
        (lambda: token(hub={"publish": ["*"] * 300}), "list"),
    ],
)
async def test_unusable_jwts_are_401(make: Any, why: str) -> None:
    async with hub_app(jwt_secret=SECRET) as app:
        r = await publish(app, bearer(make()), REMOTE)
        body = assert_error(r, 401, "unauthorized")
        assert why in body["detail"], body
        assert 'error="invalid_token"' in r.headers["www-authenticate"]


def unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def test_alg_none_and_algorithms_not_configured_are_refused() -> None:
    claims = {"hub": {"publish": ["*"]}, "exp": int(time.time()) + 600}
    async with hub_app(jwt_secret=SECRET) as app:
        body = assert_error(await publish(app, bearer(unsigned(claims)), REMOTE), 401, "unauthorized")
        assert "'none' is not accepted" in body["detail"]
        hs512 = jwt.encode(claims, SECRET * 2, algorithm="HS512")
        assert_error(await publish(app, bearer(hs512), REMOTE), 401, "unauthorized")


async def test_an_rs256_key_and_no_hs_rs_confusion(tmp_path: Any) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    claims = {"hub": {"publish": ["orders-*"]}, "exp": int(time.time()) + 600}
    for key_setting in (pem.decode(), str(path)):
        async with hub_app(jwt_public_key=key_setting) as app:
            good = jwt.encode(claims, private, algorithm="RS256")
            assert (await publish(app, bearer(good), REMOTE)).status_code == 202
            # The attack: an HS256 token whose HMAC key is the (public) PEM.
            forged = _hmac_with_key(claims, pem)
            body = assert_error(await publish(app, bearer(forged), REMOTE), 401, "unauthorized")
            assert "'HS256' is not accepted" in body["detail"]


def _hmac_with_key(claims: dict[str, Any], key: bytes) -> str:
    """An HS256 JWT keyed with ``key``, made by hand (PyJWT refuses PEM keys as HMAC secrets)."""
    import hashlib
    import hmac

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"})) + b"." + b64(orjson.dumps(claims))
    return (signing + b"." + b64(hmac.new(key, signing, hashlib.sha256).digest())).decode()


async def test_an_es256_key() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    async with hub_app(jwt_public_key=pem.decode(), jwt_secret=SECRET) as app:
        claims = {"hub": {"publish": ["*"]}, "exp": int(time.time()) + 600}
        assert (
            await publish(app, bearer(jwt.encode(claims, private, algorithm="ES256")), REMOTE)
        ).status_code == 202
        # Both keys configured: each token is checked with its own.
        assert (
            await publish(app, bearer(jwt.encode(claims, SECRET, algorithm="HS256")), REMOTE)
        ).status_code == 202


async def test_audience_and_issuer_when_configured() -> None:
    async with hub_app(jwt_secret=SECRET, jwt_audience="hub-prod", jwt_issuer="https://auth.example") as app:
        base: dict[str, Any] = {"hub": {"publish": ["*"]}}
        right = token(aud="hub-prod", iss="https://auth.example", **base)
        assert (await publish(app, bearer(right), REMOTE)).status_code == 202
        claims: dict[str, Any]
        for claims in (
            {"aud": "hub-staging", "iss": "https://auth.example"},
            {"iss": "https://auth.example"},
            {"aud": "hub-prod", "iss": "https://evil.example"},
            {"aud": "hub-prod"},
        ):
            assert_error(await publish(app, bearer(token(**claims, **base)), REMOTE), 401, "unauthorized")


# -- private channels ------------------------------------------------------------------------


async def stream_status(app: HubApp, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """The answer to a stream request, via HEAD (the same checks; no body to wait for)."""
    async with as_client(app, REMOTE) as http:
        return await http.head(path, headers=headers or {})


async def test_private_channels_need_a_jwt_that_covers_them() -> None:
    async with hub_app(
        jwt_secret=SECRET, private_channels="private-*, user-*", jwt_cookie="hub_token"
    ) as app:
        # Public channels need nothing.
        assert (await stream_status(app, "/channels/news/stream")).status_code == 200
        missing = await stream_status(app, "/channels/user-42/stream")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="ssehub"'
        good = mint(SECRET, subscribe=["user-42"])
        assert (await stream_status(app, "/channels/user-42/stream", bearer(good))).status_code == 200
        assert (await stream_status(app, f"/channels/user-42/stream?access_token={good}")).status_code == 200
        cookie = {"Cookie": f"theme=dark; hub_token={good}"}
        assert (await stream_status(app, "/channels/user-42/stream", cookie)).status_code == 200
        # A valid token that does not cover the channel: 403.
        assert (await stream_status(app, "/channels/user-43/stream", bearer(good))).status_code == 403
        # A publish-only token never grants reading.
        publisher = mint(SECRET, publish=["*"])
        assert (await stream_status(app, "/channels/user-42/stream", bearer(publisher))).status_code == 403
        bad = token(OTHER_SECRET, hub={"subscribe": ["*"]})
        assert (await stream_status(app, "/channels/user-42/stream", bearer(bad))).status_code == 401
        expired = token(exp=int(time.time()) - 60, hub={"subscribe": ["*"]})
        assert (
            await stream_status(app, f"/channels/user-42/stream?access_token={expired}")
        ).status_code == 401


async def test_a_multi_channel_stream_needs_every_private_channel_covered() -> None:
    async with hub_app(jwt_secret=SECRET, private_channels="user-*") as app:
        some = mint(SECRET, subscribe=["user-1"])
        path = "/stream?channel=news&channel=user-1&channel=user-2"
        async with as_client(app, REMOTE) as http:
            r = await http.get(path, headers=bearer(some))
        body = assert_error(r, 403, "forbidden")
        assert "user-2" in body["detail"]
        assert "user-1" not in body["detail"]
        both = mint(SECRET, subscribe=["user-1", "user-2"])
        assert (await stream_status(app, path, bearer(both))).status_code == 200
        assert (await stream_status(app, "/stream?channel=news&channel=sport")).status_code == 200


async def test_every_channel_private() -> None:
    async with hub_app(jwt_secret=SECRET, private_channels="*") as app:
        assert (await stream_status(app, "/channels/news/stream")).status_code == 401
        news = mint(SECRET, subscribe=["news"])
        assert (await stream_status(app, "/channels/news/stream", bearer(news))).status_code == 200


# -- the admin endpoints ---------------------------------------------------------------------


async def get(app: HubApp, path: str, client: tuple[str, int], headers: dict[str, str] | None = None) -> int:
    async with as_client(app, client) as http:
        return (await http.get(path, headers=headers or {})).status_code


async def test_admin_endpoints_follow_the_publishing_rule_and_probes_are_public() -> None:
    async with hub_app() as app:
        for path in ("/channels", "/metrics"):
            assert await get(app, path, LOCAL) == 200
            assert await get(app, path, REMOTE) == 403
            assert await get(app, path, LOCAL, {"X-Forwarded-For": "198.51.100.1"}) == 403
        for path in ("/healthz", "/readyz"):
            assert await get(app, path, REMOTE) == 200
        # The API documentation is off unless asked for.
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert await get(app, path, LOCAL) == 404
    async with hub_app(jwt_secret=SECRET, publish_tokens="tok-one-AAAA", docs=True) as app:
        assert await get(app, "/channels", REMOTE) == 401
        assert await get(app, "/channels", LOCAL) == 401
        assert await get(app, "/channels", REMOTE, bearer("tok-one-AAAA")) == 200
        assert await get(app, "/metrics?access_token=tok-one-AAAA", REMOTE) == 200
        assert await get(app, "/metrics", REMOTE, bearer(mint(SECRET, admin=True))) == 200
        assert await get(app, "/metrics", REMOTE, bearer(mint(SECRET, publish=["*"], subscribe=["*"]))) == 403
        assert await get(app, "/openapi.json", REMOTE, bearer("tok-one-AAAA")) == 200
        assert await get(app, "/healthz", REMOTE) == 200
        # The dashboard's page and files hold no data; its figures need the token.
        assert await get(app, "/ui", REMOTE) == 200
        assert await get(app, "/ui/ui.js", REMOTE) == 200
        assert await get(app, "/_hub/stats", REMOTE) == 401
        assert await get(app, "/_hub/stats", REMOTE, bearer(mint(SECRET, subscribe=["*"]))) == 403


# -- CORS ------------------------------------------------------------------------------------


async def test_preflights_allow_what_publishes_and_streams_send() -> None:
    async with hub_app(cors_origins="https://app.example") as app, as_client(app) as http:
        r = await http.options(
            "/channels/c/stream",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "last-event-id, authorization",
            },
        )
        assert r.status_code == 200
        allowed = r.headers["access-control-allow-headers"].lower()
        assert "last-event-id" in allowed
        assert "authorization" in allowed
        assert r.headers["access-control-allow-credentials"] == "true"
        r = await http.options(
            "/channels/c/events",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, authorization",
            },
        )
        assert r.status_code == 200
        assert "POST" in r.headers["access-control-allow-methods"]
        evil = await http.options(
            "/channels/c/events",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in evil.headers
        # The answers of the raw routes carry the same origin, and cookies may come with it.
        ok = await http.head("/channels/c/stream", headers={"Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        assert ok.headers["access-control-allow-credentials"] == "true"


async def test_any_origin_never_allows_cookies() -> None:
    async with hub_app() as app, as_client(app) as http:
        r = await http.options(
            "/channels/c/stream",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Cookie": "hub_token=x",
            },
        )
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers
        ok = await http.head("/channels/c/stream", headers={"Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in ok.headers


# -- rate limits -----------------------------------------------------------------------------


async def test_publish_rate_per_credential_answers_429_with_retry_after() -> None:
    async with hub_app(publish_tokens="tok-one-AAAA,tok-two-BBBB", publish_rate=0.5, publish_burst=2) as app:
        one, two = bearer("tok-one-AAAA"), bearer("tok-two-BBBB")
        assert [(await publish(app, one, REMOTE)).status_code for _ in range(2)] == [202, 202]
        r = await publish(app, one, REMOTE)
        assert_error(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 2
        # Another credential has its own bucket.
        assert (await publish(app, two, REMOTE)).status_code == 202
        # A batch counts each of its events.
        async with as_client(app, REMOTE) as http:
            batch = await http.post(
                "/channels/orders-1/events", headers={**JSON, **two}, content=b'[{"data": 1}, {"data": 2}]'
            )
        assert_error(batch, 429, "rate_limited")


def test_settings_refuse_a_short_secret_and_private_channels_without_a_key() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(jwt_secret="short")
    with pytest.raises(ValidationError, match="needs HUB_JWT_SECRET"):
        Settings(private_channels="user-*")


async def test_the_hubs_own_page_on_a_loopback_name_may_publish_but_not_a_rebound_name() -> None:
    """The dashboard at http://127.0.0.1:8000/ui publishes with Origin = its own address; a page
    of evil.example rebound to 127.0.0.1 (DNS rebinding) has Origin and Host agreeing too."""
    async with hub_app() as app:

        async def from_page(origin: str, host: str) -> int:
            r = await publish(app, {"Origin": origin, "Host": host})
            return r.status_code

        assert await from_page("http://127.0.0.1:8000", "127.0.0.1:8000") == 202
        assert await from_page("http://localhost:8000", "localhost:8000") == 202
        assert await from_page("http://[::1]:8000", "[::1]:8000") == 202
        assert await from_page("http://evil.example:8000", "evil.example:8000") == 403
        assert await from_page("http://localhost:8000", "127.0.0.1:8000") == 403
        assert await from_page("http://127.0.0.1:9999", "127.0.0.1:8000") == 403
