"""The pipeline engine end to end: real archives, real onnxruntime inference, real Redis."""

from __future__ import annotations

import asyncio
import json
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import redis.asyncio as aioredis

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.core.errors import ModelError, MptaError
from pytrickle_worker.devtools.models import (
    build_colour_classifier,
    build_colour_detector,
    build_model_with_output_shape,
)
from pytrickle_worker.devtools.synthetic import (
    BADGE_COLOURS,
    SceneObject,
    colour_for_confidence,
    moving_objects,
    render_scene,
)
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.engine.tracking.bytetrack import TrackerState
from pytrickle_worker.sources.frame import DecodedFrame
from tests.helpers import RedisProcess


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("models")
    return {
        "detector.onnx": build_colour_detector(out / "detector.onnx", "v8").read_bytes(),
        "classifier.onnx": build_colour_classifier(out / "classifier.onnx").read_bytes(),
        "weird.onnx": build_model_with_output_shape(out / "weird.onnx", [1, 3, 4, 5]).read_bytes(),
    }


def make_mpta(
    path: Path,
    pipeline: dict[str, Any],
    files: dict[str, bytes],
    redis: dict[str, Any] | None = None,
) -> str:
    manifest: dict[str, Any] = {"pipeline": pipeline}
    if redis is not None:
        manifest["redis"] = redis
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{path.stem}/pipeline.json", json.dumps(manifest))
        for name, data in files.items():
            archive.writestr(f"{path.stem}/{name}", data)
    return str(path)


def node(
    model_id: str,
    model_file: str,
    triggers: list[str],
    min_conf: float = 0.5,
    crop: bool = False,
    branches: list[dict[str, Any]] | None = None,
    actions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "modelId": model_id,
        "modelFile": model_file,
        "triggerClasses": triggers,
        "minConfidence": min_conf,
        "crop": crop,
        "branches": branches or [],
        "actions": actions or [],
    }


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[PipelineService]:
    config = WorkerConfig(cache_dir=tmp_path / "cache", execution_provider="cpu")
    async with PipelineService(config) as svc:
        yield svc


CAR = SceneObject("car", (100, 80, 260, 200), badge="yellow")
PERSON = SceneObject("person", (400, 60, 480, 300))
TRUCK = SceneObject("truck", (300, 320, 560, 440), badge="white")


def scene(*objects: SceneObject) -> np.ndarray:
    return render_scene(640, 480, objects)


