"""The StreamServer REST API on a real aiohttp app: every route and every error code."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from processors.mpta_detector import MptaDetectorProcessor
from processors.passthrough import PassthroughProcessor
from pytrickle_worker import __version__
from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.frontdoors.streamserver import (
    IdleSession,
    StartRequest,
    StreamManager,
    StreamState,
    attach,
    health_response,
)
from pytrickle_worker.processing import FrameProcessor

PREFIXES = ["/api", ""]
URLS = {
    "subscribe_url": "http://127.0.0.1:3389/abc",
    "publish_url": "http://127.0.0.1:3389/abc-out",
    "control_url": "http://127.0.0.1:3389/abc-control",
    "events_url": "http://127.0.0.1:3389/abc-events",
    "data_url": "http://127.0.0.1:3389/abc-data",
}

#: /health while a stream runs and its input is not stalled.
OK_HEALTH = {"version": __version__, "status": "OK", "healthy": True, "input_stalled": False}

MakeClient = Callable[[StreamManager], Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """An app like the lead's: our routes attached, /health merged from the manager."""
    clients: list[Client] = []

    async def make(manager: StreamManager) -> Client:
        app = web.Application()
        attach(app, manager)

        async def health(_request: web.Request) -> web.Response:
            return health_response(manager, {"version": __version__})

        app.router.add_get("/health", health)
        client: Client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def passthrough(make_client: MakeClient) -> tuple[Client, StreamManager]:
    manager = StreamManager(PassthroughProcessor(), session_factory=IdleSession)
    client = await make_client(manager)
    await manager.wait_loaded()
    return client, manager


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[PipelineService]:
    config = WorkerConfig(cache_dir=tmp_path / "cache", execution_provider="cpu")
    async with PipelineService(config) as svc:
        yield svc


async def call(
    client: Client, method: str, path: str, body: object = None, raw: str | None = None
) -> tuple[int, dict[str, Any]]:
    if raw is not None:
        response = await client.request(method, path, data=raw)
    elif body is None:
        response = await client.request(method, path)
    else:
        response = await client.request(method, path, json=body)
    return response.status, await response.json()


def start_body(stream_id: str = "stream-1", **params: Any) -> dict[str, Any]:
    return {"gateway_request_id": stream_id, "params": params}


def assert_error(status: int, body: dict[str, Any], code: int, *fragments: str) -> None:
    assert status == code, body
    assert body["status"] == "error"
    for fragment in fragments:
        assert fragment in body["message"], body["message"]


# --------------------------------------------------------------------------- start / stop


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_start_status_stop(passthrough: tuple[Client, StreamManager], prefix: str) -> None:
    client, manager = passthrough
    status, body = await call(client, "GET", f"{prefix}/stream/status")
    assert status == 200
    assert body["state"] == "IDLE" and body["active_streams"] == 0
    # pytrickle's get_pipeline_state() fields, for clients written against it
    assert body["status"] == body["pipeline_state"] == "IDLE"
    assert body["additional_info"] == {"draining": False}
    assert body["pipeline_ready"] is True and body["startup_complete"] is True
    assert body["current_params"] == {} and body["stream"] is None

    status, body = await call(
        client, "POST", f"{prefix}/stream/start", start_body(width=704, height=384, intensity=0.7)
    )
    assert status == 200, body
    assert body["status"] == "success" and body["request_id"] == "stream-1"
    assert body["message"] == "Stream started successfully"
    assert body["current_state"]["state"] == "OK"
    assert manager.state is StreamState.OK

    status, body = await call(client, "GET", f"{prefix}/stream/status")
    assert status == 200
    assert body["state"] == "OK"
    assert body["active_streams"] == 1 and body["client_active"] is True
    assert body["fps"] == {"input_fps": 0.0, "output_fps": 0.0, "processing_fps": 0.0}
    assert body["current_params"] == {
        "gateway_request_id": "stream-1",
        "params": {"width": 704, "height": 384, "intensity": 0.7},
    }
    assert body["stream"]["gateway_request_id"] == "stream-1"
    assert body["stream"]["uptime_s"] >= 0
    assert body["session"]["kind"] == "idle"

    status, body = await call(client, "POST", f"{prefix}/stream/stop")
    assert (status, body) == (200, {"status": "success", "message": "Stream stopped successfully"})
    assert manager.state is StreamState.IDLE
    status, body = await call(client, "POST", f"{prefix}/stream/stop", {})
    assert_error(status, body, 400, "No active stream to stop")


