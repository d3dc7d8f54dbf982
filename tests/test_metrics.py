"""``GET /metrics``: the real worker app scraped over HTTP while real streams run.

The CMS case subscribes the demo MPTA on the demo sample video (a local file stands in for a
camera and plays in a loop), with the pipeline's Redis actions going to a real Redis; the
trickle case starts a stream through ``POST /api/stream/start`` on a local TrickleServer. The
scrapes are parsed with prometheus_client's own parser. Nothing of the worker is mocked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession, ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestServer
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.core.logutil import mask_url
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.engine.inference.providers import select_providers
from pytrickle_worker.engine.inference.registry import ModelRegistry
from pytrickle_worker.engine.mpta.actions import ActionJob
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.engine.mpta.spec import RedisConfig, RedisPublishAction
from pytrickle_worker.server.app import CMS_KEY, METRICS_KEY, SERVICE_KEY, create_app
from pytrickle_worker.server.metrics import WorkerMetrics
from pytrickle_worker.transport.trickle import TricklePublisher
from tests.helpers import RedisProcess, free_port
from tests.test_streaming_e2e import trickle_channels
from tests.test_streaming_media import synthetic_segments

BASE_CONFIG: dict[str, Any] = {
    "execution_provider": "cpu",
    "heartbeat_interval_s": 0.5,
    "stall_timeout_s": 5.0,
    "reconnect_interval_sec": 0.5,
    "hw_decode": "off",
    "log_level": "WARNING",
}
WAIT_S = 30.0


class Scrape:
    """One parsed exposition: ``value(name, **labels)`` of a sample (None when absent)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def find(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (s.labels, s.value)
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float | None:
        found = self.find(name, **labels)
        assert len(found) <= 1, f"{name} {labels} matches several samples: {found}"
        return found[0][1] if found else None

    def total(self, name: str, **labels: str) -> float:
        return sum(v for _, v in self.find(name, **labels))


def assert_stream_series(scrape: Scrape, door: str, stream: str) -> None:
    """The per-stream series of an analysed stream: latency histogram, analysed rate and
    skipped frames by reason, with sane values."""
    key = {"door": door, "stream": stream}
    count = scrape.value("ptw_stream_latency_seconds_count", **key)
    total = scrape.value("ptw_stream_latency_seconds_sum", **key)
    assert count is not None and count > 0, scrape.text
    assert total is not None and 0 < total < 60 * count  # seconds, not ms or epochs
    buckets = [(float(labels["le"]), value) for labels, value in
               scrape.find("ptw_stream_latency_seconds_bucket", **key)]  # fmt: skip
    bounds = [le for le, _ in buckets]
    assert bounds == sorted(bounds) and bounds[0] == 0.025 and bounds[-1] == float("inf")
    counts = [value for _, value in buckets]
    assert counts == sorted(counts) and counts[-1] == count
    fps = scrape.value("ptw_stream_analysed_fps", **key)
    assert fps is not None and fps > 0
    for reason in ("sampler", "overload"):
        skipped = scrape.value("ptw_stream_frames_skipped_total", **key, reason=reason)
        assert skipped is not None and skipped >= 0, reason


@dataclass
class Worker:
    server: TestServer
    http: ClientSession
    sockets: list[ClientWebSocketResponse] = field(default_factory=list[ClientWebSocketResponse])
    messages: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    readers: list[asyncio.Task[None]] = field(default_factory=list[asyncio.Task[None]])

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def scrape(self) -> Scrape:
        async with self.http.get(self.url("/metrics")) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
            return Scrape(await response.text())

    async def scrape_until(
        self, predicate: Callable[[Scrape], bool], what: str, within: float = WAIT_S
    ) -> Scrape:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            scrape = await self.scrape()
            if predicate(scrape):
                return scrape
            if loop.time() > deadline:
                raise AssertionError(f"no scrape with {what} within {within} s:\n{scrape.text}")
            await asyncio.sleep(0.2)

    async def connect(self) -> ClientWebSocketResponse:
        ws = await self.http.ws_connect(self.url("/"))
        self.sockets.append(ws)

        async def read() -> None:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    self.messages.append(json.loads(message.data))

        self.readers.append(asyncio.get_running_loop().create_task(read()))
        return ws

    async def wait_message(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while not any(predicate(m) for m in self.messages):
            assert loop.time() < deadline, f"no {what} within {WAIT_S} s: {self.messages[-5:]}"
            await asyncio.sleep(0.05)


WorkerFactory = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(tmp_path: Path) -> AsyncIterator[WorkerFactory]:
    workers: list[Worker] = []

    async def start(default_pipeline_source: str | None = None, **overrides: Any) -> Worker:
        config = WorkerConfig(cache_dir=tmp_path / "cache", **{**BASE_CONFIG, **overrides})
        server = TestServer(create_app(config, default_pipeline_source), host="127.0.0.1")
        await server.start_server()
        worker = Worker(server, ClientSession())
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        for ws in worker.sockets:
            await ws.close()
        await asyncio.gather(*worker.readers, return_exceptions=True)
        await worker.http.close()
        await worker.server.close()


# ----------------------------------------------------------------------------- no components


async def test_fresh_app_scrapes_without_any_stream(start_worker: WorkerFactory) -> None:
    worker = await start_worker()
    scrape = await worker.scrape()
    assert scrape.value("ptw_worker_info", version=scrape.find("ptw_worker_info")[0][0]["version"])
    assert scrape.value("ptw_cms_websocket_clients") == 0
    assert scrape.value("ptw_cms_subscriptions") == 0
    assert scrape.value("ptw_models_loaded") == 0
    assert scrape.value("ptw_redis_action_buffer_jobs") == 0
    assert scrape.value("ptw_execution_provider_info", provider="CPUExecutionProvider") == 1
    service = worker.server.app[SERVICE_KEY]
    assert scrape.value("ptw_inference_workers") == service.budget.inference_workers >= 1
    assert scrape.value("ptw_inference_intra_op_threads") == service.budget.intra_op_threads
    assert scrape.value("ptw_inference_jobs_pending") == 0
    assert scrape.value("ptw_model_loads_pending") == 0
    assert scrape.value("ptw_inference_padded_rows_total") == 0
    # The wake-up probes run from the start: a sample every 50 ms, each under a second here.
    await asyncio.sleep(0.3)
    later = await worker.scrape()
    for probe in ("ptw_thread_wakeup_lateness_seconds", "ptw_event_loop_lag_seconds"):
        count = later.value(f"{probe}_count")
        assert count is not None and count >= 2, probe
        assert later.value(f"{probe}_bucket", le="1.0") == count, probe
    # Families without series yet are announced, with no samples.
    for family in ("ptw_inference_seconds", "ptw_source_online", "ptw_model_info"):
        assert family in scrape.families and not scrape.families[family].samples, family
    # Exactly one StreamServer state is current.
    states = {labels["state"]: value for labels, value in scrape.find("ptw_stream_state")}
    assert set(states) == {"LOADING", "IDLE", "OK", "ERROR"}
    assert sum(states.values()) == 1
    assert scrape.value("ptw_stream_active") == 0
    assert scrape.value("process_resident_memory_bytes") is not None
    assert worker.server.app[METRICS_KEY].render().startswith(b"# HELP")
    # Each app has its own registry: a second one in the same process registers fine.
    assert b"ptw_worker_info" in WorkerMetrics().render()
    assert b"ptw_worker_info" in WorkerMetrics(process_metrics=False).render()


# ----------------------------------------------------------------------------- inference hook


def test_registry_observer_sees_real_runs_only(demo_assets: DemoAssets) -> None:
    """Loaded and later-loaded models feed the histograms; warm-ups and a removed observer
    do not."""
    metrics = WorkerMetrics(process_metrics=False)
    registry = ModelRegistry(select_providers("cpu"))
    frame = np.zeros((360, 640, 3), dtype=np.uint8)

    def count(model: str) -> float | None:
        return Scrape(metrics.render().decode()).value("ptw_inference_seconds_count", model=model)

    detector = registry.acquire(demo_assets.detector_path)  # warmed up before any observer
    detector.detect(frame)
    registry.set_observer(metrics.inference)
    assert count("detector.onnx") is None
    detector.detect(frame)
    detector.detect(frame)
    assert count("detector.onnx") == 2
    classifier = registry.acquire(demo_assets.classifier_path)  # its warm-up is not counted
    assert count("classifier.onnx") is None
    classifier.classify(frame)
    assert count("classifier.onnx") == 1
    scrape = Scrape(metrics.render().decode())
    assert scrape.value("ptw_inference_batch_size_sum", model="detector.onnx") == 2
    assert scrape.total("ptw_inference_seconds_sum", model="detector.onnx") > 0
    registry.set_observer(None)
    detector.detect(frame)
    assert count("detector.onnx") == 2
    registry.close()


# ----------------------------------------------------------------------------- CMS stream


async def test_cms_subscription_metrics_move_between_scrapes(
    start_worker: WorkerFactory, demo_assets: DemoAssets, redis_server: RedisProcess
) -> None:
    worker = await start_worker(redis_url=redis_server.url)
    ws = await worker.connect()
    good, bad = "display-1;cam-good", "display-1;cam-bad"
    unreachable = f"rtsp://admin:s3cr3t@127.0.0.1:{free_port()}/cam?token=t0k3n"
    for identifier, url in ((good, str(demo_assets.video_path)), (bad, unreachable)):
        await ws.send_json(
            {
                "type": "subscribe",
                "payload": {
                    "subscriptionIdentifier": identifier,
                    "rtspUrl": url,
                    "modelUrl": str(demo_assets.mpta_path),
                    "modelName": "Vehicle Identification",
                    "modelId": 201,
                },
            }
        )
    await worker.wait_message(
        lambda m: m.get("type") == "imageDetection" and m.get("subscriptionIdentifier") == good,
        "imageDetection",
    )

    def frames(scrape: Scrape) -> float:
        return scrape.total("ptw_subscription_frames_processed_total", subscription=good)

    def inferences(scrape: Scrape) -> float:
        return scrape.total("ptw_inference_seconds_count")

    first = await worker.scrape_until(lambda s: frames(s) > 0, "a processed frame")
    assert first.value("ptw_cms_websocket_clients") == 1
    assert first.value("ptw_cms_subscriptions") == 2
    by_source = {labels["source"]: value for labels, value in first.find("ptw_source_online")}
    sample = [s for s in by_source if s.endswith("sample.mp4")]
    assert len(sample) == 1 and by_source[sample[0]] == 1, by_source
    assert first.total("ptw_subscription_detections_sent_total", subscription=good) > 0
    # Both models of the demo pipeline: really on the CPU provider, one series each.
    models = first.find("ptw_model_info")
    assert {labels["model"] for labels, _ in models} == {"detector.onnx", "classifier.onnx"}
    assert {labels["provider"] for labels, _ in models} == {"CPUExecutionProvider"}
    assert all(len(labels["sha256"]) == 12 for labels, _ in models)
    assert first.value("ptw_model_refs", model="detector.onnx") == 2  # both subscriptions
    assert inferences(first) > 0
    # Per stream: the good camera's latency, rate and skipped frames (a 15 fps video analysed
    # at 10 fps always skips some). Only subscriptions are streams of the CMS door.
    good_stream = await worker.scrape_until(
        lambda s: (
            (s.value("ptw_stream_analysed_fps", door="cms", stream=good) or 0) > 0
            and s.total("ptw_stream_frames_skipped_total", stream=good) > 0
        ),
        "an analysed rate and skipped frames",
    )
    assert_stream_series(good_stream, "cms", good)
    skipped_total = good_stream.total("ptw_stream_frames_skipped_total", door="cms", stream=good)
    legacy = good_stream.value("ptw_subscription_frames_skipped_total", subscription=good)
    assert legacy == skipped_total  # the subscription's one total, split by reason
    sub = worker.server.app[CMS_KEY].subscriptions.get(good)
    assert sub is not None
    snapshot = sub.latency.snapshot()
    assert snapshot.p95_s is not None and snapshot.p95_s > 0
    assert snapshot.p50_s is not None and snapshot.p50_s <= snapshot.p95_s
    camera = sub.camera
    assert camera.frames_skipped == camera.frames_skipped_sampler + camera.frames_skipped_overload
    assert {labels["door"] for labels, _ in good_stream.find("ptw_stream_analysed_fps")} == {"cms"}

    second = await worker.scrape_until(
        lambda s: (
            frames(s) >= frames(first) + 3
            and inferences(s) > inferences(first)
            and s.total("ptw_redis_actions_completed_total") > 0
            and s.total("ptw_source_reconnects_total", source=mask_url(unreachable)) > 0
        ),
        "more frames, inferences, Redis actions and reconnects",
    )
    # Counters only grow between scrapes.
    for name in (
        "ptw_subscription_frames_processed_total",
        "ptw_subscription_detections_sent_total",
        "ptw_source_frames_decoded_total",
        "ptw_inference_seconds_count",
        "ptw_inference_seconds_sum",
        "ptw_cms_outbound_messages_sent_total",
    ):
        assert second.total(name) >= first.total(name), name
    assert second.total("ptw_source_frames_decoded_total") > first.total(
        "ptw_source_frames_decoded_total"
    )
    assert second.total("ptw_inference_seconds_sum") > first.total("ptw_inference_seconds_sum")
    # Every session.run of this pipeline feeds one image.
    assert second.total("ptw_inference_batch_size_sum") == inferences(second)
    assert second.value("ptw_inference_seconds_bucket", model="detector.onnx", le="+Inf") == (
        second.value("ptw_inference_seconds_count", model="detector.onnx")
    )
    assert second.value("ptw_redis_target_online", target=redis_server.url) == 1
    assert second.total("ptw_redis_action_failures_total") == 0
    # The camera that cannot be reached: offline, and no credential in any label.
    assert second.value("ptw_source_online", source=mask_url(unreachable)) == 0
    assert "s3cr3t" not in second.text and "t0k3n" not in second.text
    assert second.value("ptw_subscription_frames_dropped_total", subscription=good) == 0
    # One backend connection with its queue.
    [(backend, _)] = second.find("ptw_cms_outbound_queue_depth")
    assert backend["peer"] == "127.0.0.1" and backend["connection"] == "1"

    # The backend leaves: the gauge follows.
    await ws.close()
    await worker.scrape_until(lambda s: s.value("ptw_cms_websocket_clients") == 0, "no clients")


# ----------------------------------------------------------------------------- Redis outage


async def test_redis_outage_counts_and_buffers(tmp_path: Path) -> None:
    """A dead Redis: the outage counter, the buffer gauges and a masked target label."""
    redis = RedisConfig(host="127.0.0.1", port=free_port(), password="p4ssw0rd")
    config = WorkerConfig(
        cache_dir=tmp_path / "cache", execution_provider="cpu", action_retry_interval_s=0.2
    )
    async with PipelineService(config) as service:
        metrics = WorkerMetrics(service=service, process_metrics=False)
        action = RedisPublishAction(type="redis_publish", channel="events", message="{class}")
        for _ in range(3):
            job = ActionJob("pipeline", [action], {"class": "car"}, None)
            assert service.actions.submit(redis, job)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            scrape = Scrape(metrics.render().decode())
            if scrape.value("ptw_redis_outages_total") == 1:
                break
            assert loop.time() < deadline, scrape.text
            await asyncio.sleep(0.05)
        assert scrape.value("ptw_redis_action_jobs_submitted_total") == 3
        assert scrape.value("ptw_redis_action_buffer_jobs") == 3
        assert scrape.value("ptw_redis_actions_completed_total") == 0
        [(labels, online)] = scrape.find("ptw_redis_target_online")
        assert online == 0 and "p4ssw0rd" not in scrape.text, labels
        assert scrape.value("ptw_redis_target_buffer_jobs", target=labels["target"]) == 3
        await service.actions.close(drain_timeout_s=0.1)


# ----------------------------------------------------------------------------- trickle stream

MID = "metrics-stream"


@pytest.fixture
async def trickle() -> AsyncIterator[str]:
    async with trickle_channels(MID) as url:
        yield url


async def test_trickle_stream_state_and_rates(
    start_worker: WorkerFactory, demo_assets: DemoAssets, trickle: str
) -> None:
    worker = await start_worker(default_pipeline_source=str(demo_assets.mpta_path))
    await worker.scrape_until(lambda s: s.value("ptw_stream_state", state="IDLE") == 1, "IDLE")
    body = {
        "gateway_request_id": MID,
        "subscribe_url": trickle,
        "publish_url": trickle + "-out",
        "control_url": trickle + "-control",
        "events_url": trickle + "-events",
        "data_url": trickle + "-data",
        "params": {"target_fps": 30},
    }
    async with worker.http.post(worker.url("/api/stream/start"), json=body) as response:
        assert response.status == 200, await response.text()
    publisher = TricklePublisher(trickle, "video/mp2t")
    try:
        for segment in synthetic_segments():
            await publisher.publish(segment)

        def processed(scrape: Scrape) -> float:
            return scrape.total("ptw_stream_frames_total", stage="processed")

        during = await worker.scrape_until(
            lambda s: processed(s) > 0 and s.total("ptw_inference_seconds_count") > 0,
            "processed stream frames",
        )
        assert during.value("ptw_stream_state", state="OK") == 1
        assert during.value("ptw_stream_active") == 1
        assert during.total("ptw_stream_frames_total", stage="decoded") >= processed(during)
        for direction in ("input", "processing", "output"):
            fps = during.value("ptw_stream_fps", direction=direction)
            assert fps is not None and fps >= 0, direction
        for queue in ("decode", "encode", "segment"):
            assert during.value("ptw_stream_queue_depth", queue=queue) is not None, queue
        assert during.value("ptw_model_info", model="detector.onnx") == 1
        # Per stream: the trickle stream's latency and rates, labelled with its request id.
        analysed = await worker.scrape_until(
            lambda s: (s.value("ptw_stream_analysed_fps", door="trickle", stream=MID) or 0) > 0,
            "an analysed trickle rate",
        )
        assert_stream_series(analysed, "trickle", MID)
        # /api/stream/status shows the same latency figures (milliseconds).
        async with worker.http.get(worker.url("/api/stream/status")) as response:
            assert response.status == 200
            session = (await response.json())["session"]
        assert session["latency_count"] > 0
        p50, p95 = session["latency_ms_p50"], session["latency_ms_p95"]
        assert 0 < p50 <= p95 < 60_000, session
        # The two drop counts behind reason="sampler" and reason="overload".
        assert session["frames_skipped_by_rate"] >= 0
        assert session["frames_dropped_before_processing"] >= 0
    finally:
        await publisher.close()
    async with worker.http.post(worker.url("/api/stream/stop"), json={}) as response:
        assert response.status in (200, 400), await response.text()  # 400: already ended
    after = await worker.scrape_until(
        lambda s: s.value("ptw_stream_state", state="IDLE") == 1, "IDLE after the stream"
    )
    assert after.value("ptw_stream_active") == 0
    assert after.total("ptw_inference_seconds_count") >= during.total("ptw_inference_seconds_count")