async def test_root_detection_respects_trigger_classes_and_min_confidence(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    car_at_08 = SceneObject("car", CAR.box, colour=colour_for_confidence("car", 0.8))
    frame = scene(car_at_08, PERSON)

    only_cars = await service.load(
        make_mpta(tmp_path / "a.mpta", node("det", "detector.onnx", ["car"], 0.5), model_files)
    )
    result = await service.process(only_cars, frame)
    # The person is more confident, but it is not a trigger class.
    assert result.detection is not None
    assert result.detection["class"] == "car"
    assert result.detection["confidence"] == pytest.approx(0.8, abs=0.01)
    assert result.bbox is not None
    assert np.allclose(result.bbox, CAR.box, atol=2)

    both = await service.load(
        make_mpta(tmp_path / "b.mpta", node("det", "detector.onnx", ["car", "person"]), model_files)
    )
    result = await service.process(both, frame)
    assert result.detection is not None and result.detection["class"] == "person"

    strict = await service.load(
        make_mpta(tmp_path / "c.mpta", node("det", "detector.onnx", ["car"], 0.85), model_files)
    )
    result = await service.process(strict, frame)
    assert result.detection is None and result.bbox is None
    assert [n.class_name for n in result.nodes] == [None]


async def test_crop_branch_classifies_the_detected_region(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    tree = node(
        "det",
        "detector.onnx",
        ["car", "truck"],
        branches=[
            node("truck-cls", "classifier.onnx", ["truck"], crop=True),
            node("car-cls", "classifier.onnx", ["car"], crop=True),
        ],
    )
    pipeline = await service.load(make_mpta(tmp_path / "p.mpta", tree, model_files))
    frame = scene(CAR, PERSON)
    result = await service.process(pipeline, frame, TrackerState(frame_rate=5))
    assert result.detection is not None
    assert result.detection["class"] == "yellow"
    assert result.detection["confidence"] > 0.9
    # The classification keeps the parent's bbox and track id.
    assert np.allclose(result.bbox or (), CAR.box, atol=2)
    assert result.detection["id"] == 1
    assert [(n.model_id, n.class_name) for n in result.nodes] == [
        ("det", "car"),
        ("car-cls", "yellow"),
    ]
    assert result.nodes[1].bbox is None and result.nodes[0].ms > 0
    # The actions' image is what the branch saw: the crop.
    assert result.action_node is not None and result.action_node.spec.model_id == "car-cls"
    assert result.action_image is not None
    assert result.action_image.shape[:2] == (CAR.box[3] - CAR.box[1], CAR.box[2] - CAR.box[0])


async def test_a_classifier_branch_sees_its_whole_crop_squashed(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    # The original resized every crop to 224x224 for its branch: an archive's classifier was
    # made for the whole object. A centre crop of this 5:1 car would show it the badge alone
    # (the demo classifier reads the middle of its input); squashed, it sees the whole band.
    tree = node(
        "det",
        "detector.onnx",
        ["car"],
        branches=[node("cls", "classifier.onnx", ["car"], crop=True)],
    )
    pipeline = await service.load(make_mpta(tmp_path / "p.mpta", tree, model_files))
    frame = scene(SceneObject("car", (60, 200, 580, 300)))
    frame[225:275, 255:385] = BADGE_COLOURS["white"]  # the middle of the squashed crop
    frame[225:275, 305:335] = BADGE_COLOURS["yellow"]  # the middle of a centre crop
    result = await service.process(pipeline, frame, TrackerState(frame_rate=5))
    assert result.detection is not None and result.bbox is not None
    x1, y1, x2, y2 = result.bbox
    classifier = pipeline.root.branches[0].model
    the_crop = np.ascontiguousarray(frame[y1:y2, x1:x2])
    squashed = classifier.classify(the_crop, squash=True)
    centred = classifier.classify(the_crop)
    assert centred.class_name == "yellow"  # what a centre crop would have answered
    assert squashed.class_name == "white"
    assert result.detection["class"] == squashed.class_name
    assert result.detection["confidence"] == pytest.approx(squashed.confidence, abs=1e-3)
    # A crop of ordinary shape still reads its badge.
    result = await service.process(pipeline, scene(CAR), TrackerState(frame_rate=5))
    assert result.detection is not None and result.detection["class"] == "yellow"


async def test_branch_without_crop_sees_the_full_frame(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    tree = node("det", "detector.onnx", ["car"], branches=[node("cls", "classifier.onnx", ["car"])])
    pipeline = await service.load(make_mpta(tmp_path / "p.mpta", tree, model_files))
    frame = scene(CAR)
    result = await service.process(pipeline, frame)
    assert result.action_image is frame
    # The centre of the full frame is background, not the car's yellow badge.
    assert result.detection is not None and result.detection["class"] != "yellow"


def decoded_scene(*objects: SceneObject) -> DecodedFrame:
    """The scene as a camera reader publishes it: a decoder's (YUV) frame, RGB not made yet."""
    rgb = scene(*objects)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    return DecodedFrame(1, 0.0, None, frame)


async def test_decoded_frame_is_converted_only_for_crops_and_actions(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    """The CMS door passes decoded frames: the detector scales the decoder's frame itself,
    and the full RGB is made only when a crop or an action's image needs it."""
    detect_only = await service.load(
        make_mpta(tmp_path / "a.mpta", node("det", "detector.onnx", ["car"]), model_files)
    )
    pixels = decoded_scene(CAR, PERSON)
    result = await service.process(detect_only, pixels, TrackerState(frame_rate=5))
    assert result.detection is not None and result.detection["class"] == "car"
    assert np.allclose(result.bbox or (), CAR.box, atol=2)
    assert pixels.rgb_ready is None and result.action_image is None

    cropped = await service.load(
        make_mpta(
            tmp_path / "b.mpta",
            node(
                "det",
                "detector.onnx",
                ["car"],
                branches=[node("car-cls", "classifier.onnx", ["car"], crop=True)],
            ),
            model_files,
        )
    )
    pixels = decoded_scene(CAR, PERSON)
    result = await service.process(cropped, pixels, run_actions=False)
    assert result.detection is not None and result.detection["class"] == "yellow"
    assert pixels.rgb_ready is not None  # the crop needed it
    assert result.action_image is not None
    assert result.action_image.shape[:2] == (CAR.box[3] - CAR.box[1], CAR.box[2] - CAR.box[0])

    with_actions = await service.load(
        make_mpta(
            tmp_path / "c.mpta",
            node(
                "det",
                "detector.onnx",
                ["car"],
                actions=[{"type": "redis_publish", "channel": "x", "message": "{class}"}],
            ),
            model_files,
        )
    )
    pixels = decoded_scene(CAR)
    result = await service.process(with_actions, pixels, run_actions=False)
    assert result.detection is not None and result.action_image is pixels.rgb_ready
    assert result.action_image is not None and result.action_image.shape == (480, 640, 3)


async def test_branch_min_confidence_gates_on_parent_confidence(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    tree = node(
        "det",
        "detector.onnx",
        ["car"],
        0.5,
        branches=[node("cls", "classifier.onnx", ["car"], 0.9, crop=True)],
        actions=[{"type": "redis_publish", "channel": "x", "message": "{class}"}],
    )
    pipeline = await service.load(make_mpta(tmp_path / "p.mpta", tree, model_files))
    weak_car = SceneObject("car", CAR.box, badge="yellow", colour=colour_for_confidence("car", 0.7))
    result = await service.process(pipeline, scene(weak_car), run_actions=False)
    # No branch qualifies: the parent's detection is the result, and its actions apply.
    assert result.detection is not None and result.detection["class"] == "car"
    assert len(result.nodes) == 1
    assert result.action_node is not None and result.action_node.spec.model_id == "det"

    result = await service.process(pipeline, scene(CAR), run_actions=False)
    assert result.detection is not None and result.detection["class"] == "yellow"


async def test_branch_for_other_class_does_not_run(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    tree = node(
        "det",
        "detector.onnx",
        ["truck"],
        branches=[node("cls", "classifier.onnx", ["car"], crop=True)],
    )
    pipeline = await service.load(make_mpta(tmp_path / "p.mpta", tree, model_files))
    result = await service.process(pipeline, scene(CAR, TRUCK))
    assert result.detection is not None and result.detection["class"] == "truck"
    assert len(result.nodes) == 1


@pytest.fixture(scope="session")
def badge_detector(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A detector whose classes are badge colours: the kind of model that sits under a
    vehicle detector (a plate or badge finder), with none of its parent's classes."""
    out = tmp_path_factory.mktemp("badge")
    names = ("white", "yellow")
    path = build_colour_detector(
        out / "badges.onnx", "v8", names=names, colours={n: BADGE_COLOURS[n] for n in names}
    )
    return path.read_bytes()


async def test_a_branch_detector_triggered_by_its_parents_class_detects_its_own_classes(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes], badge_detector: bytes
) -> None:
    # triggerClasses ["car"] says when the branch runs; it names none of the badge model's
    # classes, so that model is not restricted (the original worker's reading), where
    # restricting it to "car" would find nothing.
    files = {**model_files, "badges.onnx": badge_detector}
    tree = node(
        "det",
        "detector.onnx",
        ["car"],
        branches=[node("badges", "badges.onnx", ["car"], crop=True)],
    )
    pipeline = await service.load(make_mpta(tmp_path / "p.mpta", tree, files))
    result = await service.process(pipeline, scene(CAR))
    assert result.detection is not None and result.detection["class"] == "yellow"
    assert [(n.model_id, n.class_name) for n in result.nodes] == [
        ("det", "car"),
        ("badges", "yellow"),
    ]
    # Where triggerClasses do name some of the model's classes, they restrict it.
    tree["branches"][0]["triggerClasses"] = ["car", "white"]
    pipeline = await service.load(make_mpta(tmp_path / "q.mpta", tree, files))
    result = await service.process(pipeline, scene(CAR))
    assert result.detection is not None and result.detection["class"] == "car"
    assert [(n.model_id, n.class_name) for n in result.nodes] == [
        ("det", "car"),
        ("badges", None),
    ]


async def test_when_a_branch_finds_nothing_the_next_matching_branch_runs(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes], badge_detector: bytes
) -> None:
    # As the original's run_pipeline: the branches are tried in order until one finds
    # something. The first finds no white badge on the yellow-badged car.
    files = {**model_files, "badges.onnx": badge_detector}
    tree = node(
        "det",
        "detector.onnx",
        ["car"],
        branches=[
            node("white-badges", "badges.onnx", ["car", "white"], crop=True),
            node("colour", "classifier.onnx", ["car"], crop=True),
        ],
    )
    pipeline = await service.load(make_mpta(tmp_path / "p.mpta", tree, files))
    result = await service.process(pipeline, scene(CAR))
    assert result.detection is not None and result.detection["class"] == "yellow"
    assert [(n.model_id, n.class_name) for n in result.nodes] == [
        ("det", "car"),
        ("white-badges", None),
        ("colour", "yellow"),
    ]
    assert result.action_node is not None and result.action_node.spec.model_id == "colour"


async def test_track_ids_are_stable_while_moving_and_separate_per_stream(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    pipeline = await service.load(
        make_mpta(tmp_path / "p.mpta", node("det", "detector.onnx", ["car"]), model_files)
    )
    fps = 5.0
    stream_a, stream_b = TrackerState(frame_rate=fps), TrackerState(frame_rate=fps)
    ids_a: list[int | None] = []
    for i in range(25):
        frame = render_scene(640, 360, moving_objects(i, 640, 360, fps))
        result = await service.process(pipeline, frame, stream_a)
        assert result.detection is not None
        ids_a.append(result.detection["id"])
        truth = moving_objects(i, 640, 360, fps)[0].box
        assert np.allclose(result.bbox or (), truth, atol=2)
    assert set(ids_a) == {1}

    # A second stream starts its own counter at 1, whatever the first has done.
    frame = render_scene(640, 360, moving_objects(0, 640, 360, fps))
    first_b = await service.process(pipeline, frame, stream_b)
    assert first_b.detection is not None and first_b.detection["id"] == 1


async def test_model_shared_by_two_pipelines_is_loaded_once(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    one = await service.load(
        make_mpta(tmp_path / "one.mpta", node("a", "detector.onnx", ["car"]), model_files)
    )
    two = await service.load(
        make_mpta(tmp_path / "two.mpta", node("b", "detector.onnx", ["truck"], 0.3), model_files)
    )
    assert one.root.model is two.root.model
    assert service.registry.loaded_count == 1
    await service.release(one)
    assert service.registry.loaded_count == 1
    await service.release(two)
    assert service.registry.loaded_count == 0


@pytest.mark.parametrize(
    ("files", "pipeline", "message"),
    [
        (
            {},
            node("det", "missing.onnx", ["car"]),
            r"pipeline\.modelFile 'missing\.onnx' not found",
        ),
        (
            {"det.pt": b"torch", "cls.pt": b"torch", "classifier.onnx": None},
            node(
                "det",
                "det.pt",
                ["car"],
                branches=[
                    node("ok", "classifier.onnx", ["car"]),
                    node("cls", "cls.pt", ["car"]),
                ],
            ),
            # Every node that needs converting, at once, and the one step for them all.
            r"not ONNX: pipeline 'det\.pt' \(a PyTorch checkpoint\); "
            r"pipeline\.branches\[1\] 'cls\.pt' \(a PyTorch checkpoint\)\. "
            r"Convert the archive with `pytrickle-worker mpta convert IN\.mpta OUT\.mpta`.*"
            r"change its modelFile",
        ),
        ({"weird.onnx": None}, node("det", "weird.onnx", ["car"]), r"\[1, 3, 4, 5\]"),
        (
            {"broken.onnx": b"not a protobuf"},
            node("det", "broken.onnx", ["car"]),
            r"broken\.onnx",
        ),
    ],
    ids=["missing-model", "pt-model", "unsupported-shape", "corrupt-onnx"],
)
async def test_bad_models_give_clear_errors(
    service: PipelineService,
    tmp_path: Path,
    model_files: dict[str, bytes],
    files: dict[str, bytes | None],
    pipeline: dict[str, Any],
    message: str,
) -> None:
    contents = {
        name: data if data is not None else model_files[name] for name, data in files.items()
    }
    with pytest.raises(MptaError, match=message):
        await service.load(make_mpta(tmp_path / "bad.mpta", pipeline, contents))
    assert service.registry.loaded_count == 0


async def test_node_keys_this_worker_does_not_read_are_named_at_load(
    service: PipelineService,
    tmp_path: Path,
    model_files: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Later versions of the original read keys such as multiClass or parallel; an archive
    # written for them runs here without those semantics, and the log says so.
    tree = {**node("det", "detector.onnx", ["car"]), "multiClass": True, "parallel": True}
    with caplog.at_level("WARNING", logger="pytrickle_worker.engine.mpta.loader"):
        pipeline = await service.load(make_mpta(tmp_path / "p.mpta", tree, model_files))
    [record] = [r for r in caplog.records if "not read by this worker" in r.getMessage()]
    assert "'multiClass', 'parallel'" in record.getMessage()
    assert "pipeline (det)" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="pytrickle_worker.engine.mpta.loader"):
        plain = await service.load(
            make_mpta(tmp_path / "q.mpta", node("d", "detector.onnx", ["car"]), model_files)
        )
    assert not [r for r in caplog.records if "not read by this worker" in r.getMessage()]
    await service.release(pipeline)
    await service.release(plain)


async def test_failed_branch_load_releases_the_root_model(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    tree = node("det", "detector.onnx", ["car"], branches=[node("cls", "weird.onnx", ["car"])])
    with pytest.raises(ModelError, match=r"pipeline\.branches\[0\]"):
        await service.load(make_mpta(tmp_path / "p.mpta", tree, model_files))
    assert service.registry.loaded_count == 0


async def test_actions_of_the_final_node_reach_redis(
    tmp_path: Path, model_files: dict[str, bytes], redis_server: RedisProcess
) -> None:
    tree = node(
        "det",
        "detector.onnx",
        ["car"],
        actions=[{"type": "redis_publish", "channel": "root", "message": "root {class}"}],
        branches=[
            node(
                "cls",
                "classifier.onnx",
                ["car"],
                crop=True,
                actions=[
                    {
                        "type": "redis_save_image",
                        "key": "e2e:{class}:{id}:{uuid}",
                        "expire_seconds": 60,
                    },
                    {
                        "type": "redis_publish",
                        "channel": "cls",
                        "message": '{"class":"{class}","id":{id},"image_key":"{image_key}"}',
                    },
                ],
            )
        ],
    )
    source = make_mpta(
        tmp_path / "p.mpta",
        tree,
        model_files,
        redis={"host": "127.0.0.1", "port": redis_server.port},
    )
    client = aioredis.Redis(port=redis_server.port)
    pubsub = client.pubsub()
    await pubsub.subscribe("root", "cls")
    for _ in range(2):
        await pubsub.get_message(timeout=1)
    config = WorkerConfig(cache_dir=tmp_path / "cache", execution_provider="cpu")
    try:
        async with PipelineService(config) as svc:
            pipeline = await svc.load(source)
            await svc.process(pipeline, scene(CAR), TrackerState(frame_rate=5))
            assert await svc.actions.drain(5)
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
            assert message is not None and message["channel"] == b"cls"
            payload = json.loads(message["data"])
            assert payload["class"] == "yellow" and payload["id"] == 1
            jpeg = await client.get(payload["image_key"])
            assert jpeg is not None and jpeg[:2] == b"\xff\xd8"
            assert 0 < await client.ttl(payload["image_key"]) <= 60
            # The root's own action did not run: the branch produced the result.
            assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
            await svc.release(pipeline)
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_actions_along_the_path_and_only_for_confirmed_tracks(
    tmp_path: Path,
    model_files: dict[str, bytes],
    badge_detector: bytes,
    redis_server: RedisProcess,
) -> None:
    # root (car) -> badges (a detector, with an action) -> colour (a classifier, with an
    # action): as the original ran them, both branches' actions run, with the final
    # detection; the root's does not. And with tracking, a detection whose track is not
    # confirmed yet runs none (the original's tracker returned confirmed tracks only).
    def publish(channel: str) -> dict[str, Any]:
        return {"type": "redis_publish", "channel": channel, "message": "{class}:{id}"}

    tree = node(
        "det",
        "detector.onnx",
        ["car"],
        actions=[publish("root")],
        branches=[
            node(
                "badges",
                "badges.onnx",
                ["car"],
                crop=True,
                actions=[publish("badges")],
                branches=[
                    node(
                        "colour",
                        "classifier.onnx",
                        ["yellow"],
                        crop=True,
                        actions=[publish("colour")],
                    )
                ],
            )
        ],
    )
    files = {**model_files, "badges.onnx": badge_detector}
    source = make_mpta(
        tmp_path / "p.mpta", tree, files, redis={"host": "127.0.0.1", "port": redis_server.port}
    )
    client = aioredis.Redis(port=redis_server.port)
    pubsub = client.pubsub()
    await pubsub.subscribe("root", "badges", "colour")
    for _ in range(3):
        await pubsub.get_message(timeout=1)

    async def published() -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        while (
            m := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3)
        ) is not None:
            out.append((m["channel"].decode(), m["data"].decode()))
        return sorted(out)

    config = WorkerConfig(cache_dir=tmp_path / "cache", execution_provider="cpu")
    try:
        async with PipelineService(config) as svc:
            pipeline = await svc.load(source)
            result = await svc.process(pipeline, scene(CAR, PERSON), TrackerState(frame_rate=5))
            assert result.detection is not None and result.detection["class"] == "yellow"
            track_id = result.detection["id"]
            assert track_id is not None  # the badge's track (its tracker's first frame)
            assert await svc.actions.drain(5)
            expected = f"yellow:{track_id}"
            assert await published() == [("badges", expected), ("colour", expected)]
            await svc.release(pipeline)
            # The root alone, with its action: the car appears on the tracker's second frame,
            # unconfirmed (no id) there, confirmed on the next.
            del tree["branches"]
            pipeline = await svc.load(
                make_mpta(
                    tmp_path / "root.mpta",
                    tree,
                    files,
                    redis={"host": "127.0.0.1", "port": redis_server.port},
                )
            )
            tracker = TrackerState(frame_rate=5)
            await svc.process(pipeline, scene(PERSON), tracker)  # the tracker's first frame
            result = await svc.process(pipeline, scene(CAR, PERSON), tracker)
            assert result.detection is not None and result.detection["id"] is None
            # The stream door dispatches on its own (process(run_actions=False)): the same rule.
            assert svc.dispatch_actions(pipeline, result) is False
            assert await svc.actions.drain(5)
            assert await published() == []  # not confirmed: no event
            result = await svc.process(pipeline, scene(CAR, PERSON), tracker)
            assert result.detection is not None and result.detection["id"] == 1
            assert await svc.actions.drain(5)
            assert await published() == [("root", "car:1")]
            await svc.release(pipeline)
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_a_confirmed_object_is_the_result_while_a_newcomer_scores_higher(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    # The original's track() kept only its tracker's confirmed tracks when it had any, so
    # its best box was the best confirmed object; a brand-new car scoring higher must not
    # replace the car already followed by an id-less result that the CMS never receives.
    # (The demo detector gives one box per class, so the newcomer is of another class.)
    pipeline = await service.load(
        make_mpta(tmp_path / "p.mpta", node("det", "detector.onnx", ["car", "person"]), model_files)
    )
    tracker = TrackerState(frame_rate=5)
    followed = SceneObject("car", CAR.box, colour=colour_for_confidence("car", 0.8))
    newcomer = SceneObject("person", PERSON.box, colour=colour_for_confidence("person", 0.95))
    first = await service.process(pipeline, scene(followed), tracker)
    assert first.detection is not None and first.detection["id"] == 1
    both = await service.process(pipeline, scene(followed, newcomer), tracker)
    assert both.detection is not None
    assert both.detection["id"] == 1
    assert both.detection["confidence"] == pytest.approx(0.8, abs=0.01)
    assert both.bbox is not None and np.allclose(both.bbox, CAR.box, atol=2)
    # Once the newcomer's track is confirmed, it is the best confirmed object.
    third = await service.process(pipeline, scene(followed, newcomer), tracker)
    assert third.detection is not None and third.detection["id"] == 2
    assert third.detection["class"] == "person"
    assert third.bbox is not None and np.allclose(third.bbox, PERSON.box, atol=2)
    # Without any confirmed track (a new stream's tracker has none before its first
    # frame is done) the raw detection stands, as in the original.
    alone = await service.process(pipeline, scene(newcomer), TrackerState(frame_rate=5))
    assert alone.detection is not None and alone.detection["confidence"] > 0.9


async def test_a_classifier_root_runs_its_actions_when_the_stream_tracks(
    tmp_path: Path, model_files: dict[str, bytes], redis_server: RedisProcess
) -> None:
    # A CMS subscription always hands the pipeline a tracker; a classifier root has nothing
    # to track and its results carry no id, yet the original ran its actions every frame.
    tree = node(
        "colour",
        "classifier.onnx",
        [],
        actions=[{"type": "redis_publish", "channel": "root", "message": "{class}:{id}"}],
    )
    source = make_mpta(
        tmp_path / "p.mpta",
        tree,
        model_files,
        redis={"host": "127.0.0.1", "port": redis_server.port},
    )
    client = aioredis.Redis(port=redis_server.port)
    pubsub = client.pubsub()
    await pubsub.subscribe("root")
    await pubsub.get_message(timeout=1)
    config = WorkerConfig(cache_dir=tmp_path / "cache", execution_provider="cpu")
    try:
        async with PipelineService(config) as svc:
            pipeline = await svc.load(source)
            result = await svc.process(pipeline, scene(CAR), TrackerState(frame_rate=5))
            assert result.detection is not None and result.detection["id"] is None
            assert result.tracked is False
            assert await svc.actions.drain(5)
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
            assert message is not None
            assert message["data"].decode() == f"{result.detection['class']}:null"
            await svc.release(pipeline)
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_concurrent_frames_of_many_streams(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    """Several streams sharing one pipeline run concurrently and keep their own ids."""
    pipeline = await service.load(
        make_mpta(tmp_path / "p.mpta", node("det", "detector.onnx", ["car", "truck"]), model_files)
    )
    trackers = [TrackerState(frame_rate=5) for _ in range(4)]
    frame = scene(CAR)
    results = await asyncio.gather(*(service.process(pipeline, frame, t) for t in trackers))
    assert all(r.detection is not None and r.detection["id"] == 1 for r in results)


async def test_frame_must_be_rgb_uint8(
    service: PipelineService, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    pipeline = await service.load(
        make_mpta(tmp_path / "p.mpta", node("det", "detector.onnx", ["car"]), model_files)
    )
    with pytest.raises(ValueError, match="uint8 RGB"):
        await service.process(pipeline, np.zeros((10, 10), np.uint8))
