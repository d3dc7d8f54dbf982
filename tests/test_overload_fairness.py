"""Overload: more streams than the machine can analyse. They must degrade together.

CMS subscriptions at 10 fps each on the RTSP demo camera (two per usable core, at least
twelve), all running a YOLOv8n-sized detector (640) that the project generates, ask for
about 20 analyses per second per core; a core gives about 13 (bench/RESULTS.md), so the
machine is overloaded whatever its size. Over 60 s the slowest stream must keep within 10%
of the median stream's analysed fps (the scheduler takes frames oldest request first, and
every stream has one frame in flight: they take turns), and the worker's memory must stay
flat (no backlog anywhere: each stream always analyses the newest frame of its camera).
"""

from __future__ import annotations

import asyncio
import os
import statistics
from pathlib import Path
from typing import Any

import psutil

from pytrickle_worker.devtools.assets import build_mpta
from pytrickle_worker.devtools.models import build_yolov8n_like
from tests.cms_harness import WorkerFactory, subscribe_payload, wait_until
from tests.media_fixtures import RtspServer

STREAMS = max(12, 2 * len(os.sched_getaffinity(0)))
TARGET_FPS = 10.0
WARMUP_S = 10.0
WINDOW_S = 60.0
#: RSS growth over the window that still counts as flat (allocator noise, caches settling).
FLAT_RSS_BYTES = 48 * 1024 * 1024


def yolo_mpta(tmp_path: Path) -> Path:
    model = tmp_path / "yolo.onnx"
    build_yolov8n_like(model, imgsz=640, batch=None)
    pipeline: dict[str, Any] = {
        "pipeline": {
            "modelId": "yolo",
            "modelFile": "yolo.onnx",
            "minConfidence": 0.25,
            "triggerClasses": [],
            "actions": [],
            "branches": [],
        }
    }
    return build_mpta(tmp_path / "yolo.mpta", pipeline, {"yolo.onnx": model})


async def test_streams_degrade_together_and_memory_stays_flat(
    start_worker: WorkerFactory, camera: RtspServer, tmp_path: Path
) -> None:
    mpta = yolo_mpta(tmp_path)
    worker = await start_worker(emission="every_frame", target_fps=TARGET_FPS)
    backend = await worker.connect()
    identifiers = [f"display-{i};cam-{i}" for i in range(STREAMS)]
    for identifier in identifiers:
        await backend.send("subscribe", subscribe_payload(identifier, camera.url, str(mpta)))
    subscriptions = worker.cms.subscriptions

    def processed() -> dict[str, int]:
        return {sub.identifier: sub.frames_processed for sub in subscriptions.active()}

    await wait_until(
        lambda: len(processed()) == STREAMS and min(processed().values()) > 0,
        within=60,
        what="every subscription analysing",
    )
    await asyncio.sleep(WARMUP_S)
    process = psutil.Process()
    start = processed()
    rss: list[int] = []
    for _ in range(int(WINDOW_S / 5)):
        await asyncio.sleep(5)
        rss.append(process.memory_info().rss)
    end = processed()

    fps = sorted((end[i] - start[i]) / WINDOW_S for i in identifiers)
    median = statistics.median(fps)
    # It is an overload: the streams get clearly less than they ask for.
    assert median < 0.9 * TARGET_FPS, fps
    assert fps[0] >= 0.9 * median, f"slowest {fps[0]:.2f} fps vs median {median:.2f}: {fps}"
    first, last = statistics.mean(rss[:3]), statistics.mean(rss[-3:])
    assert last - first < FLAT_RSS_BYTES, f"RSS grew {(last - first) / 2**20:.1f} MiB: {rss}"
