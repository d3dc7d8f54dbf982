"""A stream's liveness signals and bounds: the input watchdog, the data-channel keepalive and
a stop whose channels do not answer.

The worker is the real app from ``create_app`` (the demo MPTA as the stream processor's
pipeline) on 127.0.0.1, or a real StreamSession; channels live on the project's own trickle
server, or point at a closed port or at a peer that accepts connections and never answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from processors.passthrough import PassthroughProcessor
from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.frontdoors.streamserver.schemas import StartRequest
from pytrickle_worker.frontdoors.streamserver.session import StreamSession, StreamSessionConfig
from pytrickle_worker.server.app import create_app
from pytrickle_worker.transport.trickle import TricklePublisher, TrickleSubscriber
from tests.helpers import free_port
from tests.test_streaming_e2e import Reader, events_of, trickle_channels
from tests.test_streaming_media import synthetic_segments

MID = "live-1"
INPUT_TIMEOUT_S = 0.6


@pytest.fixture
async def trickle() -> AsyncIterator[str]:
    async with trickle_channels(MID) as url:
        yield url


@pytest.fixture
async def silent_peer() -> AsyncIterator[str]:
    """A TCP peer that accepts connections, reads, and never answers."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    for writer in connections:
        writer.close()
    server.close()
    await server.wait_closed()


@dataclass
class Worker:
    server: TestServer
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        async with self.http.request(
            method, str(self.server.make_url(path)), json=body
        ) as response:
            return response.status, await response.json()


MakeWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def make_worker(tmp_path: Path, demo_assets: DemoAssets) -> AsyncIterator[MakeWorker]:
    workers: list[Worker] = []

    async def make(**overrides: Any) -> Worker:
        config = WorkerConfig(
            cache_dir=tmp_path / "cache", execution_provider="cpu", hw_decode="off", **overrides
        )
        app = create_app(config, str(demo_assets.mpta_path))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        worker = Worker(server, aiohttp.ClientSession())
        workers.append(worker)
        for _ in range(600):
            if (await worker.call("GET", "/health/ready"))[0] == 200:
                break
            await asyncio.sleep(0.05)
        return worker

    yield make
    for worker in workers:
        status, _ = await worker.call("GET", "/stream/status")
        if status == 200:
            await worker.call("POST", "/stream/stop")
        await worker.http.close()
        await worker.server.close()


def start_body(**urls: str) -> dict[str, Any]:
    return {"gateway_request_id": MID, "params": {"target_fps": 2}, **urls}


# --------------------------------------------------------------------------- watchdog


async def test_input_watchdog_reports_no_input_a_stall_and_the_recovery(
    make_worker: MakeWorker, trickle: str
) -> None:
    worker = await make_worker(stream_input_timeout_s=INPUT_TIMEOUT_S)
    events = Reader(trickle + "-events", json.loads).start()
    try:
        status, reply = await worker.call(
            "POST",
            "/stream/start",
            start_body(subscribe_url=trickle, events_url=trickle + "-events"),
        )
        assert status == 200, reply
        # Nothing ever arrives on the input channel: reported, the stream stays OK.
        await events.until(lambda items: bool(events_of(events, "input_stalled")))
        stalled = events_of(events, "input_stalled")[0]
        assert stalled["reason"] == "no_input" and stalled["frames_decoded"] == 0, stalled
        assert stalled["seconds_without_input"] >= INPUT_TIMEOUT_S
        code, health = await worker.call("GET", "/health")
        assert code == 200
        assert health["status"] == "OK", health
        assert health["healthy"] is False and health["input_stalled"] is True, health
        _, stream_status = await worker.call("GET", "/api/stream/status")
        assert stream_status["input_stalled"] is True and stream_status["healthy"] is False
        assert stream_status["session"]["input_stalled"] is True

        # Input arrives: resumed, healthy again.
        publisher = TricklePublisher(trickle, "video/mp2t")
        for segment in synthetic_segments():
            await publisher.publish(segment)
        await events.until(lambda items: bool(events_of(events, "input_resumed")))
        code, health = await worker.call("GET", "/health")
        assert (code, health["healthy"], health["input_stalled"]) == (200, True, False), health

        # Then the input stops (the channel stays open): a stall, reported again.
        await events.until(lambda items: len(events_of(events, "input_stalled")) == 2)
        again = events_of(events, "input_stalled")[1]
        assert again["reason"] == "stalled" and again["frames_decoded"] > 0, again
        code, health = await worker.call("GET", "/health")
        assert (code, health["status"], health["healthy"]) == (200, "OK", False), health
        assert (await worker.call("POST", "/stream/stop"))[0] == 200
        code, health = await worker.call("GET", "/health")
        assert (code, health["status"], health["healthy"]) == (200, "IDLE", True), health
        assert "input_stalled" not in health
        await publisher.close(delete=False)
    finally:
        await events.close()


