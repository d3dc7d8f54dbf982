"""JWT access control, the WebSocket bearer subprotocol, open no-data routes and rate limits
(docs/SECURITY.md, issue 14).

The worker is the real app from ``create_app`` behind a real server on 127.0.0.1; the Redis
storage case runs against real redis-servers started by the fixtures. Keys are generated
here with ``cryptography``; tokens are signed with PyJWT the way an identity provider would.
Routes other engineers add (``/labels``, ``/frames``, ``/live``, ``/docs``) are stood in by
small handlers registered on the real app when the app does not have them yet: the
middlewares match routes by their canonical path, so they treat the real ones the same way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import numpy as np
import pytest
from aiohttp import ClientSession, WSMsgType, WSServerHandshakeError, web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.media.jpeg import encode_jpeg
from pytrickle_worker.server.app import LIVE_KEY, create_app
from pytrickle_worker.server.jwtauth import JwtVerifier
from pytrickle_worker.server.security import AccessPolicy
from tests.conftest import ServeApp
from tests.helpers import RedisProcess

TOKEN = "static-Tok3n-0123456789abcdef"
SECRET = "hmac-secret-0123456789abcdef-0123456789"  # >= 32 bytes
AUDIENCE = "ptw-live"
ISSUER = "https://idp.example"
BASE_CONFIG: dict[str, Any] = {
    "execution_provider": "cpu",
    "hw_decode": "off",
    "heartbeat_interval_s": 0.5,
}
UNAUTHORIZED = {"status": "error", "message": "unauthorized"}
SECURITY_LOGGER = "pytrickle_worker.server.security"
RATE_LOGGER = "pytrickle_worker.server.ratelimit"


# --------------------------------------------------------------------------- the worker


async def _ok(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _ws_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=("ptw.live",))
    await ws.prepare(request)
    await ws.send_json({"status": "ok"})
    await ws.close()
    return ws


#: Test-only routes: data routes that merely start like an open one, and a live-view style
#: WebSocket that offers ptw.live as the contract asks.
STAND_INS: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
    ("GET", "/livedata", _ok),
    ("GET", "/docsecret", _ok),
    ("GET", "/test-only/ws", _ws_echo),
]


@dataclass
class Worker:
    app: web.Application
    server: TestServer
    http: ClientSession

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def ws_url(self, path: str = "/", query: str = "") -> str:
        return self.url(path).replace("http://", "ws://", 1) + query

    async def call(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, dict[str, Any] | None, Any]:
        async with self.http.request(method, self.url(path), **kwargs) as response:
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, body, response.headers

    async def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, Any] | None, Any]:
        return await self.call("GET", path, **kwargs)


StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(tmp_path: Path, serve_app: ServeApp) -> StartWorker:
    """``await start_worker(**config_overrides)``: the real app (plus stand-ins for routes
    it does not have yet) on 127.0.0.1."""

    async def start(**overrides: Any) -> Worker:
        config = WorkerConfig(cache_dir=tmp_path / "cache", **{**BASE_CONFIG, **overrides})
        app = create_app(config)
        for method, path, handler in STAND_INS:
            app.router.add_route(method, path, handler)
        return Worker(app, *await serve_app(app))

    return start


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def subprotocol(token: str) -> str:
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return f"ptw.bearer.{encoded}"


async def cms_first_message(
    worker: Worker,
    *,
    query: str = "",
    headers: dict[str, str] | None = None,
    protocols: tuple[str, ...] = (),
) -> dict[str, Any]:
    async with worker.http.ws_connect(
        worker.ws_url("/", query), headers=headers, protocols=protocols
    ) as ws:
        async with asyncio.timeout(10):
            message = await ws.receive()
        assert message.type is WSMsgType.TEXT, message
        document: dict[str, Any] = json.loads(message.data)
        return document


async def ws_refused(worker: Worker, path: str = "/", **kwargs: Any) -> int:
    with pytest.raises(WSServerHandshakeError) as info:
        async with worker.http.ws_connect(worker.ws_url(path), **kwargs):
            pass
    return info.value.status


# --------------------------------------------------------------------------- keys and tokens


@dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    rsa_other: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    ec_other: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa_other=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
        ec_other=ec.generate_private_key(ec.SECP256R1()),
    )


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else None
    if algorithm is not None:
        document: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    else:
        document = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    document["kid"] = kid
    return document


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "viewer",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def hmac_signed(payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWT signed by hand: PyJWT refuses a PEM key as an HMAC secret, an attacker
    does not."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def hs256(secret: str = SECRET, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm="HS256")


JWT_CONFIG: dict[str, Any] = {
    "access_token": TOKEN,
    "jwt_secret": SECRET,
    "jwt_audience": AUDIENCE,
    "jwt_issuer": ISSUER,
}


# --------------------------------------------------------------------------- JWT


async def test_hs256_jwt_and_the_static_token_both_open_rest_routes(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker(**JWT_CONFIG)
    for token in [hs256(), hs256(type="access"), TOKEN]:
        for path in ["/version", "/api/stream/status", "/labels"]:
            status, _, _ = await worker.get(path, headers=bearer(token))
            assert status == 200, (path, token)
    # A token a little past exp is still inside the 30 s leeway (clock skew).
    now = int(time.time())
    assert (await worker.get("/version", headers=bearer(hs256(exp=now - 10))))[0] == 200
    # REST routes never take ?token=, a JWT no more than the static token.
    status, body, _ = await worker.get("/version", params={"token": hs256()})
    assert (status, body) == (401, UNAUTHORIZED)


BAD_HS256: list[tuple[str, Callable[[], str], str]] = [
    ("expired", lambda: hs256(exp=int(time.time()) - 120), "JWT expired"),
    ("not yet valid", lambda: hs256(nbf=int(time.time()) + 600), "JWT not yet valid"),
    ("wrong audience", lambda: hs256(aud="someone-else"), "JWT audience wrong"),
    ("no audience", lambda: hs256(aud=None), "JWT lacks the aud claim"),
    ("wrong issuer", lambda: hs256(iss="https://evil.example"), "JWT issuer wrong"),
    ("no exp", lambda: hs256(exp=None), "JWT lacks the exp claim"),
    ("wrong secret", lambda: hs256(secret="another-secret-0123456789abcdef-0123"), "signature"),
    (
        "tampered payload",
        lambda: ".".join(
            [
                (parts := hs256().split("."))[0],
                base64.urlsafe_b64encode(json.dumps(claims(sub="admin")).encode())
                .decode()
                .rstrip("="),
                parts[2],
            ]
        ),
        "signature",
    ),
    (
        "alg none",
        lambda: jwt.encode(claims(), None, algorithm="none"),
        "JWT algorithm 'none' not allowed",
    ),
    (
        "alg HS512 not in jwt_algorithms",
        lambda: jwt.encode(claims(), SECRET * 2, algorithm="HS512"),
        "JWT algorithm 'HS512' not allowed",
    ),
    ("refresh token", lambda: hs256(type="refresh"), "JWT type 'refresh' is not an access token"),
    ("typed oddly", lambda: hs256(type=1), "JWT type 'int' is not an access token"),
    ("garbage with dots", lambda: "not.a.jwt", "malformed JWT"),
    ("garbage", lambda: "garbage", "wrong token"),
]


@pytest.mark.parametrize(
    ("make_token", "reason"), [(m, r) for _, m, r in BAD_HS256], ids=[n for n, _, _ in BAD_HS256]
)
async def test_a_bad_jwt_gets_401_and_the_log_says_why(
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
    make_token: Callable[[], str],
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger=SECURITY_LOGGER)
    worker = await start_worker(**JWT_CONFIG, jwt_algorithms=["HS256"])
    token = make_token()
    status, body, headers = await worker.get("/version", headers=bearer(token))
    assert (status, body) == (401, UNAUTHORIZED)
    assert headers["WWW-Authenticate"] == "Bearer"
    assert reason.lower() in caplog.text.lower()
    assert "unauthorized GET /version from 127.0.0.1" in caplog.text
    assert token not in caplog.text
    assert (await ws_refused(worker, protocols=(subprotocol(token),))) == 401


async def test_exp_may_be_optional(start_worker: StartWorker) -> None:
    worker = await start_worker(jwt_secret=SECRET, jwt_require_exp=False)
    assert (await worker.get("/version", headers=bearer(hs256(exp=None))))[0] == 200
    # Audience and issuer are only compared when configured: any aud passes here.
    assert (await worker.get("/version", headers=bearer(hs256(aud="x", exp=None))))[0] == 200
    # An exp, when present, still counts.
    expired = hs256(exp=int(time.time()) - 120)
    assert (await worker.get("/version", headers=bearer(expired)))[0] == 401
    # Only JWTs configured: no static token to fall back on.
    assert (await worker.get("/version", headers=bearer(TOKEN)))[0] == 401


async def test_rs256_and_es256_with_pem_public_keys(
    start_worker: StartWorker, keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SECURITY_LOGGER)
    rsa_worker = await start_worker(
        jwt_public_key_file=write(tmp_path / "rsa.pem", public_pem(keys.rsa)),
        jwt_audience=AUDIENCE,
    )
    good = jwt.encode(claims(), keys.rsa, algorithm="RS256")
    assert (await rsa_worker.get("/version", headers=bearer(good)))[0] == 200
    ps = jwt.encode(claims(), keys.rsa, algorithm="PS256")
    assert (await rsa_worker.get("/version", headers=bearer(ps)))[0] == 200
    forged = jwt.encode(claims(), keys.rsa_other, algorithm="RS256")
    assert (await rsa_worker.get("/version", headers=bearer(forged)))[0] == 401
    assert "JWT signature invalid" in caplog.text
    # Algorithm confusion: the public key used as an HMAC secret is refused by algorithm.
    confused = hmac_signed(claims(), public_pem(keys.rsa))
    assert (await rsa_worker.get("/version", headers=bearer(confused)))[0] == 401
    assert "JWT algorithm 'HS256' not allowed" in caplog.text

    ec_worker = await start_worker(
        jwt_public_key_file=write(tmp_path / "ec.pem", public_pem(keys.ec))
    )
    good = jwt.encode(claims(), keys.ec, algorithm="ES256")
    assert (await ec_worker.get("/version", headers=bearer(good)))[0] == 200
    forged = jwt.encode(claims(), keys.ec_other, algorithm="ES256")
    assert (await ec_worker.get("/version", headers=bearer(forged)))[0] == 401
    rsa_token = jwt.encode(claims(), keys.rsa, algorithm="RS256")
    assert (await ec_worker.get("/version", headers=bearer(rsa_token)))[0] == 401
    assert "JWT algorithm 'RS256' not allowed" in caplog.text


async def test_jwks_picks_the_key_by_kid(
    start_worker: StartWorker, keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SECURITY_LOGGER)
    jwks = {"keys": [jwk(keys.rsa, "rsa-1"), jwk(keys.ec, "ec-1"), jwk(keys.rsa_other, "rsa-2")]}
    worker = await start_worker(
        jwt_jwks_file=write(tmp_path / "jwks.json", json.dumps(jwks)), jwt_issuer=ISSUER
    )

    def signed(key: Any, algorithm: str, kid: str | None) -> str:
        headers = {"kid": kid} if kid is not None else None
        return jwt.encode(claims(), key, algorithm=algorithm, headers=headers)

    for token in [
        signed(keys.rsa, "RS256", "rsa-1"),
        signed(keys.rsa_other, "RS256", "rsa-2"),
        signed(keys.ec, "ES256", "ec-1"),
        signed(keys.ec, "ES256", None),  # one EC key: no kid needed
    ]:
        assert (await worker.get("/version", headers=bearer(token)))[0] == 200
    refused = [
        (signed(keys.rsa, "RS256", "rsa-2"), "JWT signature invalid"),  # the other key's kid
        (signed(keys.rsa, "RS256", "nope"), "no RS256 key with kid 'nope'"),
        (signed(keys.rsa, "RS256", None), "no kid, and 2 keys fit RS256"),
        (jwt.encode(claims(iss="x"), keys.ec, algorithm="ES256"), "JWT issuer wrong"),
    ]
    for token, reason in refused:
        assert (await worker.get("/version", headers=bearer(token)))[0] == 401, reason
        assert reason in caplog.text


async def test_jwt_config_errors_name_the_setting(keys: Keys, tmp_path: Path) -> None:
    def load(**env: str) -> WorkerConfig:
        return WorkerConfig.load(None, environ={f"PTW_{k.upper()}": v for k, v in env.items()})

    for env, message in [
        ({"jwt_algorithms": "HS256,none"}, "jwt_algorithms: .*'none'"),
        ({"jwt_algorithms": "XS999"}, "jwt_algorithms: .*unknown algorithm 'XS999'"),
        ({"jwt_secret": "short"}, "jwt_secret: .*at least 32 bytes"),
        ({"jwt_secret": SECRET, "jwt_secret_file": "/x"}, "not both"),
        ({"jwt_leeway_s": "-1"}, "jwt_leeway_s"),
    ]:
        with pytest.raises(WorkerError, match=message):
            load(**env)
    config = load(jwt_secret=SECRET, jwt_algorithms="HS256, HS512")
    assert config.jwt_algorithms == ["HS256", "HS512"]
    assert SECRET not in repr(config) and SECRET not in config.model_dump_json()

    def app_error(**overrides: Any) -> str:
        config = WorkerConfig(cache_dir=tmp_path / "c", **{**BASE_CONFIG, **overrides})
        with pytest.raises(WorkerError) as info:
            create_app(config)
        return str(info.value)

    assert "jwt_algorithms: no configured key can verify RS256" in app_error(
        jwt_secret=SECRET, jwt_algorithms=["RS256"]
    )
    # HS512 wants a 64-byte secret (RFC 7518 3.2).
    assert "no configured key can verify HS512" in app_error(
        jwt_secret=SECRET, jwt_algorithms=["HS512"]
    )
    private = keys.rsa.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert "give the public one" in app_error(
        jwt_public_key_file=write(tmp_path / "private.pem", private)
    )
    assert "cannot read jwt_public_key_file" in app_error(jwt_public_key_file=tmp_path / "none")
    assert "not a JWKS document" in app_error(jwt_jwks_file=write(tmp_path / "j1", "[]"))
    assert "not JSON" in app_error(jwt_jwks_file=write(tmp_path / "j2", "{"))
    oct_key = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}
    assert "symmetric key" in app_error(jwt_jwks_file=write(tmp_path / "j3", json.dumps(oct_key)))
    assert "jwt_secret_file" in app_error(jwt_secret_file=write(tmp_path / "s", "short\n"))


async def test_a_long_secret_also_verifies_hs384_and_hs512(start_worker: StartWorker) -> None:
    long_secret = SECRET * 2  # 78 bytes
    worker = await start_worker(jwt_secret=long_secret)
    for algorithm in ["HS256", "HS384", "HS512"]:
        token = jwt.encode(claims(), long_secret, algorithm=algorithm)
        assert (await worker.get("/version", headers=bearer(token)))[0] == 200, algorithm
    short = await start_worker(jwt_secret=SECRET)  # 39 bytes: HS256 only
    token = jwt.encode(claims(), long_secret, algorithm="HS384")
    assert (await short.get("/version", headers=bearer(token)))[0] == 401


async def test_jwt_secret_from_a_file(start_worker: StartWorker, tmp_path: Path) -> None:
    worker = await start_worker(jwt_secret_file=write(tmp_path / "secret", f"{SECRET}\n"))
    assert (await worker.get("/version", headers=bearer(hs256())))[0] == 200
    assert (await worker.get("/version", headers=bearer(hs256(secret=SECRET + "x"))))[0] == 401


# --------------------------------------------------------------------------- WebSockets


async def test_websocket_takes_the_token_as_a_subprotocol(start_worker: StartWorker) -> None:
    worker = await start_worker(**JWT_CONFIG)
    for token in [TOKEN, hs256()]:
        # A browser offers ptw.live and the token; the CMS endpoint selects no subprotocol
        # (it speaks the CMS protocol), so only the authentication is asserted here.
        document = await cms_first_message(worker, protocols=("ptw.live", subprotocol(token)))
        assert document["type"] == "stateReport"
        document = await cms_first_message(worker, protocols=(subprotocol(token),))
        assert document["type"] == "stateReport"
        # The header works on a WebSocket as well, and ?token= still does on /.
        assert (await cms_first_message(worker, headers=bearer(token)))["type"] == "stateReport"
        assert (await cms_first_message(worker, query=f"?token={token}"))["type"] == "stateReport"
    # A live-view style socket that offers ptw.live gets it selected, the bearer entry
    # notwithstanding (the test-only route does what the contract asks of the real ones).
    async with worker.http.ws_connect(
        worker.ws_url("/test-only/ws"), protocols=("ptw.live", subprotocol(hs256()))
    ) as ws:
        assert ws.protocol == "ptw.live"
        assert json.loads((await ws.receive()).data) == {"status": "ok"}

    for protocols in [
        (subprotocol("wrong"),),
        (subprotocol(hs256(aud="x")),),
        ("ptw.live",),
        ("ptw.bearer.!!!not-base64",),
        ("ptw.bearer.",),
        ("ptw.bearer." + base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="),),
    ]:
        assert await ws_refused(worker, protocols=protocols) == 401, protocols
    # A wrong Authorization header is not rescued by a right subprotocol.
    assert await ws_refused(worker, headers=bearer("wrong"), protocols=(subprotocol(TOKEN),)) == 401
    # The subprotocol is read on WebSocket upgrades only, not on REST calls.
    headers = {"Sec-WebSocket-Protocol": subprotocol(TOKEN)}
    assert (await worker.get("/version", headers=headers))[0] == 401


async def test_a_socket_closes_when_its_jwt_expires(start_worker: StartWorker) -> None:
    """The token is checked once, at the upgrade; a JWT's exp (plus the leeway verify allows)
    still ends the socket: close code 4401, on the live view's and the CMS sockets alike. The
    static token does not expire."""
    worker = await start_worker(**JWT_CONFIG, jwt_leeway_s=1)
    for path in ["/ws/stream/d/k", "/"]:
        expiring = hs256(exp=int(time.time()) + 2)
        started = time.monotonic()
        async with worker.http.ws_connect(
            worker.ws_url(path), protocols=("ptw.live", subprotocol(expiring))
        ) as ws:
            while (message := await ws.receive(timeout=15)).type not in (
                WSMsgType.CLOSE,
                WSMsgType.CLOSED,
                WSMsgType.CLOSING,
            ):
                pass  # the CMS socket's stateReport
            assert ws.close_code == 4401, (path, message)
        assert 1.0 < time.monotonic() - started < 12, path
    # The static token: still open after the JWT's lifetime would have ended.
    async with worker.http.ws_connect(
        worker.ws_url("/ws/stream/d/k"), protocols=("ptw.live", subprotocol(TOKEN))
    ) as ws:
        await asyncio.sleep(4)
        await ws.send_json({"action": "ping"})
        assert await ws.receive_json(timeout=10) == {"action": "pong"}


# --------------------------------------------------------------------------- open routes


async def test_the_page_and_the_api_docs_are_open_and_data_routes_are_not(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker(access_token=TOKEN)
    for path in [
        "/live",
        "/live/static/live.js",
        "/docs",
        "/docs/static/swagger-ui.css",
        "/openapi.json",
    ]:
        status, _, _ = await worker.get(path)
        assert status == 200, path
    for path in ["/livedata", "/docsecret", "/labels", "/labels/a/keys", "/live/nothing"]:
        status, body, _ = await worker.get(path)
        assert (status, body) == (401, UNAUTHORIZED), path


# --------------------------------------------------------------------------- rate limits


async def exhaust(worker: Worker, method: str, path: str, limit: int, **kwargs: Any) -> None:
    for attempt in range(limit):
        status, _, _ = await worker.call(method, path, **kwargs)
        assert status != 429, (path, attempt)


async def poll_status(
    worker: Worker, path: str, wanted: Callable[[int], bool], within: float
) -> None:
    """GET ``path`` until its status is ``wanted`` (a condition, not a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        status = (await worker.get(path))[0]
        if wanted(status):
            return
        assert loop.time() < deadline, f"{path}: still {status} after {within} s"
        await asyncio.sleep(0.1)


def assert_limited(reply: tuple[int, dict[str, Any] | None, Any], limit: str, period_s: int) -> int:
    status, body, headers = reply
    assert status == 429, reply
    assert body == {"status": "error", "message": f"rate limit exceeded: {limit}"}
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= period_s
    return retry_after


async def test_stream_start_limit_in_memory_with_retry_after(start_worker: StartWorker) -> None:
    worker = await start_worker(access_token=TOKEN, rate_limit_stream_start="3/minute")
    auth = bearer(TOKEN)
    # Refused starts count too (the work is done to refuse them); aliases share one budget.
    await exhaust(worker, "POST", "/api/stream/start", 2, json={}, headers=auth)
    await exhaust(worker, "POST", "/stream/start", 1, json={}, headers=auth)
    for path in ["/api/stream/start", "/stream/start", "/live-video-to-video"]:
        reply = await worker.call("POST", path, json={}, headers=auth)
        assert_limited(reply, "3 per 1 minute", 60)
    # Other routes are not limited, and the probes neither.
    for _ in range(5):
        assert (await worker.get("/api/stream/status", headers=auth))[0] == 200
        assert (await worker.get("/health/live"))[0] == 200
    # Limits count before the token is checked: guessing is limited too.
    reply = await worker.call("POST", "/api/stream/start", json={})
    assert reply[0] == 429


async def test_labels_limit_default_and_the_window_moves_on(start_worker: StartWorker) -> None:
    worker = await start_worker()
    await exhaust(worker, "GET", "/labels", 30)
    await exhaust(worker, "GET", "/labels/a/keys", 20)
    await exhaust(worker, "GET", "/labels/b/keys", 10)
    assert_limited(await worker.get("/labels"), "60 per 1 minute", 60)
    assert_limited(await worker.get("/labels/c/keys"), "60 per 1 minute", 60)
    # Uploads have their own budget.
    assert (await worker.call("POST", "/frames"))[0] != 429

    short = await start_worker(rate_limit_labels="2/second")
    await exhaust(short, "GET", "/labels", 2)
    assert_limited(await short.get("/labels"), "2 per 1 second", 1)
    # Once the window has moved on, the client may call again (polled, not timed).
    await poll_status(short, "/labels", lambda status: status != 429, within=10)


async def test_upload_limit_on_the_websocket_upgrade(start_worker: StartWorker) -> None:
    worker = await start_worker(rate_limit_uploads="2/minute")
    for _ in range(2):
        async with worker.http.ws_connect(worker.ws_url("/ws/frames")):
            pass  # the upgrade succeeded
    assert await ws_refused(worker, "/ws/frames") == 429
    status, body, _ = await worker.call("POST", "/frames")
    assert status == 429 and body is not None
    assert body["message"] == "rate limit exceeded: 2 per 1 minute"


async def test_each_upload_on_an_open_socket_counts_against_the_limit(
    start_worker: StartWorker,
) -> None:
    """One socket must not lift the uploads' limit: the upgrade and every message count."""
    worker = await start_worker(rate_limit_uploads="3/minute")
    jpeg = encode_jpeg(np.full((48, 64, 3), 90, np.uint8), 80)
    header = json.dumps({"label": "lobby", "key": "cam-1"}).encode()
    async with worker.http.ws_connect(worker.ws_url("/ws/frames")) as ws:  # 1 of 3
        replies: list[dict[str, Any]] = []
        for _ in range(3):
            await ws.send_bytes(header + b"--IMG--" + jpeg)
            replies.append(await ws.receive_json(timeout=15))
        assert [r["status"] for r in replies] == ["ok", "ok", "error"], replies
        assert re.fullmatch(
            r"rate limit exceeded: 3 per 1 minute; retry in \d+ s", replies[2]["message"]
        ), replies[2]
        # The socket stays open and answers what it can without storing: a text message.
        await ws.send_str("hello")
        assert (await ws.receive_json(timeout=15))["status"] == "error"
    stored = await worker.app[LIVE_KEY].store.entries("lobby", "cam-1")
    assert len(stored) == 2
    status, body, headers = await worker.call("POST", "/frames")
    assert status == 429 and body is not None and int(headers["Retry-After"]) >= 1


async def test_off_disables_a_limit(start_worker: StartWorker) -> None:
    worker = await start_worker(rate_limit_labels="off", rate_limit_uploads="")
    await exhaust(worker, "GET", "/labels", 80)
    await exhaust(worker, "POST", "/frames", 130)


async def test_the_client_address_comes_from_the_trusted_header_only(
    start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    xff = "X-Forwarded-For"
    trusting = await start_worker(rate_limit_labels="2/minute", rate_limit_trusted_header=xff)
    await exhaust(trusting, "GET", "/labels", 2, headers={xff: "203.0.113.5"})
    assert (await trusting.get("/labels", headers={xff: "203.0.113.5"}))[0] == 429
    # The right-most entry is the proxy's; a client prepending its own is still itself.
    spoofed = {xff: "198.51.100.1, 203.0.113.5"}
    assert (await trusting.get("/labels", headers=spoofed))[0] == 429
    # Another client (as the proxy says) has its own budget; IPv6 and ports are understood.
    await exhaust(trusting, "GET", "/labels", 2, headers={xff: "203.0.113.5, 203.0.113.6"})
    await exhaust(trusting, "GET", "/labels", 2, headers={xff: "[2001:db8::1]:443"})
    assert (await trusting.get("/labels", headers={xff: "2001:db8:0::1"}))[0] == 429
    # A missing or unusable header: the peer address counts (and the log says so, once).
    caplog.set_level(logging.WARNING, logger=RATE_LOGGER)
    await exhaust(trusting, "GET", "/labels", 2, headers={xff: "not-an-address"})
    assert (await trusting.get("/labels"))[0] == 429
    assert caplog.text.count("no usable X-Forwarded-For header") == 1

    # Not configured: the header is ignored, whatever it says.
    plain = await start_worker(rate_limit_labels="2/minute")
    await exhaust(plain, "GET", "/labels", 2, headers={xff: "203.0.113.7"})
    assert (await plain.get("/labels", headers={xff: "203.0.113.8"}))[0] == 429


async def test_two_workers_sharing_redis_share_one_budget(
    start_worker: StartWorker, private_redis: RedisProcess
) -> None:
    config = {"rate_limit_storage": private_redis.url, "rate_limit_labels": "4/minute"}
    first = await start_worker(**config)
    second = await start_worker(**config)
    await exhaust(first, "GET", "/labels", 2)
    await exhaust(second, "GET", "/labels", 2)
    assert_limited(await first.get("/labels"), "4 per 1 minute", 60)
    assert_limited(await second.get("/labels"), "4 per 1 minute", 60)
    # A worker counting in memory is not bound by the shared budget.
    local = await start_worker(rate_limit_labels="4/minute")
    assert (await local.get("/labels"))[0] == 200


async def test_redis_storage_down_fails_open_and_limits_resume(
    start_worker: StartWorker, private_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=RATE_LOGGER)
    worker = await start_worker(rate_limit_storage=private_redis.url, rate_limit_labels="2/minute")
    await exhaust(worker, "GET", "/labels", 2)
    assert (await worker.get("/labels"))[0] == 429
    private_redis.stop()
    # Redis down: requests pass (the limiter must not take the worker down with it).
    for _ in range(5):
        assert (await worker.get("/labels"))[0] == 200
    assert caplog.text.count("rate limits off: storage redis://127.0.0.1") == 1
    private_redis.start()  # same port, empty (no persistence): a fresh budget
    await poll_status(worker, "/labels", lambda status: status == 429, within=30)
    assert "rate limits on again" in caplog.text


def test_rate_limit_config_is_validated_at_load() -> None:
    def load(**env: str) -> WorkerConfig:
        return WorkerConfig.load(None, environ={f"PTW_{k.upper()}": v for k, v in env.items()})

    for env, message in [
        ({"rate_limit_labels": "sixty a minute"}, "rate_limit_labels: .*not a rate limit"),
        ({"rate_limit_uploads": "0/minute"}, "rate_limit_uploads: .*use off"),
        ({"rate_limit_stream_start": "5/fortnight"}, "rate_limit_stream_start"),
        ({"rate_limit_storage": "mongodb://db"}, "rate_limit_storage: .*memory://"),
        ({"rate_limit_trusted_header": "X Forwarded"}, "rate_limit_trusted_header"),
    ]:
        with pytest.raises(WorkerError, match=message):
            load(**env)
    config = load(
        rate_limit_labels="OFF",
        rate_limit_uploads="10/second;100/hour",
        rate_limit_storage="redis://:pw@redis:6379/2",
        rate_limit_trusted_header="X-Real-IP",
    )
    assert config.rate_limit("labels") is None
    assert config.rate_limit("uploads") == "10/second;100/hour"
    assert config.rate_limit("stream_start") == "30/minute"
    defaults = WorkerConfig()
    assert (defaults.rate_limit_storage, defaults.rate_limit_trusted_header) == ("memory://", None)


# --------------------------------------------------------------------------- fuzz

HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)
    | st.characters(min_codepoint=0xA0, max_codepoint=0xFF),
    max_size=300,
)


