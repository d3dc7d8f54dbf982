"""One error shape on every route, and REST bodies that can only be 4xx.

The worker is the real app from ``create_app`` (access token and CORS configured) behind a
real server on 127.0.0.1; the client is a real aiohttp client. Every error body must parse as
:class:`ErrorBody`, ``{"status": "error", "message": ...}`` and nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy
from pydantic import SecretStr

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.frontdoors.streamserver.schemas import ErrorBody
from pytrickle_worker.server.app import STREAMS_KEY, create_app
from pytrickle_worker.server.security import METRICS_PATH, is_open_path
from pytrickle_worker.transport.body_limits import ROUTE_BODY_LIMITS

TOKEN = "t0ken-for-the-error-tests"
ORIGIN = "https://console.example"
LIMIT = 256 * 1024
AUTH = {"Authorization": f"Bearer {TOKEN}", "Origin": ORIGIN}
BOOM_PATH = "/test-only/boom"


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    def error(self) -> ErrorBody:
        """The body as the one documented error shape (fails the test otherwise)."""
        assert self.headers.get("Content-Type", "").startswith("application/json"), self
        body = ErrorBody.model_validate_json(self.text)
        assert "internal error" not in body.message or self.status == 500, self
        # Errors are readable by an allowed browser origin, like any other answer.
        assert self.headers.get("Access-Control-Allow-Origin") == ORIGIN, self
        return body


@dataclass
class Worker:
    app: web.Application
    server: TestServer
    http: ClientSession

    async def call(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | str | None = None,
    ) -> Reply:
        url = str(self.server.make_url(path))
        async with self.http.request(
            method, url, headers=AUTH if headers is None else headers, data=data
        ) as response:
            return Reply(response.status, response.headers, await response.text())

    async def health(self) -> tuple[int, str]:
        reply = await self.call("GET", "/health", headers={})
        body = reply.text
        # uptime changes between calls; the state and everything else must not.
        return reply.status, re.sub(r'"uptime_s": [0-9.]+', "", body)


MakeWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def make_worker(tmp_path: Path) -> AsyncIterator[MakeWorker]:
    """``await make_worker(pipeline=None)``: the real app (token, CORS, a small body limit)
    on 127.0.0.1, ready; ``pipeline`` is the stream processor's default MPTA."""
    workers: list[Worker] = []

    async def make(pipeline: str | None = None) -> Worker:
        config = WorkerConfig(
            cache_dir=tmp_path / "cache",
            execution_provider="cpu",
            hw_decode="off",
            max_message_bytes=LIMIT,
            access_token=SecretStr(TOKEN),
            cors_origins=[ORIGIN],
            model_url_hosts=["127.0.0.1"],
        )
        app = create_app(config, pipeline)

        async def boom(_request: web.Request) -> web.Response:
            raise RuntimeError("a bug with a secret detail")

        # A route that fails the way a bug would: the middleware, not the route, answers.
        app.router.add_get(BOOM_PATH, boom)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        worker = Worker(app, server, ClientSession())
        workers.append(worker)
        await app[STREAMS_KEY].wait_loaded()
        return worker

    yield make
    for worker in workers:
        await worker.http.close()
        await worker.server.close()


@pytest.fixture
async def worker(make_worker: MakeWorker) -> Worker:
    return await make_worker()


@pytest.fixture
async def demo_worker(make_worker: MakeWorker, demo_assets: DemoAssets) -> Worker:
    """A worker whose stream processor has the demo pipeline as its default model."""
    return await make_worker(str(demo_assets.mpta_path))


