"""The live view end to end: a real worker app (or process), the RTSP camera playing the demo
sample, the demo MPTA, a real Redis server, real WebSocket clients.

* a CMS subscription's frames and detections land in its Redis Stream (maxlen, TTL, fields),
  and disappear after the stream ends;
* GET /labels, GET /labels/{label}/keys, push at about live_fps, pull/ping and every error;
* a StreamServer stream lands under "streams";
* a Redis outage: frames dropped and counted, detections unaffected, writing resumes;
* two worker processes on one Redis list each other's cameras.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.frontdoors.live.model import split_frame_message, stream_name
from pytrickle_worker.server.app import create_app
from pytrickle_worker.transport.trickle import TricklePublisher
from tests.cms_harness import ModelServer, Worker, WorkerFactory, subscribe_payload
from tests.helpers import RedisProcess
from tests.media_fixtures import RtspServer
from tests.test_cms_protocol import decode_jpeg
from tests.test_streaming_e2e import trickle_channels
from tests.test_streaming_media import synthetic_segments
from tests.worker_process import WorkerProcess

IDENTIFIER = "display-1;cam-1"
WAIT_S = 30.0
JPEG_SOI = b"\xff\xd8"


async def until(
    check: Callable[[], Awaitable[Any]], within: float = WAIT_S, what: str = "condition"
) -> Any:
    """Poll ``check`` until it returns something truthy; that value."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(0.1)


def _prefix(request: pytest.FixtureRequest) -> str:
    # One Redis serves the whole session: each test its own key names.
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
    return f"t-{digest}:"


async def _get(worker: Worker, path: str) -> tuple[int, Any]:
    async with worker.http.get(worker.url(path)) as response:
        return response.status, await response.json()


async def _subscribe(worker: Worker, camera: RtspServer, models: ModelServer) -> Any:
    backend = await worker.connect()
    await backend.send("subscribe", subscribe_payload(IDENTIFIER, camera.url, models.url()))
    return backend


async def test_cms_frames_and_detections_in_redis_streams_with_maxlen_and_ttl(
    camera: RtspServer,
    model_server: ModelServer,
    start_worker: WorkerFactory,
    redis_server: RedisProcess,
    request: pytest.FixtureRequest,
) -> None:
    prefix = _prefix(request)
    worker = await start_worker(
        live_key_prefix=prefix, live_maxlen=4, live_ttl_s=3.0, live_fps=4.0, worker_id="w-cms"
    )
    client = aioredis.Redis.from_url(redis_server.url)
    name = stream_name(prefix, "display-1", "cam-1")
    try:
        backend = await _subscribe(worker, camera, model_server)
        await backend.detections(IDENTIFIER, 1)

        async def with_a_detection() -> list[Any]:
            rows = await client.xrange(name)
            return [f for _, f in rows if json.loads(f[b"detection_items"])]

        fields = (await until(with_a_detection, what="an entry with detections"))[-1]
        assert fields[b"frame"].startswith(JPEG_SOI)
        image = decode_jpeg(fields[b"frame"])
        assert image.shape == (int(fields[b"height"]), int(fields[b"width"]), 3)
        assert (int(fields[b"source_width"]), int(fields[b"source_height"])) == (640, 360)
        assert fields[b"worker"] == b"w-cms" and fields[b"origin"] == b"cms"
        assert fields[b"online"] == b"1"
        assert abs(float(fields[b"capture_time"]) - time.time()) < 30
        [item] = json.loads(fields[b"detection_items"])
        assert set(item) == {"class", "confidence", "id", "bbox"}
        x1, y1, x2, y2 = item["bbox"]
        assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 360
        # MAXLEN (exact) and the TTL of every write.
        await until(lambda: _xlen_is(client, name, 4), what="xlen 4")
        await asyncio.sleep(1.0)
        assert await client.xlen(name) == 4
        assert 0 < await client.pttl(name) <= 3000
        [(_, newest)] = await client.xrevrange(name, count=1)
        assert 1.0 < float(newest[b"fps"]) <= 30.0  # the subscription's analysed rate

        # Unsubscribed: one last entry says offline, then the key expires with the TTL.
        await backend.send("unsubscribe", {"subscriptionIdentifier": IDENTIFIER})

        async def offline() -> bool:
            rows = await client.xrevrange(name, count=1)
            return bool(rows) and rows[0][1][b"online"] == b"0"

        await until(offline, what="the offline entry")
        await until(lambda: _gone(client, name), within=15, what="the key to expire")
    finally:
        await client.aclose()