# --------------------------------------------------------------------------- keepalive


async def test_data_channel_sends_an_empty_batch_after_a_quiet_period(trickle: str) -> None:
    """Nothing to report (nothing clears the bar): a reader waiting on the next data segment
    gets ``[]\\n`` once per keepalive period instead of waiting forever."""
    keepalive_s = 0.5
    config = StreamSessionConfig(data_interval_s=0.05, data_keepalive_s=keepalive_s)
    request = StartRequest(gateway_request_id=MID, data_url=trickle + "-data")
    session = StreamSession(request, PassthroughProcessor(), config=config)
    await session.start()
    try:
        async with TrickleSubscriber(trickle + "-data", start_seq=-1) as subscriber:
            for _ in range(2):
                started = time.monotonic()
                segment = await asyncio.wait_for(subscriber.next_segment(), keepalive_s * 4)
                assert segment is not None
                assert await segment.read_all(1024) == b"[]\n"
                waited = time.monotonic() - started
                # Not sooner than the quiet period (the first wait starts a little late).
                assert waited >= keepalive_s * 0.5, waited
    finally:
        await session.stop()


def test_the_keepalive_period_is_pytrickles() -> None:
    assert StreamSessionConfig().data_keepalive_s == 25.0


# --------------------------------------------------------------------------- stop bound


def session_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {task for task in asyncio.all_tasks() if task is not current and not task.done()}


@pytest.mark.parametrize("peer", ["closed port", "silent peer"])
async def test_a_stop_whose_channels_do_not_answer_takes_under_a_second(
    make_worker: MakeWorker, trickle: str, silent_peer: str, peer: str
) -> None:
    worker = await make_worker()
    base = f"http://127.0.0.1:{free_port()}" if peer == "closed port" else silent_peer
    urls = {
        "subscribe_url": trickle,  # the input is fine; everything else is unreachable
        "publish_url": f"{base}/{MID}-out",
        "control_url": f"{base}/{MID}-control",
        "events_url": f"{base}/{MID}-events",
        "data_url": f"{base}/{MID}-data",
    }
    before = session_tasks()
    status, reply = await worker.call("POST", "/stream/start", start_body(**urls))
    assert status == 200, reply
    publisher = TricklePublisher(trickle, "video/mp2t")
    for segment in synthetic_segments()[:1]:
        await publisher.publish(segment)
    await asyncio.sleep(1.0)  # frames processed, events and data queued, retries under way
    started = time.monotonic()
    status, reply = await worker.call("POST", "/stream/stop")
    took = time.monotonic() - started
    assert status == 200, reply
    assert took < 1.0, f"stop took {took:.2f} s"
    await publisher.close(delete=False)
    # Abandoned, not leaked: nothing the stream started is still running (the servers'
    # connection handlers are not the stream's).
    await asyncio.sleep(0.2)
    left = {
        f"{task.get_name()}: {task.get_coro()!r}"
        for task in session_tasks() - before
        if "RequestHandler" not in repr(task.get_coro())
    }
    assert not left, "\n".join(sorted(left))
    code, health = await worker.call("GET", "/health")
    assert (code, health["status"]) == (200, "IDLE"), health


def test_the_stop_budget_defaults_under_a_second() -> None:
    assert StreamSessionConfig().close_timeout_s < 1.0


# --------------------------------------------------------------------------- publish_url


async def test_a_stream_without_publish_url_is_analysed_and_publishes_no_video(
    make_worker: MakeWorker, trickle: str
) -> None:
    """publish_url is optional, as in pytrickle: frames are analysed (data and events flow)
    and no video is encoded or published."""
    worker = await make_worker()
    urls = {"subscribe_url": trickle, "data_url": trickle + "-data"}
    status, reply = await worker.call("POST", "/stream/start", start_body(**urls))
    assert status == 200, reply
    publisher = TricklePublisher(trickle, "video/mp2t")
    for segment in synthetic_segments():
        await publisher.publish(segment)
    stream_status: dict[str, Any] = {}
    for _ in range(200):
        _, stream_status = await worker.call("GET", "/api/stream/status")
        if stream_status["session"]["frames_processed"] > 0:
            break
        await asyncio.sleep(0.05)
    session = stream_status["session"]
    assert session["frames_processed"] > 0, session
    assert session["frames_encoded"] == 0 and session["segments_out"] == 0, session
    assert session["output_fps"] == 0.0
    assert "publish_url" not in stream_status["current_params"]
    assert (await worker.call("POST", "/stream/stop"))[0] == 200
    await publisher.close(delete=False)