def concrete(canonical: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", canonical)


def registered(app: web.Application) -> list[tuple[str, set[str], str]]:
    """Every route of the app: (path as called, its methods, path as registered)."""
    routes: list[tuple[str, set[str], str]] = []
    for resource in app.router.resources():
        methods = {route.method for route in resource}
        routes.append((concrete(resource.canonical), methods, resource.canonical))
    return routes


async def test_every_route_answers_every_error_in_the_one_shape(worker: Worker) -> None:
    routes = registered(worker.app)
    paths = {path for path, _, _ in routes}
    assert {"/api/stream/start", "/stream/params", "/camera/x/image", "/", "/health"} <= paths
    # Routes with a body limit of their own (uploads) are held to it instead.
    own_limits = {concrete(path): n for path, n in worker.app.get(ROUTE_BODY_LIMITS, {}).items()}
    for path, methods, canonical in routes:
        limit = own_limits.get(path, LIMIT)
        oversized = b'{"x": "' + b"a" * (2 * limit) + b'"}'
        method = "POST" if "POST" in methods else "GET"
        # An unknown path under this one.
        reply = await worker.call(method, path.rstrip("/") + "/no-such-thing")
        assert reply.status == 404, (path, reply)
        assert "no-such-thing" in reply.error().message
        # A method the route does not have: 405 with its Allow header kept.
        reply = await worker.call("PUT", path)
        assert reply.status == 405, (path, reply)
        assert "PUT" in reply.error().message
        assert set(reply.headers["Allow"].split(",")) >= {m for m in methods if m != "*"}
        # A body over max_message_bytes.
        reply = await worker.call(method, path, data=oversized)
        assert reply.status == 413, (path, reply)
        assert str(limit) in reply.error().message
        # A wrong token (the probes and /metrics are open).
        reply = await worker.call(
            method, path, headers={"Authorization": "Bearer nope", "Origin": ORIGIN}
        )
        if is_open_path(canonical) or path == METRICS_PATH:
            assert reply.status < 400 or canonical != path, (path, reply)  # {param}: may 404
        else:
            assert reply.status == 401, (path, reply)
            assert reply.error().message == "unauthorized"
            assert reply.headers["WWW-Authenticate"] == "Bearer"
        # The route's own errors (no stream to stop, empty start, unknown camera ...).
        reply = await worker.call(method, path, data=b"{}" if method == "POST" else None)
        if reply.status >= 400 and not is_open_path(canonical):
            reply.error()


async def test_an_unhandled_exception_is_a_json_500_without_its_details(
    worker: Worker,
) -> None:
    reply = await worker.call("GET", BOOM_PATH)
    assert reply.status == 500
    assert reply.error().message == "internal error"
    assert "secret" not in reply.text
    assert (await worker.call("GET", "/health/live")).status == 200


# --------------------------------------------------------------------------- bodies

#: Bodies that used to answer 500 (issue 11): each must be a 4xx in the error shape.
START = '{"gateway_request_id": "g", "params": %s}'
MALFORMED: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("invalid UTF-8", b'{"gateway_request_id": "\xff\xfe"}', {}, 400, "not valid utf-8"),
    ("deep nesting", b"[" * 100_000, {}, 400, "nested more than"),
    ("deep nesting in params", (START % ("[" * 5000)).encode(), {}, 400, "nested more than"),
    (
        "a 5000-digit integer",
        (START % ('{"target_fps": %s}' % ("9" * 5000))).encode(),
        {},
        400,
        "more than",
    ),
    ("a huge exponent", (START % '{"target_fps": 1e999}').encode(), {}, 400, "out of range"),
    ("NaN", (START % '{"target_fps": NaN}').encode(), {}, 400, "NaN"),
    (
        "an unknown charset",
        b'{"gateway_request_id": "g"}',
        {"Content-Type": "application/json; charset=bogus"},
        415,
        "bogus",
    ),
    (
        "a codec that is not a text encoding",
        b'{"gateway_request_id": "g"}',
        {"Content-Type": "application/json; charset=rot13"},
        415,
        "rot13",
    ),
    (
        "a NUL byte in model_url",
        (START % '{"model_url": "http://127.0.0.1/a\\u0000.mpta"}').encode(),
        {},
        400,
        "Invalid params: model_url: must not contain control characters",
    ),
    (
        "a newline in gateway_request_id",
        b'{"gateway_request_id": "g\\nINFO forged log line"}',
        {},
        400,
        "gateway_request_id: must not contain control characters",
    ),
    (
        "a control character in a channel URL",
        b'{"gateway_request_id": "g", "events_url": "http://127.0.0.1:1/e\\u0007"}',
        {},
        400,
        "events_url: must not contain control characters",
    ),
    (
        "a class name with a NUL",
        (START % '{"trigger_classes": ["car\\u0000"]}').encode(),
        {},
        400,
        "Invalid params: trigger_classes.0: must not contain control characters",
    ),
]