@pytest.fixture
async def fuzz_worker(start_worker: StartWorker) -> Worker:
    return await start_worker(
        **JWT_CONFIG,
        rate_limit_labels="off",
        rate_limit_trusted_header="X-Forwarded-For",
    )


@given(
    authorization=st.none() | HEADER_TEXT | HEADER_TEXT.map(lambda t: f"Bearer {t}"),
    protocol=st.none() | HEADER_TEXT | HEADER_TEXT.map(lambda t: f"ptw.bearer.{t}"),
    forwarded=st.none() | HEADER_TEXT,
    upgrade=st.booleans(),
    path=st.sampled_from(["/version", "/labels", "/", "/camera/c/image", "/no/route"]),
    query_token=st.none() | HEADER_TEXT,
)
async def test_arbitrary_credentials_never_crash_the_middlewares(
    fuzz_worker: Worker,
    authorization: str | None,
    protocol: str | None,
    forwarded: str | None,
    upgrade: bool,
    path: str,
    query_token: str | None,
) -> None:
    headers: dict[str, str] = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if protocol is not None:
        headers["Sec-WebSocket-Protocol"] = protocol
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    if upgrade:
        headers["Upgrade"] = "websocket"  # no key: a handler that gets it answers 400
    params = {"token": query_token} if query_token is not None else None
    status, body, _ = await fuzz_worker.get(path, headers=headers, params=params)
    # 401, or it passed on to the route (which may say 400 to a half-made upgrade).
    if status == 401:
        assert body == UNAUTHORIZED
    else:
        assert status < 500 and status != 429, (status, body)