async def test_live_video_to_video_alias_and_status_masks_urls(
    passthrough: tuple[Client, StreamManager],
) -> None:
    client, _ = passthrough
    urls = dict(URLS, subscribe_url="http://user:hunter2@127.0.0.1:3389/abc?token=s3cret")
    body = {**urls, "gateway_request_id": "lv2v", "manifest_id": "ignored", "params": None}
    status, reply = await call(client, "POST", "/live-video-to-video", body)
    assert status == 200, reply
    assert reply["request_id"] == "lv2v"
    status, reply = await call(client, "GET", "/stream/status")
    current = reply["current_params"]
    assert current["gateway_request_id"] == "lv2v"
    assert current["subscribe_url"] == "http://user:***@127.0.0.1:3389/abc?token=***"
    assert current["publish_url"] == URLS["publish_url"]
    assert current["data_url"] == URLS["data_url"]
    assert "hunter2" not in str(reply) and "s3cret" not in str(reply)
    assert reply["stream"]["subscribe_url"] == current["subscribe_url"]


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"params": {}}, ["gateway_request_id", "Field required"]),
        ({"gateway_request_id": ""}, ["gateway_request_id"]),
        ({"gateway_request_id": 7}, ["gateway_request_id", "valid string"]),
        (start_body(width=704), ["params.height", "together"]),
        (start_body(height=384), ["params.width", "together"]),
        (start_body(max_framerate=0), ["params.max_framerate", "greater than or equal to 1"]),
        (start_body(max_framerate=61), ["params.max_framerate", "less than or equal to 60"]),
        (start_body(max_framerate="fast"), ["params.max_framerate", "valid integer"]),
        (start_body(width="wide", height=384), ["params.width", "valid integer"]),
        (start_body(width=-4, height=384), ["params.width", "greater than 0"]),
        (start_body(width=True, height=384), ["params.width", "not a boolean"]),
        (start_body(width=704.5, height=384), ["params.width", "valid integer"]),
        # pytrickle's int() where it is exact; not a fraction, an exponent or other text.
        (start_body(max_framerate=30.5), ["params.max_framerate", "valid integer"]),
        (start_body(width="7e2", height=384), ["params.width", "valid integer"]),
        (start_body(width="1" * 12, height=384), ["params.width", "valid integer"]),
        (start_body(width="\u0663\u0660\u0660", height=384), ["params.width", "valid integer"]),
        (start_body(detect_out_resolution="maybe"), ["params.detect_out_resolution", "'yes'"]),
        (start_body(detect_out_resolution=2), ["params.detect_out_resolution", "boolean"]),
        (start_body(detect_out_resolution="\x1cyes"), ["params.detect_out_resolution", "'yes'"]),
        (start_body(detect_out_resolution=1.0), ["params.detect_out_resolution", "boolean"]),
        ({"gateway_request_id": "x", "params": [1, 2]}, ["params", "valid dictionary"]),
        ({"gateway_request_id": "x", "subscribe_url": "ftp://h/x"}, ["subscribe_url", "http(s)"]),
        ({"gateway_request_id": "x", "data_url": 5}, ["data_url"]),
        ([1, 2], ["JSON object"]),
    ],
)
async def test_start_rejects_bad_requests(
    passthrough: tuple[Client, StreamManager], body: object, fragments: list[str]
) -> None:
    client, manager = passthrough
    status, reply = await call(client, "POST", "/stream/start", body)
    assert_error(status, reply, 400, *fragments)
    assert manager.state is StreamState.IDLE  # a client mistake changes no state


