"""SIGTERM drains the real worker process: a live CMS subscription with Redis actions and a
trickle stream are running; Redis is paused so actions pile up; then the signal.

Expected: readiness goes 503 while liveness stays 200, new starts are refused, the trickle
output gets its DELETE and the events channel its ``stream_stopped``, the backend's
WebSocket is closed with 1001, every Redis action queued before (and during) the drain is
sent once Redis answers again, and the process exits 0 inside its deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.devtools.trickle_server import TrickleServer
from pytrickle_worker.transport.trickle import TricklePublisher
from tests.helpers import RedisProcess
from tests.test_streaming_e2e import CHANNELS, Reader, events_of
from tests.test_streaming_media import synthetic_segments
from tests.worker_process import WorkerProcess

MID = "drain-stream"
DEADLINE_S = 15.0


async def publish_forever(publisher: TricklePublisher) -> None:
    segments = synthetic_segments()
    while True:
        for segment in segments:
            await publisher.publish(segment)
            await asyncio.sleep(0.5)


@pytest.fixture
async def trickle() -> AsyncIterator[tuple[TrickleServer, str]]:
    server = TrickleServer()
    port = await server.start("127.0.0.1", 0)
    for suffix, mime in CHANNELS.items():
        server.create_channel(MID + suffix, mime)
    yield server, f"http://127.0.0.1:{port}/{MID}"
    await server.stop()


def final_action_stats(log: str) -> dict[str, int]:
    for line in reversed(log.splitlines()):
        record = json.loads(line)
        if record["message"].startswith("shut down in"):
            return json.loads(record["message"].split("redis actions: ", 1)[1])
    raise AssertionError(f"no shutdown summary in the log:\n{log}")


async def test_sigterm_drains_streams_websockets_and_redis_actions(
    tmp_path: Path,
    demo_assets: DemoAssets,
    private_redis: RedisProcess,
    trickle: tuple[TrickleServer, str],
) -> None:
    server, channel = trickle
    worker = WorkerProcess(
        tmp_path,
        "--pipeline",
        str(demo_assets.mpta_path),
        env={
            "PTW_REDIS_URL": private_redis.url,
            "PTW_SHUTDOWN_TIMEOUT_S": str(DEADLINE_S),
            "LOG_FORMAT": "json",
        },
    ).start()
    redis = aioredis.Redis.from_url(private_redis.url)
    pubsub = redis.pubsub()
    await pubsub.subscribe("demo_events")
    published: list[Any] = []

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                published.append(message["data"])

    listener = asyncio.ensure_future(listen())
    input_publisher = TricklePublisher(channel, "video/mp2t")
    feeding = asyncio.ensure_future(publish_forever(input_publisher))
    events = Reader(channel + "-events", json.loads).start()
    output = Reader(channel + "-out").start()
    paused = False
    try:
        await worker.wait_status("/health/ready", 200)
        async with aiohttp.ClientSession() as http:
            start = {
                "gateway_request_id": MID,
                "subscribe_url": channel,
                "publish_url": channel + "-out",
                "events_url": channel + "-events",
                "data_url": channel + "-data",
            }
            async with http.post(worker.base + "/api/stream/start", json=start) as response:
                assert response.status == 200, await response.text()
            ws = await http.ws_connect(worker.base + "/")
            subscribe = {
                "type": "subscribe",
                "payload": {
                    "subscriptionIdentifier": "display-1;cam-1",
                    "rtspUrl": str(demo_assets.video_path),
                    "modelUrl": str(demo_assets.mpta_path),
                    "modelId": 1,
                    "modelName": "demo",
                },
            }
            await ws.send_json(subscribe)
            detections = 0
            while detections < 3:  # the subscription runs and its actions reach Redis
                message = await asyncio.wait_for(ws.receive_json(), 30)
                assert message["type"] != "error", message
                detections += message["type"] == "imageDetection"
            await output.until(lambda items: len(items) >= 1, timeout=20)

            # Redis stops answering: the worker's actions queue up behind it.
            assert private_redis.proc is not None
            os.kill(private_redis.proc.pid, signal.SIGSTOP)
            paused = True
            await asyncio.sleep(1.5)
            signalled = time.monotonic()
            worker.signal(signal.SIGTERM)

            # Draining: not ready, still alive, no new streams.
            async with http.get(worker.base + "/health/ready") as response:
                assert response.status == 503
                assert (await response.json())["draining"] is True
            async with http.get(worker.base + "/health/live") as response:
                assert response.status == 200
            async with http.get(worker.base + "/health") as response:
                health = await response.json()
            assert response.status == 200 and health["draining"] is True
            assert health["actions"]["pending"] > 0  # queued behind the paused Redis
            async with http.post(worker.base + "/api/stream/start", json=start) as response:
                assert response.status == 503
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(worker.base + "/")  # reconnect to another worker
            assert refused.value.status == 503
            # A heartbeat stateReport (every 2 s) may still come before the close frame;
            # nothing else may.
            closing = await asyncio.wait_for(ws.receive(), 10)
            while closing.type is aiohttp.WSMsgType.TEXT:
                assert json.loads(closing.data)["type"] == "stateReport", closing.data
                closing = await asyncio.wait_for(ws.receive(), 10)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
            assert MID + "-out" not in server.channels  # the output's DELETE

            await asyncio.sleep(1.0)
            assert worker.process is not None and worker.process.poll() is None  # waits
            os.kill(private_redis.proc.pid, signal.SIGCONT)
            paused = False
            code = await asyncio.to_thread(worker.process.wait, DEADLINE_S + 5)
            elapsed = time.monotonic() - signalled
        assert code == 0, worker.log()
        assert elapsed < DEADLINE_S, elapsed

        await events.until(lambda items: bool(events_of(events, "stream_stopped")))
        stats = final_action_stats(worker.log())
        assert stats["redis_outages"] == 0  # paused, not down: nothing was given up
        for lost in ("pending", "dropped_overflow", "failed_actions", "template_errors"):
            assert stats[lost] == 0, stats
        assert stats["submitted"] > 0
        # Every completed action is in Redis: a saved image or a published event.
        deadline = time.monotonic() + 5
        while True:
            keys = [key async for key in redis.scan_iter("demo:*")]
            if len(keys) + len(published) >= stats["completed_actions"]:
                break
            assert time.monotonic() < deadline, (len(keys), len(published), stats)
            await asyncio.sleep(0.05)
        assert len(keys) + len(published) == stats["completed_actions"], stats
        assert "cut the drain short" not in worker.log()
    finally:
        if paused and private_redis.proc is not None:
            os.kill(private_redis.proc.pid, signal.SIGCONT)
        feeding.cancel()
        listener.cancel()
        await asyncio.gather(feeding, listener, return_exceptions=True)
        await input_publisher.close()
        await events.close()
        await output.close()
        await pubsub.aclose()
        await redis.aclose()
        worker.stop()


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = WorkerProcess(tmp_path, "--no-demo", "--port", str(port))
        worker.port = port  # the last --port wins: the taken one
        worker.start()
        assert worker.process is not None
        code = worker.process.wait(timeout=60)
    log = worker.log()
    assert code == 1, log
    assert f"error: cannot listen on 127.0.0.1:{port}" in log and "Traceback" not in log


async def test_a_drain_that_cannot_finish_is_cut_at_the_deadline(
    tmp_path: Path, demo_assets: DemoAssets
) -> None:
    """The stream's events channel points at a peer that accepts and never answers: stopping
    the stream takes its close budget (0.6 s, StreamSessionConfig.close_timeout_s), but a
    0.3 s drain deadline wins, exit 0."""
    silent: list[asyncio.StreamWriter] = []

    async def accept_and_ignore(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    black_hole = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    port = black_hole.sockets[0].getsockname()[1]
    worker = WorkerProcess(
        tmp_path,
        "--pipeline",
        str(demo_assets.mpta_path),
        env={"PTW_SHUTDOWN_TIMEOUT_S": "0.3"},
    ).start()
    try:
        await worker.wait_status("/health/ready", 200)
        start = {"gateway_request_id": "stuck", "events_url": f"http://127.0.0.1:{port}/ev"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(worker.base + "/api/stream/start", json=start) as response,
        ):
            assert response.status == 200, await response.text()
        assert worker.process is not None
        await asyncio.sleep(0.5)  # the events channel's POST is open and unanswered
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.process.wait, 10)
        elapsed = time.monotonic() - signalled
    finally:
        worker.stop()
        black_hole.close()
        for writer in silent:
            writer.close()
    log = worker.log()
    assert code == 0, log
    assert elapsed < 3.0, (elapsed, log)
    assert "stopping the trickle stream did not finish before the deadline" in log