@pytest.fixture(scope="module")
def verifier(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> JwtVerifier:
    folder = tmp_path_factory.mktemp("jwks")
    config = WorkerConfig(
        jwt_secret=SECRET,
        jwt_jwks_file=write(
            folder / "jwks.json", json.dumps({"keys": [jwk(keys.rsa, "a"), jwk(keys.ec, "b")]})
        ),
    )
    built = JwtVerifier.from_config(config)
    assert built is not None
    return built


B64 = st.binary(max_size=200).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="))
JSON_HEADER = st.fixed_dictionaries(
    {"alg": st.sampled_from(["HS256", "RS256", "ES256", "none", "HS512"]) | st.text(max_size=5)},
    optional={"kid": st.text(max_size=10) | st.integers(), "typ": st.just("JWT")},
)


@given(
    token=st.text(max_size=400)
    | st.tuples(B64, B64, B64).map(".".join)
    | st.tuples(
        JSON_HEADER.map(
            lambda h: base64.urlsafe_b64encode(json.dumps(h).encode()).decode().rstrip("=")
        ),
        B64,
        B64,
    ).map(".".join)
)
def test_arbitrary_tokens_are_refused_with_a_reason(verifier: JwtVerifier, token: str) -> None:
    policy = AccessPolicy(token_digest=None, jwt=verifier)
    reason, expires_at = policy.verdict(token)
    assert isinstance(reason, str) and reason
    assert expires_at is None