async def test_start_rejects_non_json_and_reads_stream_params_as_pytrickle(
    passthrough: tuple[Client, StreamManager],
) -> None:
    client, manager = passthrough
    status, reply = await call(client, "POST", "/api/stream/start", raw="{not json")
    assert_error(status, reply, 400, "not valid JSON")
    status, reply = await call(client, "POST", "/api/stream/start", raw="")
    assert_error(status, reply, 400, "JSON object")
    # Every bad field is named at once, and nothing starts.
    body = start_body(width=True, height=384.5, max_framerate="fast")
    status, reply = await call(client, "POST", "/api/stream/start", body)
    assert_error(status, reply, 400, "params.width", "params.height", "params.max_framerate")
    assert manager.state is StreamState.IDLE
    # pytrickle coerces these with int() (and reads yes/no for the flag): a gateway passing
    # its user's params as text is served, and the status shows the values as numbers.
    body = start_body(width="704", height=384.0, max_framerate=" 30 ", detect_out_resolution="No")
    status, reply = await call(client, "POST", "/api/stream/start", body)
    assert status == 200, reply
    _, status_body = await call(client, "GET", "/api/stream/status")
    params = status_body["current_params"]["params"]
    assert params == {
        "width": 704,
        "height": 384,
        "max_framerate": 30,
        "detect_out_resolution": False,
    }
    # The same size again, as text, is no change; another is refused by name.
    status, reply = await call(
        client, "POST", "/api/stream/params", {"width": "704", "height": 384}
    )
    assert status == 200, reply
    status, reply = await call(client, "POST", "/api/stream/params", {"width": 640, "height": 384})
    assert_error(status, reply, 400, "width: cannot be changed while a stream runs")


async def test_start_while_active_or_starting_is_503(
    passthrough: tuple[Client, StreamManager],
) -> None:
    client, _ = passthrough
    replies = await asyncio.gather(
        call(client, "POST", "/stream/start", start_body("a")),
        call(client, "POST", "/stream/start", start_body("b")),
    )
    codes = sorted(code for code, _ in replies)
    assert codes == [200, 503], replies
    status, reply = await call(client, "POST", "/api/stream/start", start_body("c"))
    assert_error(status, reply, 503, "Pipeline is still in use")
    status, reply = await call(client, "POST", "/live-video-to-video", start_body("d"))
    assert_error(status, reply, 503, "in use")