async def _xlen_is(client: aioredis.Redis, name: str, length: int) -> bool:
    return await client.xlen(name) == length


async def _gone(client: aioredis.Redis, name: str) -> bool:
    return await client.exists(name) == 0


async def test_labels_keys_push_and_pull(
    camera: RtspServer,
    model_server: ModelServer,
    start_worker: WorkerFactory,
    request: pytest.FixtureRequest,
) -> None:
    worker = await start_worker(live_key_prefix=_prefix(request), live_fps=4.0, worker_id="w-1")
    await _subscribe(worker, camera, model_server)

    async def labelled() -> bool:
        status, body = await _get(worker, "/labels")
        assert status == 200, body
        return "display-1" in body["labels"]

    await until(labelled, what="display-1 in /labels")
    status, body = await _get(worker, "/labels/display-1/keys")
    assert status == 200, body
    assert body["label"] == "display-1"
    [key] = body["keys"]
    assert set(key) == {"key", "worker", "online", "fps", "capture_time", "id"}
    assert key["key"] == "cam-1" and key["worker"] == "w-1" and key["online"] is True
    assert await _get(worker, "/labels/nobody/keys") == (
        404,
        {"status": "error", "message": "unknown label 'nobody'"},
    )

    # Push: every new frame of the label, about live_fps per key.
    http = worker.http
    async with http.ws_connect(worker.url("/ws/labels/display-1"), protocols=("ptw.live",)) as ws:
        assert ws.protocol == "ptw.live"
        first = await ws.receive(timeout=10)  # the newest frame at once
        assert first.type == WSMsgType.BINARY
        head, jpeg = split_frame_message(first.data)
        header = json.loads(head)
        assert header["label"] == "display-1" and header["key"] == "cam-1"
        assert header["online"] is True and isinstance(header["detection_items"], list)
        assert jpeg.startswith(JPEG_SOI)
        assert decode_jpeg(jpeg).shape[:2] == (header["height"], header["width"])
        ids: list[str] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + 4.0
        while (left := end - loop.time()) > 0:
            try:
                message = await ws.receive(timeout=left)
            except TimeoutError:
                break
            assert message.type == WSMsgType.BINARY, message
            ids.append(json.loads(split_frame_message(message.data)[0])["id"])
        assert len(ids) == len(set(ids))  # each frame once
        assert 6 <= len(ids) <= 24, len(ids)  # 4 fps for 4 s, broadly: a loaded machine

    # An unknown label: one JSON error, then close 4404.
    async with http.ws_connect(worker.url("/ws/labels/nobody"), protocols=("ptw.live",)) as ws:
        message = await ws.receive(timeout=10)
        assert json.loads(message.data) == {
            "status": "error",
            "message": "unknown label 'nobody'",
            "error": "unknown label 'nobody'",  # where the reference's clients read it
        }
        closing = await ws.receive(timeout=10)
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        assert ws.close_code == 4404

    # Pull, ping and every wrong message; the socket stays open throughout.
    url = worker.url("/ws/stream/display-1/cam-1")
    async with http.ws_connect(url, protocols=("ptw.live",)) as ws:
        await ws.send_json({"action": "pull"})
        pulled = await ws.receive(timeout=10)
        assert pulled.type == WSMsgType.BINARY
        header = json.loads(split_frame_message(pulled.data)[0])
        assert header["key"] == "cam-1" and header["worker"] == "w-1"
        await ws.send_json({"action": "ping"})
        assert await ws.receive_json(timeout=10) == {"action": "pong"}
        problems = [
            ('{"action": "dance"}', 'unknown action "dance": expected "pull" or "ping"'),
            ("{not json", "message is not valid JSON"),
            ("[1, 2]", "message must be a JSON object"),
            ("{}", 'missing "action"'),
        ]
        for text, problem in problems:
            await ws.send_str(text)
            answer = await ws.receive_json(timeout=10)
            assert answer["status"] == "error" and problem in answer["message"], answer
            assert answer["error"] == answer["message"]  # the reference's clients read "error"
        await ws.send_bytes(b"\x00\x01")
        answer = await ws.receive_json(timeout=10)
        assert "binary messages are not accepted" in answer["message"], answer
        await ws.send_json({"action": "ping"})
        assert await ws.receive_json(timeout=10) == {"action": "pong"}
    async with http.ws_connect(
        worker.url("/ws/stream/display-1/nope"), protocols=("ptw.live",)
    ) as ws:
        await ws.send_json({"action": "pull"})
        assert await ws.receive_json(timeout=10) == {
            "status": "error",
            "message": "no frame for display-1/nope",
            "error": "no frame for display-1/nope",
        }