@pytest.mark.parametrize(
    ("body", "headers", "code", "fragment"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
@pytest.mark.parametrize("path", ["/api/stream/start", "/stream/params"])
async def test_malformed_bodies_are_4xx_and_change_no_state(
    worker: Worker, path: str, body: bytes, headers: dict[str, str], code: int, fragment: str
) -> None:
    before = await worker.health()
    assert before[0] == 200 and '"IDLE"' in before[1], before
    reply = await worker.call("POST", path, headers={**AUTH, **headers}, data=body)
    assert 400 <= reply.status < 500, reply
    message = reply.error().message
    # The body is read before anything else on these routes; the fields are validated by
    # start (params answers "no active stream" first).
    if path.endswith("/start") or "control characters" not in fragment:
        assert reply.status == code, reply
        assert fragment.lower() in message.lower(), message
    assert await worker.health() == before
    assert (await worker.call("GET", "/health/live")).status == 200


@pytest.mark.parametrize(
    "body",
    [b"stream ended", b"", b"{}", b"\xff\xfe not json", b'{"reason": "gateway gone"}'],
    ids=["go-livepeer-text", "empty", "pytrickle-json", "binary", "json-object"],
)
async def test_stop_stops_whatever_its_body(demo_worker: Worker, body: bytes) -> None:
    # go-livepeer's orchestrator forwards the gateway's reason as a plain-text body; a stop
    # refused for its body would leave the stream running.
    worker = demo_worker
    reply = await worker.call("POST", "/stream/start", data=b'{"gateway_request_id": "held"}')
    assert reply.status == 200, reply
    headers = {**AUTH, "Content-Type": "text/plain"}
    reply = await worker.call("POST", "/stream/stop", headers=headers, data=body)
    assert reply.status == 200, reply
    assert '"IDLE"' in (await worker.health())[1]
    reply = await worker.call("POST", "/api/stream/stop", headers=headers, data=body)
    assert reply.status == 400 and "No active stream to stop" in reply.error().message, reply


async def test_a_rejected_params_update_leaves_the_running_stream_alone(
    demo_worker: Worker,
) -> None:
    worker = demo_worker
    # A stream with no channels (no media I/O) holds the slot; the update's string fields
    # are validated like the start's.
    reply = await worker.call("POST", "/stream/start", data=b'{"gateway_request_id": "held"}')
    assert reply.status == 200, reply
    before = await worker.health()
    assert '"OK"' in before[1]
    for update, field in [
        ('{"model_url": "a\\u0000b"}', "model_url"),
        ('{"trigger_classes": ["\\u001b[31mred"]}', "trigger_classes.0"),
        ('{"min_confidence": "0.5"}', "min_confidence"),
        ('{"annotate": 1}', "annotate"),
        ('{"max_framerate": "3O"}', "max_framerate"),
        ('{"max_framerate": 29.97}', "max_framerate"),
        ('{"max_framerate": true}', "max_framerate"),
    ]:
        reply = await worker.call("POST", "/stream/params", data=update.encode())
        assert reply.status == 400, (update, reply)
        assert reply.error().message.startswith(f"Invalid params: {field}:"), reply
        assert await worker.health() == before
    reply = await worker.call("POST", "/stream/stop")
    assert reply.status == 200, reply


async def test_declared_charsets_are_honoured(demo_worker: Worker) -> None:
    worker = demo_worker
    body = '{"gateway_request_id": "caf\u00e9"}'.encode("latin-1")
    headers = {**AUTH, "Content-Type": "application/json; charset=latin-1"}
    reply = await worker.call("POST", "/stream/start", headers=headers, data=body)
    assert reply.status == 200, reply
    assert json.loads(reply.text)["request_id"] == "caf\u00e9"
    assert (await worker.call("POST", "/stream/stop")).status == 200