async def test_start_while_loading_waits_for_the_load_and_health_reports_loading(
    service: PipelineService, make_client: MakeClient, demo_assets: DemoAssets
) -> None:
    # The default archive comes from a model server that answers only when told to.
    release = asyncio.Event()

    async def archive(_request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(body=demo_assets.mpta_path.read_bytes())

    model_app = web.Application()
    model_app.router.add_get("/demo.mpta", archive)
    model_server = TestServer(model_app)
    await model_server.start_server()
    try:
        url = str(model_server.make_url("/demo.mpta"))
        manager = StreamManager(MptaDetectorProcessor(service, default_model_url=url))
        client = await make_client(manager)
        assert manager.state is StreamState.LOADING

        # A load that outlasts the start's wait: 503, and nothing starts.
        manager.start_waits_for_load_s = 0.2
        status, reply = await call(client, "POST", "/stream/start", start_body())
        assert_error(status, reply, 503, "still initializing")
        assert manager.state is StreamState.LOADING
        assert await call(client, "GET", "/health") == (
            200,
            {"version": __version__, "status": "LOADING", "healthy": True},
        )
        status, reply = await call(client, "GET", "/health/ready")
        assert (status, reply) == (503, {"status": "LOADING", "ready": False})
        assert (await call(client, "GET", "/health/live"))[0] == 200
        _, reply = await call(client, "GET", "/stream/status")
        assert reply["state"] == "LOADING" and reply["pipeline_ready"] is False
        assert reply["startup_complete"] is False

        # A start waiting for the load when its worker begins to drain: refused, not started.
        draining = StreamManager(MptaDetectorProcessor(service, default_model_url=url))
        draining.start_waits_for_load_s = 0.5
        draining_client = await make_client(draining)
        waiting = asyncio.create_task(call(draining_client, "POST", "/stream/start", start_body()))
        await asyncio.sleep(0.1)
        draining.begin_drain()
        status, reply = await waiting
        assert_error(status, reply, 503, "shutting down")
        assert not draining.active
        # As pytrickle's, a start waits for the load in progress, then starts.
        manager.start_waits_for_load_s = 30.0
        start = asyncio.create_task(call(client, "POST", "/stream/start", start_body()))
        await asyncio.sleep(0.3)
        assert not start.done() and manager.state is StreamState.LOADING
        release.set()
        status, reply = await start
        assert status == 200, reply
        assert (await call(client, "GET", "/health"))[1]["status"] == "OK"
        assert (await call(client, "GET", "/health/ready"))[0] == 200
    finally:
        release.set()
        await model_server.close()


# --------------------------------------------------------------------------- params


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_params_update(passthrough: tuple[Client, StreamManager], prefix: str) -> None:
    client, _ = passthrough
    status, reply = await call(client, "POST", f"{prefix}/stream/params", {"intensity": 1})
    assert_error(status, reply, 400, "No active stream to update")

    body = start_body(width=640, height=360, max_framerate=24, intensity=0.5)
    assert (await call(client, "POST", f"{prefix}/stream/start", body))[0] == 200
    status, reply = await call(
        client, "POST", f"{prefix}/stream/params", {"intensity": 0.9, "max_framerate": 12}
    )
    assert status == 200, reply
    assert reply["status"] == "success" and reply["message"] == "Parameters updated successfully"
    expected = {"width": 640, "height": 360, "max_framerate": 12, "intensity": 0.9}
    assert reply["params"] == expected
    _, status_body = await call(client, "GET", f"{prefix}/stream/status")
    assert status_body["current_params"]["params"] == expected
    assert status_body["session"]["params"]["max_framerate"] == 12  # the session got it

    # The same size again is accepted (gateways resend whole params objects).
    status, reply = await call(
        client, "POST", f"{prefix}/stream/params", {"width": 640, "height": 360}
    )
    assert status == 200, reply


@pytest.mark.parametrize(
    ("update", "fragments"),
    [
        ({"width": 800, "height": 600}, ["width: cannot be changed while a stream runs"]),
        ({"detect_out_resolution": False}, ["detect_out_resolution: cannot be changed"]),
        ({"width": 800}, ["height: required when width is given"]),
        ({"max_framerate": 0}, ["max_framerate", "greater than or equal to 1"]),
        ({"max_framerate": 61}, ["max_framerate", "less than or equal to 60"]),
        ({"max_framerate": "x"}, ["max_framerate", "valid integer"]),
        ([1], ["JSON object"]),
    ],
)
async def test_params_update_rejections(
    passthrough: tuple[Client, StreamManager], update: object, fragments: list[str]
) -> None:
    client, manager = passthrough
    body = start_body(width=640, height=360, detect_out_resolution=True)
    assert (await call(client, "POST", "/stream/start", body))[0] == 200
    status, reply = await call(client, "POST", "/stream/params", update)
    assert_error(status, reply, 400, *fragments)
    assert manager.state is StreamState.OK  # the stream goes on
    _, status_body = await call(client, "GET", "/stream/status")
    assert status_body["current_params"]["params"] == {
        "width": 640,
        "height": 360,
        "detect_out_resolution": True,
    }


async def test_params_rejected_by_the_processor(
    service: PipelineService, make_client: MakeClient, demo_assets: DemoAssets, tmp_path: Path
) -> None:
    manager = StreamManager(MptaDetectorProcessor(service))
    client = await make_client(manager)
    await manager.wait_loaded()

    # Bad processor params at start: 400, and the server stays IDLE (not ERROR).
    body = start_body(model_url=str(demo_assets.mpta_path), min_confidence=3)
    status, reply = await call(client, "POST", "/stream/start", body)
    assert_error(status, reply, 400, "min_confidence")
    assert manager.state is StreamState.IDLE
    status, reply = await call(client, "POST", "/stream/start", start_body())
    assert_error(status, reply, 400, "model_url: required")

    body = start_body(model_url=str(demo_assets.mpta_path), min_confidence=0.6)
    assert (await call(client, "POST", "/stream/start", body))[0] == 200
    missing = str(tmp_path / "missing.mpta")
    for update, fragment in [
        ({"min_confidence": 2}, "min_confidence: Input should be less than or equal to 1"),
        ({"trigger_classes": ["bus"]}, "trigger_classes: 'bus' not in the root model"),
        ({"threshold": 0.5}, "threshold: unknown parameter"),
        ({"model_url": missing, "min_confidence": 0.9}, "model_url: cannot load"),
    ]:
        status, reply = await call(client, "POST", "/stream/params", update)
        assert_error(status, reply, 400, fragment)
    _, status_body = await call(client, "GET", "/stream/status")
    params = status_body["current_params"]["params"]
    assert params["min_confidence"] == 0.6 and params["trigger_classes"] is None
    assert params["model_url"] == str(demo_assets.mpta_path)

    status, reply = await call(
        client, "POST", "/stream/params", {"min_confidence": 0.9, "trigger_classes": ["car"]}
    )
    assert status == 200, reply
    assert reply["params"]["min_confidence"] == 0.9
    assert reply["params"]["trigger_classes"] == ["car"]


# --------------------------------------------------------------------------- health, ERROR


async def test_health_codes_and_recovery_from_a_failed_model_load(
    service: PipelineService, make_client: MakeClient, demo_assets: DemoAssets, tmp_path: Path
) -> None:
    late = tmp_path / "late.mpta"  # the default archive is not there yet
    manager = StreamManager(MptaDetectorProcessor(service, default_model_url=str(late)))
    client = await make_client(manager)
    await manager.wait_loaded()

    assert manager.state is StreamState.ERROR
    status, reply = await call(client, "GET", "/health")
    assert status == 200  # in every state, as pytrickle's StreamServer
    assert reply["status"] == "ERROR" and "model failed to load" in reply["error_message"]
    assert reply["healthy"] is False
    assert (await call(client, "GET", "/health/ready"))[0] == 503
    assert (await call(client, "GET", "/health/live"))[0] == 200
    _, status_body = await call(client, "GET", "/stream/status")
    assert status_body["state"] == "ERROR" and status_body["pipeline_ready"] is False

    # A start retries the load; while the archive is missing it fails and ERROR stays.
    status, reply = await call(client, "POST", "/stream/start", start_body())
    assert_error(status, reply, 500, "Error starting stream", "model failed to load")
    assert manager.state is StreamState.ERROR

    shutil.copy(demo_assets.mpta_path, late)
    status, reply = await call(client, "POST", "/stream/start", start_body())
    assert status == 200, reply
    assert await call(client, "GET", "/health") == (200, OK_HEALTH)
    assert (await client.get("/stream/stop")).status == 405
    assert (await call(client, "POST", "/stream/stop"))[0] == 200
    assert (await call(client, "GET", "/health"))[1]["status"] == "IDLE"
    assert (await call(client, "GET", "/health/ready")) == (200, {"status": "IDLE", "ready": True})


async def test_a_failed_model_load_heals_in_the_background(
    service: PipelineService, make_client: MakeClient, demo_assets: DemoAssets, tmp_path: Path
) -> None:
    """An unready pod gets no start that would retry the load: it retries by itself. The
    model server answers 404 until the archive is there (a missing *local* path is a
    permanent error instead: tests/test_first_contact.py)."""
    late = tmp_path / "late.mpta"

    async def model_server(_request: web.Request) -> web.StreamResponse:
        if not late.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(late)

    models = web.Application()
    models.router.add_get("/late.mpta", model_server)
    models_client: Client = TestClient(TestServer(models, host="127.0.0.1"))
    await models_client.start_server()
    try:
        url = str(models_client.make_url("/late.mpta"))
        manager = StreamManager(MptaDetectorProcessor(service, default_model_url=url))
        manager.load_retry_initial_s = 0.05
        client = await make_client(manager)
        await manager.wait_loaded()
        assert manager.state is StreamState.ERROR
        assert (await call(client, "GET", "/health/ready"))[0] == 503
        await asyncio.sleep(0.3)  # a few retries fail while the archive is missing
        assert manager.state is StreamState.ERROR
        shutil.copy(demo_assets.mpta_path, late)

        def state() -> StreamState:  # a call: pyright narrowed manager.state to ERROR above
            return manager.state

        for _ in range(200):
            if state() is StreamState.IDLE:
                break
            await asyncio.sleep(0.05)
        assert state() is StreamState.IDLE and manager.error_message is None
        assert (await call(client, "GET", "/health/ready")) == (
            200,
            {"status": "IDLE", "ready": True},
        )
    finally:
        await models_client.close()


async def test_failed_session_start_is_error_and_the_next_start_recovers(
    make_client: MakeClient,
) -> None:
    # No media session support is configured: a start with channel URLs cannot work.
    processor = PassthroughProcessor()
    manager = StreamManager(processor)
    client = await make_client(manager)
    await manager.wait_loaded()

    status, reply = await call(client, "POST", "/stream/start", {**URLS, "gateway_request_id": "a"})
    assert_error(status, reply, 500, "Error starting stream", "no media session support")
    assert manager.state is StreamState.ERROR and not manager.active
    health_status, health = await call(client, "GET", "/health")
    # 200 in ERROR too, as pytrickle answers: the body says ERROR and healthy false.
    assert health_status == 200 and health["status"] == "ERROR" and health["healthy"] is False
    # The model is loaded: still ready, so the next start (which clears ERROR) can arrive.
    assert (await call(client, "GET", "/health/ready"))[0] == 200
    # The status says what pytrickle's does in ERROR: the pipeline is not ready.
    _, status_body = await call(client, "GET", "/stream/status")
    assert status_body["state"] == "ERROR" and status_body["pipeline_ready"] is False

    status, reply = await call(client, "POST", "/stream/start", start_body("b"))
    assert status == 200, reply
    assert (await call(client, "GET", "/health"))[0] == 200
    _, status_body = await call(client, "GET", "/stream/status")
    assert status_body["error_message"] is None and status_body["pipeline_ready"] is True


class InputLostSession(IdleSession):
    """An IdleSession whose input can be made to fail, as a trickle 404 would."""

    def __init__(self, request: StartRequest, processor: FrameProcessor) -> None:
        super().__init__(request, processor)
        self.lost = asyncio.Event()

    async def wait_closed(self) -> None:
        closed = asyncio.ensure_future(super().wait_closed())
        lost = asyncio.ensure_future(self.lost.wait())
        done, pending = await asyncio.wait({closed, lost}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if lost in done:
            raise ConnectionError("subscribe channel returned 404")


async def test_sessions_that_end_on_their_own_free_the_slot(make_client: MakeClient) -> None:
    sessions: list[InputLostSession] = []

    def factory(request: StartRequest, processor: FrameProcessor) -> InputLostSession:
        sessions.append(InputLostSession(request, processor))
        return sessions[-1]

    manager = StreamManager(PassthroughProcessor(), session_factory=factory)
    client = await make_client(manager)
    await manager.wait_loaded()

    async def settle(state: StreamState) -> None:
        for _ in range(100):
            if manager.state is state and not manager.active:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"state {manager.state}, active {manager.active}")

    # The input ends cleanly: back to IDLE.
    assert (await call(client, "POST", "/stream/start", {**URLS, "gateway_request_id": "a"}))[
        0
    ] == 200
    await sessions[0].stop()
    await settle(StreamState.IDLE)

    # The input dies: ERROR (on /health, still 200), and the next start is accepted.
    assert (await call(client, "POST", "/stream/start", {**URLS, "gateway_request_id": "b"}))[
        0
    ] == 200
    sessions[1].lost.set()
    await settle(StreamState.ERROR)
    status, reply = await call(client, "GET", "/health")
    assert status == 200 and reply["status"] == "ERROR"
    assert "subscribe channel returned 404" in reply["error_message"]
    assert (await call(client, "POST", "/stream/start", {**URLS, "gateway_request_id": "c"}))[
        0
    ] == 200
    assert (await call(client, "GET", "/health")) == (200, OK_HEALTH)


# --------------------------------------------------------------------------- info routes


async def test_version_and_hardware(passthrough: tuple[Client, StreamManager]) -> None:
    client, manager = passthrough
    status, reply = await call(client, "GET", "/version")
    assert status == 200
    assert reply == {
        "pipeline": manager.pipeline,
        "model_id": manager.model_id,
        "version": __version__,
    }
    assert (await call(client, "GET", "/app-version")) == (200, {"version": __version__})

    status, info = await call(client, "GET", "/hardware/info")
    assert status == 200
    assert set(info) == {"pipeline", "model_id", "gpu_info"}
    gpus: dict[str, dict[str, Any]] = info["gpu_info"]
    for gpu in gpus.values():  # empty on a host without a GPU
        assert set(gpu) == {"id", "name", "memory_total", "memory_free", "major", "minor"}

    status, stats = await call(client, "GET", "/hardware/stats")
    assert status == 200
    assert set(stats) == {"pipeline", "model_id", "gpu_stats"}
    gpu_stats: dict[str, dict[str, Any]] = stats["gpu_stats"]
    assert set(gpu_stats) == set(gpus)
    for gpu in gpu_stats.values():
        assert set(gpu) == {
            "id",
            "name",
            "memory_total",
            "memory_free",
            "utilization_compute",
            "utilization_memory",
        }


async def test_version_names_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE", "video-analytics")
    monkeypatch.setenv("CAPABILITY_NAME", "mpta-detector")
    manager = StreamManager(PassthroughProcessor())
    assert manager.version_info() == {
        "pipeline": "video-analytics",
        "model_id": "mpta-detector",
        "version": __version__,
    }


async def test_wrong_methods(passthrough: tuple[Client, StreamManager]) -> None:
    client, _ = passthrough
    for method, path in [
        ("GET", "/stream/start"),
        ("GET", "/api/stream/params"),
        ("POST", "/stream/status"),
        ("POST", "/version"),
    ]:
        response = await client.request(method, path)
        assert response.status == 405, (method, path)