async def _pull_header(http: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    """The newest frame's header by the pull route, or None when there is none yet."""
    async with http.ws_connect(url, protocols=("ptw.live",)) as ws:
        await ws.send_json({"action": "pull"})
        message = await ws.receive(timeout=10)
    if message.type != WSMsgType.BINARY:
        return None
    head, jpeg = split_frame_message(message.data)
    assert jpeg.startswith(JPEG_SOI)
    return json.loads(head)


@pytest.mark.parametrize("store", ["redis", "memory"])
async def test_stream_door_frames_land_under_streams(
    tmp_path: Path,
    demo_assets: DemoAssets,
    redis_server: RedisProcess,
    request: pytest.FixtureRequest,
    store: str,
) -> None:
    """A StreamServer stream of the demo scene: its frames under label "streams", key = the
    gateway request id, in Redis Streams (or in memory without a Redis) and in the routes;
    an offline entry once it stops."""
    prefix = _prefix(request)
    request_id = "live-stream-1"
    config = WorkerConfig(
        cache_dir=tmp_path / "cache",
        execution_provider="cpu",
        hw_decode="off",
        live_redis_url=redis_server.url if store == "redis" else None,
        live_key_prefix=prefix,
        live_fps=5.0,
        worker_id="w-stream",
    )
    server = TestServer(create_app(config, str(demo_assets.mpta_path)), host="127.0.0.1")
    await server.start_server()
    client = aioredis.Redis.from_url(redis_server.url)
    name = stream_name(prefix, "streams", request_id)
    try:
        async with trickle_channels(request_id) as trickle, aiohttp.ClientSession() as http:
            base = str(server.make_url("")).rstrip("/")
            pull_url = f"{base}/ws/stream/streams/{request_id}"

            async def ready() -> bool:
                async with http.get(base + "/health/ready") as response:
                    return response.status == 200

            await until(ready, what="ready")
            start = {"gateway_request_id": request_id, "subscribe_url": trickle, "params": {}}
            async with http.post(base + "/api/stream/start", json=start) as response:
                assert response.status == 200, await response.text()
            publisher = TricklePublisher(trickle, "video/mp2t")
            for segment in synthetic_segments():
                await publisher.publish(segment)

            async def with_a_detection() -> dict[str, Any] | None:
                header = await _pull_header(http, pull_url)
                return header if header is not None and header["detection_items"] else None

            header = await until(with_a_detection, what="a stored detection")
            assert header["origin"] == "stream" and header["worker"] == "w-stream"
            assert header["label"] == "streams" and header["key"] == request_id
            async with http.get(base + "/labels/streams/keys") as response:
                body = await response.json()
            assert [k["key"] for k in body["keys"]] == [request_id], body
            if store == "redis":
                [(_, fields)] = await client.xrevrange(name, count=1)
                assert fields[b"origin"] == b"stream" and fields[b"frame"].startswith(JPEG_SOI)
            else:
                assert await client.exists(name) == 0  # nothing reached Redis
            async with http.post(base + "/api/stream/stop") as response:
                assert response.status == 200
            await publisher.close(delete=False)

            async def offline() -> bool:
                header = await _pull_header(http, pull_url)
                return header is not None and header["online"] is False

            await until(offline, what="the stream's offline entry after its stop")
    finally:
        await client.aclose()
        await server.close()


def _metric(text: str, name: str, labels: str = "") -> float:
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


async def test_redis_outage_drops_and_counts_frames_and_detections_go_on(
    camera: RtspServer,
    model_server: ModelServer,
    start_worker: WorkerFactory,
    private_redis: RedisProcess,
) -> None:
    worker = await start_worker(
        live_redis_url=private_redis.url,
        live_fps=5.0,
        live_retry_interval_s=0.5,
        emission="every_frame",
    )
    backend = await _subscribe(worker, camera, model_server)
    client = aioredis.Redis.from_url(private_redis.url)
    name = stream_name("stream_frame:", "display-1", "cam-1")

    async def metrics() -> str:
        async with worker.http.get(worker.url("/metrics")) as response:
            return await response.text()

    try:
        await until(lambda: client.exists(name), what="frames in Redis")
        private_redis.stop()
        await client.aclose()
        mark = backend.mark()

        async def dropped() -> bool:
            text = await metrics()
            return _metric(text, "ptw_live_frames_dropped_total", 'reason="store_unavailable"') >= 3

        await until(dropped, what="frames dropped while Redis is down")
        text = await metrics()
        assert _metric(text, "ptw_live_store_online", 'store="redis"') == 0.0
        assert _metric(text, "ptw_live_store_outages_total") == 1.0
        # The CMS protocol does not notice: detections keep coming.
        await backend.detections(IDENTIFIER, 5, after=mark)
        stored_before = _metric(text, "ptw_live_frames_stored_total")

        private_redis.start()  # same port
        client = aioredis.Redis.from_url(private_redis.url)

        async def resumed() -> bool:
            text = await metrics()
            return (
                _metric(text, "ptw_live_frames_stored_total") > stored_before
                and await client.exists(name) == 1
            )

        await until(resumed, within=15, what="writing to resume")
        assert _metric(await metrics(), "ptw_live_store_online", 'store="redis"') == 1.0
    finally:
        await client.aclose()


async def test_two_workers_on_one_redis_list_each_others_cameras(
    tmp_path: Path,
    demo_assets: DemoAssets,
    camera: RtspServer,
    private_redis: RedisProcess,
) -> None:
    workers = [
        WorkerProcess(
            tmp_path / name,
            "--no-demo",
            env={
                "PTW_LIVE_REDIS_URL": private_redis.url,
                "PTW_WORKER_ID": name,
                "PTW_HW_DECODE": "off",
                "PTW_LIVE_FPS": "2",
            },
        )
        for name in ("worker-a", "worker-b")
    ]
    for worker in workers:
        (tmp_path / worker.log_path.parent.name).mkdir(exist_ok=True)
        worker.start()
    try:
        async with aiohttp.ClientSession() as http:
            for worker, display in zip(workers, ("display-a", "display-b"), strict=True):
                await worker.wait_status("/health/ready", 200, within_s=60)
                ws = await http.ws_connect(worker.base + "/")
                payload = subscribe_payload(
                    f"{display};cam-1", camera.url, str(demo_assets.mpta_path)
                )
                await ws.send_json({"type": "subscribe", "payload": payload})

            async def both_listed(base: str) -> bool:
                async with http.get(base + "/labels") as response:
                    labels = (await response.json())["labels"]
                return {"display-a", "display-b"} <= set(labels)

            for worker in workers:
                await until(lambda w=worker: both_listed(w.base), what=f"{worker.base} lists both")
            for worker in workers:  # either worker tells which worker serves each key
                for display, owner in (("display-a", "worker-a"), ("display-b", "worker-b")):
                    async with http.get(f"{worker.base}/labels/{display}/keys") as response:
                        body = await response.json()
                    assert [(k["key"], k["worker"]) for k in body["keys"]] == [("cam-1", owner)]
    finally:
        for worker in workers:
            worker.stop()


async def test_viewer_sockets_and_pulls_are_bounded(
    start_worker: WorkerFactory, request: pytest.FixtureRequest
) -> None:
    """``live_max_viewers`` sockets at once (more: 503 before the upgrade), and a pull socket
    asks the store at most ``live_max_pulls_per_s`` times a second (faster: an error, no read,
    the socket stays open)."""
    worker = await start_worker(
        live_key_prefix=_prefix(request), live_max_viewers=2, live_max_pulls_per_s=2.0
    )
    http = worker.http
    url = worker.url("/ws/stream/d/k")
    async with (
        http.ws_connect(url, protocols=("ptw.live",)) as first,
        http.ws_connect(worker.url("/ws/labels/d"), protocols=("ptw.live",)),
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, protocols=("ptw.live",))
        assert refused.value.status == 503
        async with http.get(url) as reply:  # the same answer, readable as JSON
            assert reply.status == 503
            assert (await reply.json())["message"] == ("too many live viewers (limit 2); try later")
        no_frame = {"status": "error", "message": "no frame for d/k", "error": "no frame for d/k"}
        await first.send_json({"action": "pull"})
        assert await first.receive_json(timeout=10) == no_frame
        await first.send_json({"action": "pull"})
        too_fast = "pulling too fast: at most 2 pulls a second"
        assert await first.receive_json(timeout=10) == {
            "status": "error",
            "message": too_fast,
            "error": too_fast,
        }
        await asyncio.sleep(0.6)
        await first.send_json({"action": "pull"})
        assert await first.receive_json(timeout=10) == no_frame
    # Closed sockets free their places.
    await until(_viewers_below(worker, url), what="a socket place freed")


async def test_one_client_cannot_take_every_viewer_place(
    start_worker: WorkerFactory, request: pytest.FixtureRequest
) -> None:
    # Clients told apart by the trusted proxy header (the rate limiter's address): one that
    # holds its share is refused, the others still get in.
    worker = await start_worker(
        live_key_prefix=_prefix(request),
        live_max_viewers=10,
        live_max_viewers_per_client=2,
        rate_limit_trusted_header="X-Forwarded-For",
    )
    http = worker.http
    url = worker.url("/ws/stream/d/k")

    def connect(client: str) -> Any:
        return http.ws_connect(url, protocols=("ptw.live",), headers={"X-Forwarded-For": client})

    async with connect("10.0.0.1"), connect("10.0.0.1"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect("10.0.0.1")
        assert refused.value.status == 503
        async with http.get(url, headers={"X-Forwarded-For": "10.0.0.1"}) as reply:
            assert reply.status == 503
            assert "from this client (limit 2)" in (await reply.json())["message"]
        async with connect("10.0.0.2") as other:  # another client is not held back
            await other.send_json({"action": "ping"})
            assert await other.receive_json(timeout=10) == {"action": "pong"}
    # Closed sockets give the client its places back.

    async def two_again() -> bool:
        try:
            async with connect("10.0.0.1"), connect("10.0.0.1"):
                return True
        except aiohttp.WSServerHandshakeError:
            return False

    await until(two_again, what="the client's places freed")


def _viewers_below(worker: Worker, url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            async with worker.http.ws_connect(url, protocols=("ptw.live",)):
                return True
        except aiohttp.WSServerHandshakeError:
            return False

    return check


async def test_live_disabled_stores_nothing_and_detections_go_on(
    camera: RtspServer,
    model_server: ModelServer,
    start_worker: WorkerFactory,
    redis_server: RedisProcess,
    request: pytest.FixtureRequest,
) -> None:
    """``live_enabled=false``: the CMS door analyses and reports as ever; nothing reaches the
    live store (no Redis stream, no label), and /metrics counts no stored frame."""
    prefix = _prefix(request)
    worker = await start_worker(live_key_prefix=prefix, live_enabled=False, live_fps=10.0)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        backend = await _subscribe(worker, camera, model_server)
        await backend.detections(IDENTIFIER, 1)
        await asyncio.sleep(1.5)  # ~15 frames the live view would have stored at 10 fps
        assert await client.keys(f"{prefix}*") == []
        assert await _get(worker, "/labels") == (200, {"labels": []})
        async with worker.http.get(worker.url("/metrics")) as response:
            assert _metric(await response.text(), "ptw_live_frames_stored_total") == 0
    finally:
        await client.aclose()
