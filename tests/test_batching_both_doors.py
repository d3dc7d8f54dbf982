"""Six streams through both front doors at once, one model, batched.

Five CMS subscriptions on the RTSP demo camera (one decode, five analyses per frame) and one
trickle stream, all running the demo MPTA over HTTP, in one worker with batches of up to 6
on a single run slot. The batch-size histogram in ``/metrics`` must show batches larger
than one, and every stream must get the right detections: the car's badge (``yellow``) in
the upper half of the camera, the truck in the lower half, the badged car in the trickle
scene.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from tests.cms_harness import (
    LOWER,
    UPPER,
    ModelServer,
    WorkerFactory,
    detection_class,
    subscribe_payload,
)
from tests.media_fixtures import RtspServer
from tests.test_streaming_e2e import Reader, jsonl, trickle_channels
from tests.test_streaming_media import synthetic_segments

CAMERAS = 5
TIMEOUT_S = 60.0
MID = "batch-1"


@pytest.fixture
async def channels() -> AsyncIterator[str]:
    async with trickle_channels(MID) as base:
        yield base


def batch_histogram(metrics: str, model: str) -> dict[str, float]:
    """``le`` → cumulative count of ``ptw_inference_batch_size`` for ``model``."""
    pattern = re.compile(
        r'^ptw_inference_batch_size_bucket\{le="([^"]+)",model="' + re.escape(model) + r'"'
        r"[^}]*\} ([0-9.e+]+)$"
    )
    found: dict[str, float] = {}
    for line in metrics.splitlines():
        match = pattern.match(line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


async def test_six_streams_on_both_doors_share_batches(
    start_worker: WorkerFactory, camera: RtspServer, model_server: ModelServer, channels: str
) -> None:
    from pytrickle_worker.transport.trickle import TricklePublisher  # noqa: PLC0415

    worker = await start_worker(
        emission="every_frame",
        target_fps=10.0,
        max_batch=6,
        inference_workers=1,
        intra_op_threads=1,
    )
    assert worker.service.scheduler.max_batch == 6
    backend = await worker.connect()
    identifiers = [f"display-{i};cam-{i}" for i in range(CAMERAS)]
    for index, identifier in enumerate(identifiers):
        crop = UPPER if index % 2 == 0 else LOWER
        await backend.send(
            "subscribe",
            subscribe_payload(identifier, camera.url, model_server.url(), **crop),
        )
    start = {
        "gateway_request_id": MID,
        "subscribe_url": channels,
        "data_url": channels + "-data",
        "params": {"model_url": model_server.url(), "max_framerate": 10},
    }
    async with worker.http.post(worker.url("/api/stream/start"), json=start) as response:
        assert response.status == 200, await response.text()
    data = Reader(channels + "-data", jsonl).start()
    publisher = TricklePublisher(channels, "video/mp2t")
    segments = synthetic_segments()

    async def feed() -> None:
        for _ in range(4):  # ~20 s of input, while the cameras run
            for segment in segments:
                await publisher.publish(segment)

    feeding = asyncio.create_task(feed())
    try:
        for index, identifier in enumerate(identifiers):
            expected = "yellow" if index % 2 == 0 else "truck"
            found = await backend.detections(
                identifier, 3, timeout=TIMEOUT_S, where=lambda m: detection_class(m) != "none"
            )
            assert {detection_class(m) for m in found} == {expected}, (identifier, found)
        await data.until(lambda batches: sum(len(b) for b in batches) >= 5, timeout=TIMEOUT_S)
        records = [record for batch in data.items for record in batch]
        assert {r["detection"]["class"] for r in records if r["detection"]} == {"yellow"}

        async with worker.http.get(worker.url("/metrics")) as response:
            metrics = await response.text()
        histogram = batch_histogram(metrics, "detector.onnx")
        assert histogram, metrics
        runs, single = histogram["+Inf"], histogram["1.0"]
        # Six streams on one run slot: runs gathered more than one frame.
        assert single < runs, histogram
        stats = worker.service.scheduler.batching.stats()
        assert isinstance(stats["largest_batch"], int) and 1 < stats["largest_batch"] <= 6
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        async with worker.http.post(worker.url("/api/stream/stop")) as response:
            assert response.status == 200
        await publisher.close(delete=False)
        await data.close()
