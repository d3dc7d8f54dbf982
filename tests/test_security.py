"""Access token, CORS, body-size limits and log masking/format (docs/SECURITY.md).

The worker is the real app from ``create_app`` behind a real server on 127.0.0.1 (and, once,
the real ``python server.py`` process); clients are real aiohttp HTTP and WebSocket clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, WSMsgType, WSServerHandshakeError, web
from aiohttp.test_utils import TestServer

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.logutil import mask_text, setup_logging
from pytrickle_worker.server.app import CMS_KEY, create_app
from pytrickle_worker.server.security import OPEN_PATHS
from tests.conftest import ServeApp
from tests.helpers import free_port

REPO = Path(__file__).resolve().parent.parent
TOKEN = "s3cr3t-Tok3n-0123456789abcdef"
ORIGIN = "https://console.example"
BASE_CONFIG: dict[str, Any] = {
    "execution_provider": "cpu",
    "hw_decode": "off",
    "heartbeat_interval_s": 0.5,
    "max_message_bytes": 2048,
}
UNAUTHORIZED = {"status": "error", "message": "unauthorized"}
#: Routes that need the token (when one is set): REST, the camera image, unknown paths.
PROTECTED_GETS = [
    "/api/stream/status",
    "/stream/status",
    "/version",
    "/app-version",
    "/hardware/info",
    "/camera/cam-1/image",
    "/no/such/route",
]
BEARER = {"Authorization": f"Bearer {TOKEN}"}
#: A WebSocket upgrade by hand (aiohttp's ws_connect raises on a refusal, hiding its body).
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


@dataclass
class Worker:
    app: web.Application
    server: TestServer
    http: ClientSession

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def ws_url(self, query: str = "") -> str:
        return self.url("/").replace("http://", "ws://", 1) + query

    def has_route(self, path: str) -> bool:
        return any(resource.canonical == path for resource in self.app.router.resources())

    async def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, Any] | None, Any]:
        async with self.http.get(self.url(path), **kwargs) as response:
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, body, response.headers


StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(tmp_path: Path, serve_app: ServeApp) -> StartWorker:
    """``await start_worker(**config_overrides)``: the real app on 127.0.0.1."""

    async def start(**overrides: Any) -> Worker:
        config = WorkerConfig(cache_dir=tmp_path / "cache", **{**BASE_CONFIG, **overrides})
        app = create_app(config)
        return Worker(app, *await serve_app(app))

    return start


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging changes process-wide state: put it back after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    factory = logging.getLogRecordFactory()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.setLogRecordFactory(factory)


def capture_root_output() -> io.StringIO:
    """Point the handler setup_logging installed at a buffer (it writes to stderr)."""
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)  # pyright: ignore[reportUnknownMemberType]
    return stream


async def first_ws_message(
    worker: Worker,
    query: str = "",
    headers: dict[str, str] | None = None,
    origin: str | None = None,
) -> dict[str, Any]:
    async with worker.http.ws_connect(worker.ws_url(query), headers=headers, origin=origin) as ws:
        message = await asyncio.wait_for(ws.receive(), timeout=10)
        assert message.type is WSMsgType.TEXT, message
        document: dict[str, Any] = json.loads(message.data)
        return document


async def ws_refused(worker: Worker, query: str = "", headers: dict[str, str] | None = None) -> int:
    with pytest.raises(WSServerHandshakeError) as info:
        await first_ws_message(worker, query, headers)
    return info.value.status


# --------------------------------------------------------------------------- token off


async def test_without_a_token_everything_is_open_and_no_cors_headers(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()
    for path in ["/api/stream/status", "/version", "/health", "/health/live"]:
        status, _, headers = await worker.get(path, headers={"Origin": ORIGIN})
        assert status == 200, path
        assert not [h for h in headers if h.lower().startswith("access-control-")]
        assert "Vary" not in headers
    status, body, _ = await worker.get("/camera/cam-1/image")
    assert status == 404 and body is not None and "not subscribed" in body["message"]
    assert (await first_ws_message(worker))["type"] == "stateReport"
    # No CORS configured: a preflight is an ordinary OPTIONS request (no route answers it).
    async with worker.http.options(
        worker.url("/api/stream/start"),
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    ) as response:
        assert response.status == 405
        assert "Access-Control-Allow-Origin" not in response.headers


# --------------------------------------------------------------------------- token on


async def test_rest_routes_require_the_bearer_token(start_worker: StartWorker) -> None:
    worker = await start_worker(access_token=TOKEN)
    wrong: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
    ]
    for path in PROTECTED_GETS:
        for headers in wrong:
            status, body, response_headers = await worker.get(path, headers=headers)
            assert status == 401, (path, headers)
            assert body == UNAUTHORIZED
            assert response_headers["WWW-Authenticate"] == "Bearer"
    # REST routes take the header only: ?token= is not enough there.
    for path in ["/api/stream/status", "/version"]:
        status, body, _ = await worker.get(path, params={"token": TOKEN})
        assert (status, body) == (401, UNAUTHORIZED)
    async with worker.http.post(worker.url("/api/stream/start"), json={}) as response:
        assert response.status == 401 and await response.json() == UNAUTHORIZED

    for path in ["/api/stream/status", "/stream/status", "/version", "/hardware/info"]:
        status, _, _ = await worker.get(path, headers=BEARER)
        assert status == 200, path
    status, _, _ = await worker.get(path, headers={"Authorization": f"bearer  {TOKEN} "})
    assert status == 200
    status, _, _ = await worker.get("/no/such/route", headers=BEARER)
    assert status == 404
    # The camera image also takes ?token= (an <img src> cannot set headers).
    for kwargs in [{"headers": BEARER}, {"params": {"token": TOKEN}}]:
        status, body, _ = await worker.get("/camera/cam-1/image", **kwargs)
        assert status == 404 and body is not None and "not subscribed" in body["message"]
    status, body, _ = await worker.get("/camera/cam-1/image", params={"token": "nope"})
    assert (status, body) == (401, UNAUTHORIZED)


async def test_websocket_requires_the_token_by_header_or_query(start_worker: StartWorker) -> None:
    worker = await start_worker(access_token=TOKEN)
    assert await ws_refused(worker) == 401
    assert await ws_refused(worker, "?token=wrong") == 401
    assert await ws_refused(worker, headers={"Authorization": "Bearer wrong"}) == 401
    assert await ws_refused(worker, headers={"Authorization": f"Basic {TOKEN}"}) == 401
    # A wrong header is not rescued by a right query token.
    assert (
        await ws_refused(worker, f"?token={TOKEN}", headers={"Authorization": "Bearer wrong"})
        == 401
    )
    assert (await first_ws_message(worker, headers=BEARER))["type"] == "stateReport"
    assert (await first_ws_message(worker, f"?token={TOKEN}"))["type"] == "stateReport"


async def test_probes_stay_open_and_metrics_is_open_by_default(start_worker: StartWorker) -> None:
    worker = await start_worker(access_token=TOKEN)
    for path in sorted(OPEN_PATHS):
        status, body, headers = await worker.get(re.sub(r"\{\w+\}", "x", path))
        assert status != 401, path
        assert body is not None or headers["Content-Type"].startswith("text/html"), path
    status, body, _ = await worker.get("/health")
    assert status == 200 and body is not None
    assert TOKEN not in json.dumps(body)
    if not worker.has_route("/metrics"):
        pytest.skip("no /metrics route in this app yet")
    async with worker.http.get(worker.url("/metrics")) as response:
        assert response.status == 200
        assert TOKEN not in await response.text()


async def test_metrics_can_require_the_token(start_worker: StartWorker) -> None:
    worker = await start_worker(access_token=TOKEN, metrics_require_token=True)
    if not worker.has_route("/metrics"):
        pytest.skip("no /metrics route in this app yet")
    status, body, headers = await worker.get("/metrics")
    assert (status, body) == (401, UNAUTHORIZED) and headers["WWW-Authenticate"] == "Bearer"
    status, _, _ = await worker.get("/metrics", params={"token": TOKEN})
    assert status == 401  # header only, like the REST routes (Prometheus sends a header)
    status, _, _ = await worker.get("/metrics", headers=BEARER)
    assert status == 200
    status, _, _ = await worker.get("/health/ready")
    assert status != 401


async def test_token_from_a_file(start_worker: StartWorker, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n", encoding="utf-8")  # `echo` adds the newline
    worker = await start_worker(access_token_file=token_file)
    assert (await worker.get("/version"))[0] == 401
    assert (await worker.get("/version", headers=BEARER))[0] == 200

    token_file.write_text("  \n", encoding="utf-8")
    config = WorkerConfig(cache_dir=tmp_path / "c", access_token_file=token_file)
    with pytest.raises(WorkerError, match="is empty"):
        create_app(config)
    missing = WorkerConfig(cache_dir=tmp_path / "c", access_token_file=tmp_path / "absent")
    with pytest.raises(WorkerError, match="cannot read access_token_file"):
        create_app(missing)


def test_token_config_from_env_never_shows_the_token() -> None:
    config = WorkerConfig.load(
        None,
        environ={"PTW_ACCESS_TOKEN": f" {TOKEN} ", "PTW_METRICS_REQUIRE_TOKEN": "true"},
    )
    token = config.resolved_access_token()
    assert token is not None and token.get_secret_value() == TOKEN
    assert config.metrics_require_token is True
    for text in [str(config), repr(config), config.model_dump_json(), str(config.model_dump())]:
        assert TOKEN not in text
    with pytest.raises(WorkerError) as info:
        WorkerConfig.load(None, environ={"PTW_ACCESS_TOKEN": TOKEN, "PTW_ACCESS_TOKEN_FILE": "/x"})
    assert TOKEN not in str(info.value) and "not both" in str(info.value)
    # An empty variable means "not set", as for every PTW_* variable.
    assert WorkerConfig.load(None, environ={"PTW_ACCESS_TOKEN": ""}).access_token is None


# --------------------------------------------------------------------------- CORS


def test_cors_origins_from_env() -> None:
    def origins(raw: str) -> list[str]:
        return WorkerConfig.load(None, environ={"PTW_CORS_ORIGINS": raw}).cors_origins

    assert origins("https://a.example, http://localhost:3000/") == [
        "https://a.example",
        "http://localhost:3000",
    ]
    assert origins('["https://B.example"]') == ["https://b.example"]
    assert WorkerConfig.load(None, environ={}).cors_origins == []
    for bad in ["*", "a.example", "https://a.example/path", "[not json"]:
        with pytest.raises(WorkerError, match="cors_origins"):
            origins(bad)


async def test_cors_preflight_and_actual_requests(start_worker: StartWorker) -> None:
    worker = await start_worker(access_token=TOKEN, cors_origins=[ORIGIN, "http://localhost:3000"])
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    # Allowed origin, and no token needed for the preflight itself.
    async with worker.http.options(worker.url("/api/stream/start"), headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        allowed = {
            h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
        }
        assert {"authorization", "content-type"} <= allowed
        assert response.headers["Vary"] == "Origin"
    # Disallowed origin: 403 and no CORS header at all.
    async with worker.http.options(
        worker.url("/api/stream/start"), headers={**preflight, "Origin": "https://evil.example"}
    ) as response:
        assert response.status == 403
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]
    # Actual requests: the allowed origin can read the answer, errors included.
    status, _, headers = await worker.get("/version", headers={**BEARER, "Origin": ORIGIN})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Vary"] == "Origin"
    status, _, headers = await worker.get("/version", headers={"Origin": ORIGIN})
    assert status == 401 and headers["Access-Control-Allow-Origin"] == ORIGIN
    status, _, headers = await worker.get("/no/route", headers={**BEARER, "Origin": ORIGIN})
    assert status == 404 and headers["Access-Control-Allow-Origin"] == ORIGIN
    status, _, headers = await worker.get(
        "/version", headers={**BEARER, "Origin": "https://evil.example"}
    )
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    status, _, headers = await worker.get("/version", headers=BEARER)
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    # A browser WebSocket sends an Origin too; the upgrade still works.
    message = await first_ws_message(worker, f"?token={TOKEN}", origin=ORIGIN)
    assert message["type"] == "stateReport"


# --------------------------------------------------------------------------- body size


async def oversize_chunks(total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * 1024
        sent += 1024


@pytest.mark.parametrize("path", ["/api/stream/start", "/api/stream/params", "/stream/params"])
async def test_oversize_bodies_get_a_json_413(start_worker: StartWorker, path: str) -> None:
    worker = await start_worker()
    expected = {"status": "error", "message": "request body too large (limit 2048 bytes)"}
    body = json.dumps({"gateway_request_id": "s", "params": {"pad": "x" * 100_000}})
    async with worker.http.post(
        worker.url(path), data=body, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 413
        assert await response.json() == expected
    # Without a Content-Length (chunked), aiohttp stops reading at the limit: same answer.
    async with worker.http.post(worker.url(path), data=oversize_chunks(16 * 1024)) as response:
        assert response.status == 413
        assert await response.json() == expected
    # Just under the limit goes through to the handler.
    small = json.dumps({"pad": "x" * 1500})
    async with worker.http.post(worker.url(path), data=small) as response:
        assert response.status != 413


async def test_oversize_body_without_the_token_is_refused_as_unauthorized(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker(access_token=TOKEN)
    async with worker.http.post(worker.url("/api/stream/start"), data=b"x" * 100_000) as response:
        assert response.status == 401


async def test_websocket_message_limit_follows_max_message_bytes(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()
    async with worker.http.ws_connect(worker.ws_url()) as ws:
        # Over max_message_bytes: an `error` reply, the connection stays.
        await ws.send_str(json.dumps({"type": "requestState", "pad": "x" * 3000}))
        while True:
            message = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
            if message["type"] == "error":
                break
        assert "exceeds the limit of 2048 bytes" in message["error"]
        # Over twice max_message_bytes: aiohttp closes the connection (1009, message too
        # big) before buffering it all.
        await ws.send_str("x" * (2048 * 2 + 1))
        while True:
            closing = await asyncio.wait_for(ws.receive(), 10)
            if closing.type is not WSMsgType.TEXT:
                break
        assert closing.type in {WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING}
        assert ws.close_code == 1009


async def test_cms_connections_are_capped(start_worker: StartWorker) -> None:
    worker = await start_worker(max_backends=2)
    async with (
        worker.http.ws_connect(worker.ws_url()) as first,
        worker.http.ws_connect(worker.ws_url()) as second,
    ):
        for ws in (first, second):  # both served: each gets its state report
            assert json.loads((await asyncio.wait_for(ws.receive(), 10)).data)["type"] == (
                "stateReport"
            )
        async with worker.http.get(worker.url("/"), headers=UPGRADE) as refused:
            assert refused.status == 503
            body = await refused.json()
        assert body == {
            "status": "error",
            "message": "too many CMS connections (PTW_MAX_BACKENDS=2)",
        }
    async with worker.http.ws_connect(worker.ws_url()) as third:  # a place came free
        assert json.loads((await asyncio.wait_for(third.receive(), 10)).data)["type"] == (
            "stateReport"
        )


async def test_a_cms_connection_flooding_messages_is_closed(start_worker: StartWorker) -> None:
    worker = await start_worker(cms_inbound_rate=5, cms_inbound_burst=10, max_message_bytes=300_000)
    async with worker.http.ws_connect(worker.ws_url()) as calm:
        for _ in range(8):  # within the burst: served
            await calm.send_str('{"type": "requestState"}')
        assert json.loads((await asyncio.wait_for(calm.receive(), 10)).data)["type"] == (
            "stateReport"
        )
        assert not calm.closed
    async with worker.http.ws_connect(worker.ws_url()) as flood:
        for _ in range(40):
            await flood.send_str('{"type": "requestState"}')
        while True:
            message = await asyncio.wait_for(flood.receive(), 10)
            if message.type is not WSMsgType.TEXT:
                break
        assert flood.close_code == 1008
    # A large message counts for its size: one of 200 KiB is 13 units.
    async with worker.http.ws_connect(worker.ws_url()) as heavy:
        await heavy.send_str(json.dumps({"type": "requestState", "pad": "x" * 200_000}))
        while True:
            message = await asyncio.wait_for(heavy.receive(), 10)
            if message.type is not WSMsgType.TEXT:
                break
        assert heavy.close_code == 1008


async def test_a_flood_of_requeststate_samples_the_hardware_once_a_second(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker(heartbeat_interval_s=60)
    endpoint = worker.app[CMS_KEY]
    async with worker.http.ws_connect(worker.ws_url()) as ws:
        await ws.receive()  # the state report of the connection
        first = endpoint._load  # pyright: ignore[reportPrivateUsage] - the cached sample
        for _ in range(50):
            await ws.send_str('{"type": "requestState"}')
        reports: list[dict[str, Any]] = []
        with contextlib.suppress(TimeoutError):  # the queue keeps the newest report only
            while True:
                reports.append(json.loads((await asyncio.wait_for(ws.receive(), 0.5)).data))
        assert reports and {r["type"] for r in reports} == {"stateReport"}
        assert endpoint._load is first  # pyright: ignore[reportPrivateUsage] - not resampled
        assert len({r["cpuUsage"] for r in reports}) == 1


# --------------------------------------------------------------------------- logs


def test_mask_text_masks_token_query_and_bearer() -> None:
    text = (
        f"GET /?token={TOKEN} and http://h/x?a=1&access_token={TOKEN}#f "
        f"Authorization: Bearer {TOKEN} rtsp://u:{TOKEN}@cam/1"
    )
    masked = mask_text(text)
    assert TOKEN not in masked
    assert "?token=***" in masked and "&access_token=***" in masked
    assert "Bearer ***" in masked and "rtsp://u:***@cam/1" in masked


@pytest.mark.usefixtures("restore_logging")
async def test_the_token_never_reaches_a_log(
    start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    setup_logging("DEBUG")
    output = capture_root_output()
    # setup_logging replaced the root handlers, caplog's among them: a second handler again.
    logging.getLogger().addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    worker = await start_worker(access_token=TOKEN)
    # The test server keeps aiohttp's access log on: it logs each request line, query included.
    assert (await first_ws_message(worker, f"?token={TOKEN}"))["type"] == "stateReport"
    assert await ws_refused(worker, f"?token={TOKEN}-wrong") == 401
    assert (await worker.get("/version", params={"token": TOKEN}))[0] == 401
    assert (await worker.get("/version", headers={"Authorization": f"Bearer {TOKEN}x"}))[0] == 401
    assert (await worker.get("/camera/c/image", params={"token": TOKEN}))[0] == 404
    logging.getLogger("tests.anywhere").warning(
        "fetching %s with %s",
        f"http://cam/snap?token={TOKEN}",
        {"Authorization": f"Bearer {TOKEN}"},
    )
    try:
        raise RuntimeError(f"cannot open rtsp://admin:{TOKEN}@cam/1")
    except RuntimeError:
        logging.getLogger("tests.anywhere").exception("failed")
    await asyncio.sleep(0.1)  # the access log line is written after the response

    messages = [record.getMessage() for record in caplog.records]
    assert any("unauthorized GET /version from 127.0.0.1: wrong token" in m for m in messages)
    assert any("unauthorized GET / from 127.0.0.1: wrong token" in m for m in messages)
    assert any("token=***" in m for m in messages)  # the access log line, masked
    assert TOKEN not in caplog.text
    assert not [m for m in messages if TOKEN in m]
    written = output.getvalue()
    assert "unauthorized GET /version" in written and "token=***" in written
    assert TOKEN not in written  # the traceback's message included


@pytest.mark.usefixtures("restore_logging")
def test_json_log_lines() -> None:
    setup_logging("INFO", "json")
    output = capture_root_output()
    log = logging.getLogger("tests.json")
    log.debug("not at INFO")
    log.info("hello %s", "world")
    log.warning("multi\nline with url http://u:pw@host/x?token=abc")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    lines = output.getvalue().splitlines()
    assert len(lines) == 3
    entries = [json.loads(line) for line in lines]
    for entry in entries:
        assert {"ts", "level", "logger", "message"} <= set(entry)
        assert entry["ts"].endswith("Z")
        assert datetime.fromisoformat(entry["ts"]).utcoffset() is not None
        assert entry["logger"] == "tests.json"
    assert entries[0] == {**entries[0], "level": "INFO", "message": "hello world"}
    assert "exc" not in entries[0]
    assert entries[1]["message"] == "multi\nline with url http://u:***@host/x?token=***"
    assert entries[2]["level"] == "ERROR" and "ValueError: boom" in entries[2]["exc"]


@pytest.mark.usefixtures("restore_logging")
def test_text_log_lines_stay_the_default() -> None:
    setup_logging("WARNING")
    output = capture_root_output()
    logging.getLogger("tests.text").info("hidden")
    logging.getLogger("tests.text").warning("open rtsp://a:b@c/1")
    (line,) = output.getvalue().splitlines()
    assert line.endswith("WARNING tests.text: open rtsp://a:***@c/1")


def test_log_level_and_format_env_precedence(tmp_path: Path) -> None:
    def load(env: dict[str, str], file: dict[str, Any] | None = None) -> WorkerConfig:
        path = None
        if file is not None:
            path = tmp_path / "config.json"
            path.write_text(json.dumps(file), encoding="utf-8")
        return WorkerConfig.load(path, environ=env)

    assert (load({}).log_level, load({}).log_format) == ("INFO", "text")
    config = load({"LOG_LEVEL": "debug", "LOG_FORMAT": "json"})
    assert (config.log_level, config.log_format) == ("DEBUG", "json")
    config = load({"LOG_LEVEL": "debug", "PTW_LOG_LEVEL": "warn", "PTW_LOG_FORMAT": "TEXT"})
    assert (config.log_level, config.log_format) == ("WARNING", "text")
    assert load({"LOG_LEVEL": "error"}, {"log_level": "DEBUG"}).log_level == "ERROR"
    assert load({}, {"log_level": "DEBUG"}).log_level == "DEBUG"
    with pytest.raises(WorkerError, match="log_format"):
        load({"LOG_FORMAT": "xml"})


# --------------------------------------------------------------------------- the real server


async def test_real_server_json_logs_debug_level_and_token(tmp_path: Path) -> None:
    """``python server.py`` with PTW_ACCESS_TOKEN, LOG_FORMAT=json and LOG_LEVEL=debug."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PTW_HOST": "127.0.0.1",
        "PTW_PORT": str(port),
        "PTW_CACHE_DIR": str(tmp_path / "cache"),
        "PTW_EXECUTION_PROVIDER": "cpu",
        "PTW_HW_DECODE": "off",
        "PTW_ACCESS_TOKEN": TOKEN,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "debug",
    }
    env.pop("PTW_LOG_LEVEL", None)
    env.pop("PTW_LOG_FORMAT", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "server.py"),
        "--no-demo",
        cwd=tmp_path,  # no stray config.json here
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with ClientSession() as http:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while True:
                try:
                    async with http.get(f"{base}/health/live") as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                assert proc.returncode is None, "server exited"
                assert loop.time() < deadline, "server did not start"
                await asyncio.sleep(0.2)
            async with http.get(f"{base}/version", params={"token": TOKEN}) as response:
                assert response.status == 401
            async with http.get(f"{base}/version", headers=BEARER) as response:
                assert response.status == 200
            async with http.ws_connect(f"ws://127.0.0.1:{port}/?token={TOKEN}") as ws:
                message = await asyncio.wait_for(ws.receive(), 10)
                assert json.loads(message.data)["type"] == "stateReport"
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    text = err.decode()
    assert TOKEN not in text
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert entries and all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    assert any(e["level"] == "DEBUG" for e in entries)
    assert any(
        e["message"] == "unauthorized GET /version from 127.0.0.1: no credentials" for e in entries
    )
    assert any("access token required" in e["message"] for e in entries)
