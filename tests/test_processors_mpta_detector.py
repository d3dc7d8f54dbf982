"""MptaDetectorProcessor on frames of the demo scene: real archives, real onnxruntime."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from processors.mpta_detector import MptaDetectorProcessor
from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.devtools.synthetic import (
    SceneObject,
    colour_for_confidence,
    moving_objects,
    render_scene,
)
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.processing import ParamsError, VideoFrame
from pytrickle_worker.processing.annotate import class_colour

W, H, FPS = 640, 360, 30
TB = Fraction(1, 90_000)


def video_frame(index: int, objects: list[SceneObject] | None = None) -> VideoFrame:
    scene = moving_objects(index, W, H, FPS) if objects is None else objects
    return VideoFrame(render_scene(W, H, scene), index * 90_000 // FPS, TB)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[PipelineService]:
    config = WorkerConfig(cache_dir=tmp_path / "cache", execution_provider="cpu")
    async with PipelineService(config) as svc:
        yield svc


@pytest.fixture
async def detector(
    service: PipelineService, demo_assets: DemoAssets
) -> AsyncIterator[MptaDetectorProcessor]:
    processor = MptaDetectorProcessor(service)
    await processor.load_model()  # no default: nothing to load
    yield processor
    await processor.close()


def mpta(demo_assets: DemoAssets) -> str:
    return str(demo_assets.mpta_path)


def outline_is(rgb: np.ndarray, bbox: list[int], colour: tuple[int, int, int]) -> bool:
    """All four edges of the box outline (mid-points, both pixels of a 2 px line)."""
    x1, y1, x2, y2 = bbox
    mx, my = (x1 + x2) // 2, (y1 + y2) // 2
    points = [
        (y1, mx),
        (y1 + 1, mx),
        (y2 - 1, mx),
        (y2 - 2, mx),
        (my, x1),
        (my, x1 + 1),
        (my, x2 - 1),
        (my, x2 - 2),
    ]
    return all(tuple(int(v) for v in rgb[y, x]) == colour for y, x in points)


async def test_boxes_are_drawn_where_the_objects_are(
    detector: MptaDetectorProcessor, demo_assets: DemoAssets
) -> None:
    await detector.on_stream_start({"model_url": mpta(demo_assets)})
    frame = video_frame(0)
    before = frame.rgb.copy()
    car, truck = moving_objects(0, W, H, FPS)

    out = await detector.process_video_async(frame)

    assert out is not None and out.pts == frame.pts and out.time_base == TB
    assert np.array_equal(frame.rgb, before), "the input frame must not be drawn on"
    [record] = detector.take_data()
    bbox = record["bbox"]
    assert np.allclose(bbox, car.box, atol=2)
    assert outline_is(out.rgb, bbox, class_colour("car"))
    # Inside the box (the badge) and the truck are untouched: only the best object is boxed.
    cx, cy = (bbox[0] + bbox[2]) // 2, (bbox[1] + bbox[3]) // 2
    assert np.array_equal(out.rgb[cy, cx], before[cy, cx])
    tx1, ty1, tx2, ty2 = truck.box
    assert np.array_equal(out.rgb[ty1:ty2, tx1:tx2], before[ty1:ty2, tx1:tx2])
    # The label tag sits right above the box, in the box colour.
    tag_row = out.rgb[bbox[1] - 1, bbox[0] : bbox[0] + 20]
    assert (tag_row == np.array(class_colour("car"), np.uint8)).all(axis=1).any()
    # Nothing changed far from the box and the tag.
    assert np.array_equal(out.rgb[H - 5 :, : W // 2], before[H - 5 :, : W // 2])


async def test_annotate_off_leaves_pixels_unchanged(
    detector: MptaDetectorProcessor, demo_assets: DemoAssets
) -> None:
    await detector.on_stream_start({"model_url": mpta(demo_assets), "annotate": False})
    frame = video_frame(5)
    before = frame.rgb.copy()
    out = await detector.process_video_async(frame)
    assert out is not None
    assert np.array_equal(out.rgb, before)
    assert len(detector.take_data()) == 1  # still detects


async def test_take_data_records(detector: MptaDetectorProcessor, demo_assets: DemoAssets) -> None:
    await detector.on_stream_start({"mpta_url": mpta(demo_assets)})
    frames = [video_frame(i) for i in range(3)]
    for frame in frames:
        await detector.process_video_async(frame)
    records = detector.take_data()
    assert [r["pts"] for r in records] == [f.pts for f in frames]
    first = records[0]
    assert set(first) == {"timestamp_ms", "pts", "detection", "bbox", "nodes"}
    assert isinstance(first["timestamp_ms"], int) and first["timestamp_ms"] > 1_600_000_000_000
    # The deepest result: the badge classifier's class, with the car's box and track id.
    assert first["detection"]["class"] == "yellow"
    assert first["detection"]["confidence"] == pytest.approx(1.0, abs=0.01)
    assert {r["detection"]["id"] for r in records} == {1}
    assert [n["modelId"] for n in first["nodes"]] == [
        "demo-vehicle-detector",
        "demo-badge-classifier",
    ]
    assert first["nodes"][0]["class"] == "car"
    assert len(first["bbox"]) == 4
    assert detector.take_data() == []


async def test_min_confidence_override(
    detector: MptaDetectorProcessor, demo_assets: DemoAssets
) -> None:
    car = SceneObject("car", (100, 80, 260, 200), colour=colour_for_confidence("car", 0.7))
    await detector.on_stream_start({"model_url": mpta(demo_assets)})
    await detector.process_video_async(video_frame(0, [car]))
    [record] = detector.take_data()
    assert record["nodes"][0]["confidence"] == pytest.approx(0.7, abs=0.01)

    await detector.apply_params({"min_confidence": 0.8})  # above the car's confidence
    frame = video_frame(1, [car])
    out = await detector.process_video_async(frame)
    assert out is not None and np.array_equal(out.rgb, frame.rgb)
    assert detector.take_data() == []

    await detector.apply_params({"min_confidence": None})  # back to the pipeline's 0.5
    await detector.process_video_async(video_frame(2, [car]))
    assert len(detector.take_data()) == 1

    # At stream start too.
    await detector.on_stream_stop()
    await detector.on_stream_start({"model_url": mpta(demo_assets), "min_confidence": 0.75})
    await detector.process_video_async(video_frame(0, [car]))
    assert detector.take_data() == []


async def test_trigger_classes_override(
    detector: MptaDetectorProcessor, demo_assets: DemoAssets
) -> None:
    await detector.on_stream_start({"model_url": mpta(demo_assets), "trigger_classes": ["truck"]})
    _, truck = moving_objects(0, W, H, FPS)
    out = await detector.process_video_async(video_frame(0))
    [record] = detector.take_data()
    assert record["detection"]["class"] == "truck"  # the badge branch only runs on cars
    assert np.allclose(record["bbox"], truck.box, atol=2)
    assert out is not None and outline_is(out.rgb, record["bbox"], class_colour("truck"))

    # "person" exists in the model but not in the scene: nothing is found.
    await detector.apply_params({"trigger_classes": ["person"]})
    await detector.process_video_async(video_frame(1))
    assert detector.take_data() == []

    with pytest.raises(ParamsError, match=r"trigger_classes: 'bus' not in the root model"):
        await detector.apply_params({"trigger_classes": ["bus"]})
    assert detector.params.trigger_classes == ["person"]

    await detector.apply_params({"trigger_classes": None})
    await detector.process_video_async(video_frame(2))
    [record] = detector.take_data()
    # The car is new to the tracker: the truck, already confirmed, stays the result (as the
    # original's track() reported confirmed tracks only); confirmed a frame later, the more
    # confident car is.
    assert record["nodes"][0]["class"] == "truck"
    await detector.process_video_async(video_frame(3))
    [record] = detector.take_data()
    assert record["nodes"][0]["class"] == "car"


async def test_target_fps_analyses_some_frames_and_annotates_all(
    detector: MptaDetectorProcessor, demo_assets: DemoAssets
) -> None:
    await detector.on_stream_start({"model_url": mpta(demo_assets), "target_fps": 10})
    frames = [video_frame(i) for i in range(9)]
    outputs = [await detector.process_video_async(f) for f in frames]
    records = detector.take_data()
    assert [r["pts"] for r in records] == [frames[i].pts for i in (0, 3, 6)]
    assert detector.frames_analysed == 3 and detector.frames_in == 9
    # Frames in between carry the last result's box.
    for index, out in enumerate(outputs):
        assert out is not None
        last = records[index // 3]["bbox"]
        assert outline_is(out.rgb, last, class_colour("car")), index


async def test_bad_params_are_rejected(
    detector: MptaDetectorProcessor, demo_assets: DemoAssets, tmp_path: Path
) -> None:
    url = mpta(demo_assets)
    cases: list[tuple[dict[str, object], str]] = [
        ({"model_url": url, "min_confidence": 1.5}, "min_confidence: Input should be less"),
        ({"model_url": url, "min_confidence": True}, "min_confidence: .*not a boolean"),
        ({"model_url": url, "target_fps": 0}, "target_fps: Input should be greater than 0"),
        ({"model_url": url, "annotate": "maybe"}, "annotate: Input should be a valid boolean"),
        ({"model_url": url, "trigger_classes": []}, "trigger_classes: List should have at least"),
        ({"model_url": url, "trigger_classes": "car"}, "trigger_classes: Input should be a valid"),
        ({"model_url": url, "colour": "red"}, "colour: unknown parameter"),
        ({"model_url": url, "mpta_url": url + "x"}, "name different archives"),
        ({}, "model_url: required"),
        ({"model_url": str(tmp_path / "missing.mpta")}, "model_url: cannot load"),
    ]
    for params, message in cases:
        with pytest.raises(ParamsError, match=message):
            await detector.on_stream_start(params)

    await detector.on_stream_start({"model_url": url, "min_confidence": 0.6})
    for update, message in [
        ({"min_confidence": -0.1}, "min_confidence"),
        ({"target_fps": "fast"}, "target_fps"),
        ({"nope": 1}, "nope: unknown parameter"),
    ]:
        with pytest.raises(ParamsError, match=message):
            detector.update_params(update)
    # A failed archive load changes nothing, not even the other fields of the update.
    with pytest.raises(ParamsError, match="model_url: cannot load"):
        await detector.apply_params(
            {"model_url": str(tmp_path / "missing.mpta"), "min_confidence": 0.9}
        )
    assert detector.params.min_confidence == 0.6
    assert detector.model_url == url


async def test_model_switch_at_runtime(
    detector: MptaDetectorProcessor, demo_assets: DemoAssets, tmp_path: Path
) -> None:
    await detector.on_stream_start({"model_url": mpta(demo_assets)})
    first = detector.pipeline
    other = tmp_path / "other.mpta"
    shutil.copy(demo_assets.mpta_path, other)

    await detector.apply_params({"model_url": str(other)})  # awaited: in effect on return
    assert detector.model_url == str(other)
    assert detector.pipeline is not first and first is not None and first.released
    await detector.process_video_async(video_frame(0))
    assert len(detector.take_data()) == 1

    # The synchronous path (control channel) loads in the background, frames keep flowing.
    detector.update_params({"model_url": mpta(demo_assets)})
    assert detector.model_url == str(other)
    await detector.process_video_async(video_frame(1))
    for _ in range(200):
        if detector.model_url == mpta(demo_assets):
            break
        await asyncio.sleep(0.01)
    assert detector.model_url == mpta(demo_assets)


async def test_default_model_and_fresh_track_ids_per_stream(
    service: PipelineService, demo_assets: DemoAssets
) -> None:
    processor = MptaDetectorProcessor(service, default_model_url=mpta(demo_assets))
    try:
        await processor.load_model()
        assert processor.model_url == mpta(demo_assets)
        loaded = processor.pipeline
        for _ in range(2):
            await processor.on_stream_start({})
            assert processor.pipeline is loaded  # same archive: no reload between streams
            for index in range(3):
                await processor.process_video_async(video_frame(index))
            assert {r["detection"]["id"] for r in processor.take_data()} == {1}
            await processor.on_stream_stop()
        assert processor.current_params()["loaded_model_url"] == mpta(demo_assets)
    finally:
        await processor.close()


async def test_model_url_hosts_guard(tmp_path: Path, demo_assets: DemoAssets) -> None:
    config = WorkerConfig(
        cache_dir=tmp_path / "cache", execution_provider="cpu", model_url_hosts=["models.local"]
    )
    async with PipelineService(config) as service:
        processor = MptaDetectorProcessor(service)
        try:
            with pytest.raises(ParamsError, match=r"local archives .* are not accepted"):
                await processor.on_stream_start({"model_url": mpta(demo_assets)})
            with pytest.raises(ParamsError, match=r"host 'evil\.example' is not allowed"):
                await processor.on_stream_start({"model_url": "http://evil.example/x.mpta"})
        finally:
            await processor.close()
