"""The CMS test harness: a real worker app on 127.0.0.1, real WebSocket backends, an MPTA
file server and the RTSP camera playing the demo sample. Registered as a pytest plugin in
``tests/conftest.py``, so its fixtures (``start_worker``, ``model_server``, ``camera``) serve
every CMS test module.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestServer
from yarl import URL

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.frontdoors.cms.backends import BackendConnection
from pytrickle_worker.frontdoors.cms.endpoint import CmsEndpoint
from pytrickle_worker.server.app import CMS_KEY, SERVICE_KEY, create_app
from tests.helpers import RedisProcess
from tests.media_fixtures import RtspServer

Message = dict[str, Any]

#: The two halves of the 640x360 sample: the car drives in UPPER, the truck in LOWER.
UPPER = {"cropX1": 0, "cropY1": 0, "cropX2": 640, "cropY2": 180}
LOWER = {"cropX1": 0, "cropY1": 180, "cropX2": 640, "cropY2": 360}
ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
STATE_KEYS = {"type", "cpuUsage", "memoryUsage", "gpuUsage", "gpuMemoryUsage", "cameraConnections"}

#: Opening the file-fed RTSP stream takes up to ~3 s (the server waits for a key frame, every
#: 2 s in the sample, before it answers DESCRIBE; then FFmpeg probes 1 s). ``stall_timeout_s``
#: also bounds each read, so it must exceed that DESCRIBE latency, with room for a loaded
#: machine, or the reader times out before the stream ever starts (a 1.5 s value never
#: connects). A killed camera is noticed at once anyway: its TCP connection closes.
ONLINE_TIMEOUT_S = 12.0
BASE_CONFIG: dict[str, Any] = {
    "execution_provider": "cpu",
    "heartbeat_interval_s": 0.5,
    "disconnect_grace_s": 30.0,
    "stall_timeout_s": 5.0,
    "reconnect_interval_sec": 0.5,
    "hw_decode": "off",
    "log_level": "WARNING",
}


# ----------------------------------------------------------------------------- servers


@dataclass
class ModelServer:
    """Serves the demo MPTA (and broken ones) over HTTP; counts requests per name."""

    base: str
    requests: Counter[str] = field(default_factory=Counter[str])
    #: ``held.mpta`` is the demo archive, served once this is set (a slow model server).
    release_held: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, name: str = "demo.mpta") -> str:
        return f"{self.base}/models/{name}"


@pytest.fixture
async def model_server(demo_assets: DemoAssets, tmp_path: Path) -> AsyncIterator[ModelServer]:
    not_zip = tmp_path / "notzip.mpta"
    not_zip.write_bytes(b"this is plain text, not a zip archive\n" * 20)
    files = {"demo.mpta": demo_assets.mpta_path, "notzip.mpta": not_zip}
    server = ModelServer(base="")

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        server.requests[name] += 1
        if name == "held.mpta":
            await server.release_held.wait()
            name = "demo.mpta"
        path = files.get(name)
        if path is None:
            raise web.HTTPNotFound()
        response = web.FileResponse(path)
        # No keep-alive: a socket still open after a test is then the worker's, not a pooled
        # connection to this server (the fd baselines of the ordering and fuzz tests).
        response.force_close()
        return response

    app = web.Application()
    app.router.add_get("/models/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


@pytest.fixture
def camera(rtsp_server_factory: Callable[..., RtspServer], demo_assets: DemoAssets) -> RtspServer:
    """The RTSP test server playing the demo sample.mp4 (looped, real time)."""
    return rtsp_server_factory(source="file", file=demo_assets.video_path)


# ----------------------------------------------------------------------------- backend client


class Backend:
    """A CMS backend: a real WebSocket client that records every message the worker sends."""

    def __init__(self, ws: ClientWebSocketResponse, session: ClientSession) -> None:
        self.ws = ws
        self.session = session
        self.messages: list[Message] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is WSMsgType.TEXT:
                self.messages.append(json.loads(message.data))
                self._arrived.set()
        self._arrived.set()

    def mark(self) -> int:
        """The index of the next message: pass it as ``after=`` to wait for newer ones."""
        return len(self.messages)

    async def send(self, kind: str, payload: Any = None) -> None:
        message: Message = {"type": kind}
        if payload is not None:
            message["payload"] = payload
        await self.ws.send_json(message)

    async def wait_for(
        self,
        predicate: Callable[[Message], bool],
        *,
        after: int = 0,
        timeout: float = 10.0,  # noqa: ASYNC109 - a deadline for the whole wait
        what: str = "message",
    ) -> Message:
        """The first message at index >= ``after`` that satisfies ``predicate``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        index = after
        while True:
            while index < len(self.messages):
                message = self.messages[index]
                index += 1
                if predicate(message):
                    return message
            remaining = deadline - loop.time()
            if self.ws.closed:
                raise AssertionError(f"connection closed while waiting for {what}")
            if remaining <= 0:
                tail = [_brief(m) for m in self.messages[-6:]]
                raise AssertionError(f"no {what} within {timeout} s; last messages: {tail}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                continue

    async def next_error(self, after: int, timeout: float = 10.0) -> Message:  # noqa: ASYNC109
        return await self.wait_for(is_error, after=after, timeout=timeout, what="error reply")

    async def wait_online(self, identifier: str, *, after: int = 0, online: bool = True) -> Message:
        return await self.wait_for(
            lambda m: connection_of(m, identifier).get("online") is online,
            after=after,
            timeout=ONLINE_TIMEOUT_S,
            what=f"stateReport with {identifier} online={online}",
        )

    async def detections(
        self,
        identifier: str,
        count: int,
        *,
        after: int = 0,
        timeout: float = ONLINE_TIMEOUT_S,  # noqa: ASYNC109
        where: Callable[[Message], bool] = lambda _: True,
    ) -> list[Message]:
        """Wait for ``count`` imageDetections of ``identifier`` (at index >= after) matching
        ``where``; returns them in order."""
        found: list[Message] = []
        index = after
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(found) < count:
            message = await self.wait_for(
                lambda m: is_detection(m, identifier) and where(m),
                after=index,
                timeout=max(0.01, deadline - loop.time()),
                what=f"imageDetection #{len(found) + 1} of {identifier}",
            )
            index = self.messages.index(message, index) + 1
            found.append(message)
        return found

    def since(self, after: int) -> list[Message]:
        return self.messages[after:]

    async def close(self) -> None:
        if not self.ws.closed:
            await asyncio.wait_for(self.ws.close(), 10)
        await asyncio.wait_for(self._reader, 10)
        await self.session.close()


def _brief(message: Message) -> str:
    text = json.dumps(message)
    return text if len(text) < 300 else text[:300] + "…"


def is_state(message: Message) -> bool:
    return message.get("type") == "stateReport"


def is_error(message: Message) -> bool:
    return message.get("type") == "error"


def is_detection(message: Message, identifier: str | None = None) -> bool:
    return message.get("type") == "imageDetection" and (
        identifier is None or message.get("subscriptionIdentifier") == identifier
    )


def connection_of(message: Message, identifier: str) -> dict[str, Any]:
    """The cameraConnections entry for ``identifier`` in a stateReport, else {}."""
    if not is_state(message):
        return {}
    for entry in message["cameraConnections"]:
        if entry["subscriptionIdentifier"] == identifier:
            return entry
    return {}


def detection_class(message: Message) -> str:
    return str(message["data"]["detection"]["class"])


def subscribe_payload(
    identifier: str, rtsp_url: str, model_url: str, **extra: Any
) -> dict[str, Any]:
    return {
        "subscriptionIdentifier": identifier,
        "rtspUrl": rtsp_url,
        "modelUrl": model_url,
        "modelName": "Vehicle Identification",
        "modelId": 201,
        **extra,
    }


# ----------------------------------------------------------------------------- worker


@dataclass
class Worker:
    app: web.Application
    server: TestServer
    config: WorkerConfig
    http: ClientSession
    backends: list[Backend] = field(default_factory=list[Backend])

    @property
    def cms(self) -> CmsEndpoint:
        return self.app[CMS_KEY]

    @property
    def service(self) -> PipelineService:
        return self.app[SERVICE_KEY]

    def url(self, path: str) -> URL:
        """``path`` sent exactly as written (no re-quoting of %3B and the like)."""
        return URL(str(self.server.make_url("")).rstrip("/") + path, encoded=True)

    async def connect(self, session: ClientSession | None = None) -> Backend:
        session = session or ClientSession()
        ws = await session.ws_connect(self.url("/"), max_msg_size=0)
        backend = Backend(ws, session)
        self.backends.append(backend)
        return backend

    async def get(self, path: str) -> tuple[int, str, bytes]:
        async with self.http.get(self.url(path)) as response:
            return response.status, response.content_type, await response.read()

    def connection_objects(self) -> set[BackendConnection]:
        return set(self.cms.registry.connections)


WorkerFactory = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(tmp_path: Path, redis_server: RedisProcess) -> AsyncIterator[WorkerFactory]:
    """``await start_worker(**config_overrides)``: a running worker app on 127.0.0.1.

    The demo pipeline's Redis actions go to the test session's own Redis server, never to
    one that happens to listen on the machine's default port.
    """
    workers: list[Worker] = []

    async def start(**overrides: Any) -> Worker:
        config = WorkerConfig(
            cache_dir=tmp_path / "cache",
            **{**BASE_CONFIG, "redis_url": redis_server.url, **overrides},
        )
        app = create_app(config)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        worker = Worker(app, server, config, ClientSession())
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        for backend in worker.backends:
            await backend.close()
        await worker.http.close()
        await worker.server.close()


async def wait_until(predicate: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within} s: {what}")
        await asyncio.sleep(0.02)
