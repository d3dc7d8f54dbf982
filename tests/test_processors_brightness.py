"""The example processor (processors/brightness.py) through the registry and both doors.

Real parts only: the worker as a process (``server.py``), the project's trickle server, the
demo video as a CMS camera, and the processor on real frames.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from processors.brightness import BrightnessProcessor
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.processing import ParamsError, VideoFrame
from pytrickle_worker.processing.registry import (
    UnknownProcessorError,
    discover_processors,
    lookup,
    parse_processor_url,
)
from pytrickle_worker.transport.trickle import TricklePublisher
from tests.cms_harness import Backend
from tests.test_streaming_e2e import Reader, jsonl, trickle_channels
from tests.test_streaming_media import synthetic_segments
from tests.worker_process import WorkerProcess

TB = Fraction(1, 90_000)
MID = "bright-1"
WAIT_S = 60.0


def grey(level: int, index: int) -> VideoFrame:
    return VideoFrame(np.full((24, 32, 3), level, np.uint8), index * 3000, TB)


def test_the_registry_finds_every_processor_module() -> None:
    registry = discover_processors()
    assert {"mpta", "passthrough", "brightness"} <= registry.keys()
    with pytest.raises(UnknownProcessorError, match=r"unknown processor 'nope' \(known: "):
        lookup(registry, "nope")
    assert parse_processor_url("processor://brightness?threshold=0.25&x=a") == (
        "brightness",
        {"threshold": 0.25, "x": "a"},
    )
    assert parse_processor_url("https://models.local/a.mpta") is None


async def test_crossings_give_records_and_bad_params_change_nothing() -> None:
    processor = BrightnessProcessor()
    stream = await processor.open_stream("s", {"threshold": 0.5})
    levels = [10, 200, 220, 30, 40, 255]
    results = [await stream.process(grey(level, i)) for i, level in enumerate(levels)]
    found = [
        (r.records[0]["pts"], r.records[0]["detection"]["class"]) for r in results if r.records
    ]
    assert found == [(3000, "bright"), (9000, "dark"), (15000, "bright")]
    assert all(r.frame is not None for r in results)
    with pytest.raises(ParamsError, match="threshold: Input should be less than or equal to 1"):
        stream.update_params({"threshold": 1.5})
    with pytest.raises(ParamsError, match="colour: unknown parameter"):
        stream.update_params({"threshold": 0.9, "colour": "red"})
    assert stream.current_params() == {"threshold": 0.5}
    stream.update_params({"threshold": 1.0})
    assert not (await stream.process(grey(255, 9))).records  # still bright: no crossing
    with pytest.raises(ParamsError, match="threshold"):
        await processor.open_stream("t", {"threshold": True})
    await stream.close()


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with http.request(method, url, **kw) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_brightness_on_both_doors(tmp_path: Path, demo_assets: DemoAssets) -> None:
    worker = WorkerProcess(tmp_path, "--no-demo", env={"PTW_STREAM_PROCESSOR": "brightness"})
    await run_on_both_doors(
        worker, demo_assets, name="brightness", params={"threshold": 0.0}, expected="bright"
    )


async def run_on_both_doors(
    worker: WorkerProcess,
    demo_assets: DemoAssets,
    *,
    name: str,
    params: dict[str, Any],
    expected: str,
) -> None:
    """Run processor ``name`` with ``params`` on both doors of ``worker`` (whose
    ``PTW_STREAM_PROCESSOR`` names it): the stream door's data channel and the CMS door's
    ``imageDetection`` must both report class ``expected``; an unknown processor name is an
    ``error`` reply."""
    async with trickle_channels(MID) as base:
        await _on_both_doors(worker, demo_assets, base, name, params, expected)


async def _on_both_doors(
    worker: WorkerProcess,
    demo_assets: DemoAssets,
    base: str,
    name: str,
    params: dict[str, Any],
    expected: str,
) -> None:
    worker.start()
    try:
        await worker.wait_status("/health/ready", 200, within_s=WAIT_S)
        async with aiohttp.ClientSession() as http:
            # The stream door runs the processor PTW_STREAM_PROCESSOR names.
            start = {
                "gateway_request_id": MID,
                "subscribe_url": base,
                "data_url": base + "-data",
                "params": params,
            }
            await _json(http, "POST", worker.base + "/api/stream/start", json=start)
            data = Reader(base + "-data", jsonl).start()
            publisher = TricklePublisher(base, "video/mp2t")
            for segment in synthetic_segments():
                await publisher.publish(segment)
            await data.until(lambda batches: len(batches) > 0, timeout=WAIT_S)
            # The first record is at the first frame analysed: pts 0, or later when the
            # decoder dropped the oldest frames to stay live (a loaded machine).
            [first, *_] = [record for batch in data.items for record in batch]
            assert first["detection"]["class"] == expected, first
            status = await _json(http, "GET", worker.base + "/api/stream/status")
            assert status["current_params"]["params"] == params, status
            await _json(http, "POST", worker.base + "/api/stream/stop")
            await publisher.close(delete=False)
            await data.close()

            # The CMS door: a processor:// modelUrl names the processor and its params.
            backend = Backend(await http.ws_connect(worker.base + "/"), http)
            subscribe = {
                "rtspUrl": str(demo_assets.video_path),
                "modelName": name,
                "modelId": 7,
            }
            query = "&".join(f"{key}={json.dumps(value)}" for key, value in params.items())
            await backend.send(
                "subscribe",
                {
                    **subscribe,
                    "subscriptionIdentifier": "display-1;cam-1",
                    "modelUrl": f"processor://{name}?{query}",
                },
            )
            message = await backend.wait_for(
                lambda m: m.get("type") == "imageDetection", timeout=WAIT_S, what="a detection"
            )
            detection = message["data"]["detection"]
            assert detection["class"] == expected and detection["confidence"] >= 0, message
            assert message["data"]["modelId"] == 7, message
            after = backend.mark()
            await backend.send(
                "subscribe",
                {
                    **subscribe,
                    "subscriptionIdentifier": "display-1;cam-2",
                    "modelUrl": "processor://nope",
                },
            )
            error = await backend.wait_for(
                lambda m: m.get("type") == "error", after=after, timeout=WAIT_S, what="an error"
            )
            assert "unknown processor 'nope'" in error["error"], error
            await backend.close()
    finally:
        code = worker.stop()
    assert code == 0, worker.log()
