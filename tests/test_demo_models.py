"""The hand-built demo models, run with real onnxruntime on rendered scenes.

The inputs are prepared here (pad or stretch, /255, NCHW) so these tests do not
depend on the worker's own letterbox.
"""

from __future__ import annotations

import ast
import json
import logging
import shutil
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import av
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.devtools import assets as demo_assets_module
from pytrickle_worker.devtools.__main__ import main as demo_main
from pytrickle_worker.devtools.assets import (
    ASSETS_VERSION,
    SAMPLE_FPS,
    DemoAssets,
    build_demo_assets,
    build_mpta,
    demo_pipeline_json,
)
from pytrickle_worker.devtools.models import (
    COCO_NAMES,
    E2E_MAX_DET,
    build_colour_classifier,
    build_colour_detector,
    build_model_with_output_shape,
    build_yolov8n_like,
)
from pytrickle_worker.devtools.synthetic import (
    BADGE_COLOURS,
    CLASS_COLOURS,
    CLASSIFIER_NAMES,
    DETECTOR_NAMES,
    LETTERBOX_PAD,
    SceneObject,
    badge_box,
    colour_for_confidence,
    expected_confidence,
    moving_objects,
    render_scene,
)

Image = npt.NDArray[np.uint8]
Box = tuple[int, int, int, int]

ULTRALYTICS_KEYS = [
    "description",
    "author",
    "date",
    "version",
    "license",
    "docs",
    "stride",
    "task",
    "batch",
    "imgsz",
    "names",
    "args",
    "channels",
]

CAR = SceneObject("car", (100, 50, 260, 130), badge="white")
TRUCK = SceneObject("truck", (300, 200, 500, 300), colour=colour_for_confidence("truck", 0.6))
PERSON = SceneObject("person", (10, 10, 30, 60))
SCENE = [CAR, TRUCK, PERSON]
# The 640x360 scene sits at this offset in the 640x640 model input.
TOP = 140


# --------------------------------------------------------------------------- helpers


def pad_to(image: Image, size: tuple[int, int], top: int = 0, left: int = 0) -> Image:
    """Place ``image`` on a (height, width) canvas of letterbox grey."""
    canvas = np.empty((*size, 3), dtype=np.uint8)
    canvas[:] = LETTERBOX_PAD
    h, w = image.shape[:2]
    canvas[top : top + h, left : left + w] = image
    return canvas


def to_input(image: Image) -> npt.NDArray[np.float32]:
    return (image.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None].copy()


def stretch(image: Image, size: int) -> Image:
    """Nearest-neighbour resize to size x size (ignores the aspect ratio)."""
    h, w = image.shape[:2]
    ys = (np.arange(size) * h) // size
    xs = (np.arange(size) * w) // size
    return image[ys][:, xs]


def resize_centre_crop(image: Image, size: int) -> Image:
    """Nearest resize of the short side to ``size``, then centre crop (ultralytics classify)."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    ys = np.minimum((np.arange(nh) / scale).astype(int), h - 1)
    xs = np.minimum((np.arange(nw) / scale).astype(int), w - 1)
    resized = image[ys][:, xs]
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top : top + size, left : left + size]


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def infer(sess: ort.InferenceSession, image: Image) -> npt.NDArray[np.float32]:
    output = cast("list[object]", sess.run(["output0"], {"images": to_input(image)}))[0]
    assert isinstance(output, np.ndarray)
    return np.asarray(output, dtype=np.float32)


def run(path: Path, image: Image) -> npt.NDArray[np.float32]:
    return infer(session(path), image)


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def shifted(box: Box, dx: int = 0, dy: int = 0) -> Box:
    return (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)


def xywh_to_xyxy(column: Sequence[float] | npt.NDArray[np.float32]) -> list[float]:
    cx, cy, w, h = (float(v) for v in column[:4])
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("demo-models")
    return {
        "v8": build_colour_detector(out / "v8.onnx", "v8"),
        "v5": build_colour_detector(out / "v5.onnx", "v5"),
        "e2e": build_colour_detector(out / "e2e.onnx", "e2e"),
        "classifier": build_colour_classifier(out / "classifier.onnx"),
    }


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, float]:
    path = tmp_path_factory.mktemp("bench") / "yolov8n_like.onnx"
    stats = build_yolov8n_like(path)
    return path, stats.params, stats.gflops


@pytest.fixture(scope="module")
def scene_input() -> Image:
    return pad_to(render_scene(640, 360, SCENE), (640, 640), top=TOP)


# --------------------------------------------------------------------------- synthetic


def test_render_scene_draws_objects_badges_and_a_distinct_background() -> None:
    objects = [SceneObject("car", (10, 20, 110, 80), badge="yellow")]
    image = render_scene(320, 200, objects, seed=3)
    assert image.shape == (200, 320, 3) and image.dtype == np.uint8
    assert np.array_equal(image, render_scene(320, 200, objects, seed=3))
    assert not np.array_equal(image, render_scene(320, 200, objects, seed=4))
    bx1, by1, bx2, by2 = badge_box((10, 20, 110, 80))
    assert (bx2 - bx1, by2 - by1) == (24, 24)  # 40% of the short side, centred
    assert (bx1 + bx2) / 2 == pytest.approx(60, abs=1) and (by1 + by2) / 2 == pytest.approx(
        50, abs=1
    )
    assert np.all(image[by1:by2, bx1:bx2] == BADGE_COLOURS["yellow"])
    assert np.all(image[20:80, 10:bx1] == CLASS_COLOURS["car"])
    background = image[100:, 150:].reshape(-1, 3).astype(np.float64)
    assert 80 < background.mean() < 100 and background.std() > 1.0
    for colour in CLASS_COLOURS.values():
        # Background, pad grey and badges are far from every class prototype.
        assert np.linalg.norm(background - np.asarray(colour), axis=1).min() > 100
        for other in [LETTERBOX_PAD, *BADGE_COLOURS.values()]:
            assert np.linalg.norm(np.subtract(colour, other)) > 100
    with pytest.raises(ValueError, match="unknown class"):
        render_scene(10, 10, [SceneObject("boat", (0, 0, 5, 5))])
    # Boxes past the border are clipped.
    clipped = render_scene(50, 40, [SceneObject("person", (-10, -10, 20, 15))])
    assert np.all(clipped[:15, :20] == CLASS_COLOURS["person"])


def test_colour_for_confidence_follows_the_documented_relation() -> None:
    for name in DETECTOR_NAMES:
        assert colour_for_confidence(name, 1.0) == CLASS_COLOURS[name]
        for confidence in (0.95, 0.8, 0.6, 0.51):
            colour = colour_for_confidence(name, confidence)
            assert expected_confidence(name, colour) == pytest.approx(confidence, abs=0.006)
        assert expected_confidence(name, colour_for_confidence(name, 0.5001)) == pytest.approx(0.51)
    assert expected_confidence("car", (170, 40, 40)) == 0.0  # distance 50: not in the mask
    with pytest.raises(ValueError, match=r"\(0.5, 1.0\]"):
        colour_for_confidence("car", 0.5)


def test_moving_objects_is_smooth_deterministic_and_inside_the_frame() -> None:
    fps = 15.0
    previous: list[SceneObject] | None = None
    for index in range(0, 20 * 15 + 1):
        objects = moving_objects(index, 640, 360, fps)
        assert objects == moving_objects(index, 640, 360, fps)
        car, truck = objects
        assert (car.class_name, car.badge, truck.class_name) == ("car", "yellow", "truck")
        for obj in objects:
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360
        assert car.box[3] < truck.box[1]  # never overlap
        if previous is not None:
            for now, before in zip(objects, previous, strict=True):
                assert max(abs(a - b) for a, b in zip(now.box, before.box, strict=True)) <= 6
        previous = objects
    # The same time gives the same position at any frame rate; the car crosses in 10 s.
    assert moving_objects(30, 640, 360, 15.0) == moving_objects(10, 640, 360, 5.0)
    assert moving_objects(0, 640, 360, 15.0)[0].box[0] < 40
    assert moving_objects(150, 640, 360, 15.0)[0].box[2] > 600


# --------------------------------------------------------------------------- detector


def test_v8_contract_boxes_are_pixel_exact(models: dict[str, Path], scene_input: Image) -> None:
    out = run(models["v8"], scene_input)
    nc = len(DETECTOR_NAMES)
    assert out.shape == (1, 4 + nc, 2 * nc)
    for obj in SCENE:
        c = DETECTOR_NAMES.index(obj.class_name)
        primary, duplicate = out[0, :, c], out[0, :, nc + c]
        assert xywh_to_xyxy(primary) == list(shifted(obj.box, dy=TOP))
        want = 0.6 if obj is TRUCK else 1.0
        assert primary[4 + c] == pytest.approx(want, abs=1e-4)
        assert np.count_nonzero(primary[4:]) == 1  # other class rows are 0
        assert duplicate[4 + c] == pytest.approx(0.9 * want, abs=1e-4)
        assert duplicate[0] - primary[0] == 2 and duplicate[1] - primary[1] == 1
        assert np.array_equal(duplicate[2:4], primary[2:4])


def test_v8_absent_class_gives_a_zero_column(models: dict[str, Path]) -> None:
    out = run(models["v8"], pad_to(render_scene(640, 360, [CAR]), (640, 640), top=TOP))
    nc = len(DETECTOR_NAMES)
    for c in (0, 2):
        assert not out[0, :, c].any() and not out[0, :, nc + c].any()
    assert out[0, 4 + 1, 1] == pytest.approx(1.0)


def test_v5_contract(models: dict[str, Path], scene_input: Image) -> None:
    out = run(models["v5"], scene_input)
    nc = len(DETECTOR_NAMES)
    assert out.shape == (1, 2 * nc, 5 + nc)
    for obj in SCENE:
        c = DETECTOR_NAMES.index(obj.class_name)
        row = out[0, c]
        assert xywh_to_xyxy(row) == list(shifted(obj.box, dy=TOP))
        conf = row[4] * row[5:]
        assert int(np.argmax(conf)) == c
        assert conf[c] == pytest.approx(0.6 if obj is TRUCK else 1.0, abs=1e-4)
        assert out[0, nc + c, 4] == pytest.approx(0.9 * conf[c], abs=1e-4)
    assert metadata(models["v5"]) == {
        "stride": "32",
        "names": "{0: 'person', 1: 'car', 2: 'truck'}",
    }


def test_e2e_contract(models: dict[str, Path], scene_input: Image) -> None:
    out = run(models["e2e"], scene_input)
    assert out.shape == (1, E2E_MAX_DET, 6)
    rows = out[0]
    assert not rows[3:].any()  # zero padding after the three detections
    assert list(rows[:3, 4]) == sorted(rows[:3, 4], reverse=True)
    found = {int(r[5]): r for r in rows[:3]}
    for obj in SCENE:
        row = found[DETECTOR_NAMES.index(obj.class_name)]
        assert list(row[:4]) == list(shifted(obj.box, dy=TOP))
        assert row[4] == pytest.approx(0.6 if obj is TRUCK else 1.0, abs=1e-4)
    assert metadata(models["e2e"])["end2end"] == "True"
    empty = run(models["e2e"], pad_to(render_scene(640, 360, []), (640, 640), top=TOP))
    assert not empty.any()


@pytest.mark.parametrize("confidence", [1.0, 0.9, 0.75, 0.6, 0.52])
def test_detector_confidence_matches_the_colour_relation(
    models: dict[str, Path], confidence: float
) -> None:
    colour = colour_for_confidence("car", confidence)
    image = pad_to(render_scene(640, 360, [SceneObject("car", CAR.box, colour=colour)]), (640, 640))
    out = run(models["v8"], image)
    assert out[0, 4 + 1, 1] == pytest.approx(expected_confidence("car", colour), abs=1e-4)
    assert out[0, 4 + 1, 1] == pytest.approx(confidence, abs=0.006)
    assert xywh_to_xyxy(out[0, :, 1]) == list(CAR.box)


def test_detector_ignores_far_colours_and_tiny_objects(models: dict[str, Path]) -> None:
    far = SceneObject("car", CAR.box, colour=(170, 40, 40))  # distance 50 from the prototype
    tiny = SceneObject("truck", (400, 100, 403, 105))  # 15 pixels
    small = SceneObject("person", (500, 100, 504, 104))  # 16 pixels: detected
    out = run(models["v8"], pad_to(render_scene(640, 360, [far, tiny, small]), (640, 640)))
    assert not out[0, :, 1].any() and not out[0, :, 2].any()
    assert out[0, 4, 0] == pytest.approx(1.0)
    assert xywh_to_xyxy(out[0, :, 0]) == [500, 100, 504, 104]
    # Pad grey alone, and badges alone, are not objects.
    badges = [
        SceneObject("car", (50 + 100 * i, 50, 130 + 100 * i, 130), colour=c)
        for i, c in enumerate(BADGE_COLOURS.values())
    ]
    assert not run(models["v8"], pad_to(render_scene(640, 360, badges), (640, 640)))[0, :, :].any()


def test_detector_non_square_input_and_custom_names(tmp_path: Path) -> None:
    path = build_colour_detector(tmp_path / "d.onnx", "v8", (384, 640), ["truck", "car"])
    image = render_scene(640, 384, [SceneObject("car", (5, 6, 70, 90)), TRUCK])
    out = run(path, image)
    assert out.shape == (1, 6, 4)
    assert xywh_to_xyxy(out[0, :, 1]) == [5, 6, 70, 90]
    assert xywh_to_xyxy(out[0, :, 0]) == list(TRUCK.box)
    meta = metadata(path)
    assert ast.literal_eval(meta["imgsz"]) == [384, 640]
    assert ast.literal_eval(meta["names"]) == {0: "truck", 1: "car"}
    with pytest.raises(ValueError, match="no colour prototype"):
        build_colour_detector(tmp_path / "x.onnx", names=["boat"])
    custom = build_colour_detector(tmp_path / "c.onnx", names=["boat"], colours={"boat": (0, 0, 0)})
    boat = render_scene(640, 640, [SceneObject("boat", (10, 10, 50, 50), colour=(0, 0, 0))])
    assert run(custom, boat)[0, 4, 0] == pytest.approx(1.0)


def test_detector_metadata_is_ultralytics_style(models: dict[str, Path], tmp_path: Path) -> None:
    meta = metadata(models["v8"])
    assert list(meta) == ULTRALYTICS_KEYS
    assert meta["stride"] == "32" and meta["task"] == "detect" and meta["batch"] == "1"
    assert meta["imgsz"] == "[640, 640]" and meta["channels"] == "3"
    assert meta["names"] == "{0: 'person', 1: 'car', 2: 'truck'}"
    assert isinstance(ast.literal_eval(meta["args"]), dict)
    no_names = metadata(build_colour_detector(tmp_path / "n.onnx", with_names=False))
    assert "names" not in no_names and "stride" in no_names
    model = onnx.load(str(models["v8"]))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["output0"]


# --------------------------------------------------------------------------- classifier


@pytest.mark.parametrize("badge", CLASSIFIER_NAMES)
def test_classifier_top1_is_the_badge(models: dict[str, Path], badge: str) -> None:
    # (box, also stretched?): stretching keeps the badge in the central region up
    # to an aspect ratio of about 1.6; centre-cropping at any aspect ratio.
    cases = [
        ((20, 30, 180, 150), True),
        ((20, 30, 148, 110), True),
        ((40, 20, 120, 140), True),
        ((20, 30, 228, 110), False),
        ((150, 10, 200, 230), False),
    ]
    for box, stretched in cases:
        image = render_scene(320, 240, [SceneObject("car", box, badge=badge)])
        x1, y1, x2, y2 = box
        crop = image[y1:y2, x1:x2]
        prepared = [resize_centre_crop(crop, 64)] + ([stretch(crop, 64)] if stretched else [])
        for pixels in prepared:
            probs = run(models["classifier"], pixels)
            assert probs.shape == (1, len(CLASSIFIER_NAMES))
            assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
            assert CLASSIFIER_NAMES[int(np.argmax(probs))] == badge, (box, probs)
            assert float(probs.max()) > 0.99, (box, probs)
    clean = np.empty((64, 64, 3), dtype=np.uint8)
    clean[:] = BADGE_COLOURS[badge]
    assert float(run(models["classifier"], clean)[0, CLASSIFIER_NAMES.index(badge)]) > 0.9


def test_classifier_metadata(models: dict[str, Path]) -> None:
    meta = metadata(models["classifier"])
    assert list(meta) == ULTRALYTICS_KEYS
    assert meta["task"] == "classify" and meta["imgsz"] == "[64, 64]"
    assert ast.literal_eval(meta["names"]) == dict(enumerate(CLASSIFIER_NAMES))


# --------------------------------------------------------------------------- others


@pytest.mark.parametrize("shape", [[1, 3, 4, 5], [1, 10], [2, 84, 100]])
def test_model_with_output_shape(tmp_path: Path, shape: list[int]) -> None:
    path = build_model_with_output_shape(tmp_path / "m.onnx", shape, task="segment")
    out = run(path, np.zeros((64, 64, 3), dtype=np.uint8))
    assert list(out.shape) == shape
    assert metadata(path)["task"] == "segment"
    with pytest.raises(ValueError, match="output_shape"):
        build_model_with_output_shape(tmp_path / "bad.onnx", [1, 0])


def test_yolov8n_like_structure_size_and_scores(bench_model: tuple[Path, int, float]) -> None:
    path, params, gflops = bench_model
    assert params == pytest.approx(3.2e6, rel=0.1)
    assert gflops == pytest.approx(8.7, rel=0.1)
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert {"Conv", "Sigmoid", "Mul", "Split", "Concat", "Resize", "MaxPool", "Softmax"} <= ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert list(meta) == ULTRALYTICS_KEYS
    assert ast.literal_eval(meta["names"]) == dict(enumerate(COCO_NAMES))
    frame = pad_to(render_scene(640, 360, moving_objects(0, 640, 360, 15)), (640, 640), top=TOP)
    out = run(path, frame)
    assert out.shape == (1, 84, 8400)
    assert np.isfinite(out).all()
    scores = out[0, 4:]
    assert scores.min() >= 0 and scores.max() <= 1
    passing = int((scores.max(axis=0) > 0.25).sum())
    assert 1 <= passing <= 150, passing
    wh = out[0, 2:4]
    assert (wh > 0).all() and (wh < 1000).all()


def test_yolov8n_like_other_sizes(tmp_path: Path) -> None:
    stats = build_yolov8n_like(tmp_path / "small.onnx", imgsz=320, nc=3)
    out = run(tmp_path / "small.onnx", np.full((320, 320, 3), 114, dtype=np.uint8))
    assert out.shape == (1, 7, 2100) and np.isfinite(out).all()
    assert stats.params < 3.2e6
    assert ast.literal_eval(metadata(tmp_path / "small.onnx")["names"]) == {
        0: "class0",
        1: "class1",
        2: "class2",
    }
    with pytest.raises(ValueError, match="multiple of 32"):
        build_yolov8n_like(tmp_path / "bad.onnx", imgsz=100)


def test_builders_are_deterministic(
    tmp_path: Path, models: dict[str, Path], bench_model: tuple[Path, int, float]
) -> None:
    for contract in ("v8", "v5", "e2e"):
        again = build_colour_detector(tmp_path / f"{contract}.onnx", contract)
        assert again.read_bytes() == models[contract].read_bytes()
    classifier = build_colour_classifier(tmp_path / "classifier.onnx")
    assert classifier.read_bytes() == models["classifier"].read_bytes()
    build_yolov8n_like(tmp_path / "bench.onnx")
    assert (tmp_path / "bench.onnx").read_bytes() == bench_model[0].read_bytes()


def test_builders_need_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(WorkerError, match=r"pip install 'pytrickle-worker\[demo\]'"):
        build_colour_detector(tmp_path / "d.onnx")


# --------------------------------------------------------------------------- assets


def test_build_mpta_layout_and_reproducible_bytes(tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights")
    files: dict[str, bytes | Path] = {"detector.onnx": b"abc", "sub/model.bin": source}
    first = build_mpta(tmp_path / "a.mpta", {"pipeline": {}}, files, top_folder="demo")
    second = build_mpta(tmp_path / "b.mpta", {"pipeline": {}}, files, top_folder="demo")
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert archive.namelist() == [
            "demo/",
            "demo/pipeline.json",
            "demo/detector.onnx",
            "demo/sub/model.bin",
        ]
        assert archive.read("demo/sub/model.bin") == b"weights"
        assert json.loads(archive.read("demo/pipeline.json")) == {"pipeline": {}}
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    flat = build_mpta(tmp_path / "flat.mpta", "{not json", {"../evil.onnx": b"x"}, None)
    with zipfile.ZipFile(flat) as archive:
        assert archive.namelist() == ["pipeline.json", "../evil.onnx"]
        assert archive.read("pipeline.json") == b"{not json"
    missing = build_mpta(tmp_path / "none.mpta", None, {"m.onnx": b"x"}, "x")
    with zipfile.ZipFile(missing) as archive:
        assert archive.namelist() == ["x/", "x/m.onnx"]


def test_demo_assets(demo_assets: DemoAssets) -> None:
    with zipfile.ZipFile(demo_assets.mpta_path) as archive:
        assert archive.namelist() == [
            "demo/",
            "demo/pipeline.json",
            "demo/detector.onnx",
            "demo/classifier.onnx",
        ]
        manifest = json.loads(archive.read("demo/pipeline.json"))
        assert archive.read("demo/detector.onnx") == demo_assets.detector_path.read_bytes()
        assert archive.read("demo/classifier.onnx") == demo_assets.classifier_path.read_bytes()
    assert manifest == demo_pipeline_json()
    root = manifest["pipeline"]
    assert root["triggerClasses"] == ["car", "truck"]
    branch = root["branches"][0]
    assert (branch["modelId"], branch["triggerClasses"], branch["crop"]) == (
        "demo-badge-classifier",
        ["car"],
        True,
    )
    message = branch["actions"][1]["message"]
    assert message.startswith('{"class":"{class}"') and "{image_key}" in message
    assert metadata(demo_assets.detector_path)["imgsz"] == "[640, 640]"

    with av.open(str(demo_assets.video_path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (640, 360)
        assert stream.average_rate == SAMPLE_FPS
        frames = list(container.decode(stream))
    assert len(frames) == 10 * SAMPLE_FPS
    assert frames[0].format.name == "yuv420p"
    # Decoded frames still give near-exact boxes and the right classes.
    detector = session(demo_assets.detector_path)
    for index in (0, 77, 149):
        rgb = np.asarray(frames[index].to_ndarray(format="rgb24"), dtype=np.uint8)
        out = infer(detector, pad_to(rgb, (640, 640), top=TOP))
        car, truck = moving_objects(index, 640, 360, SAMPLE_FPS)
        for c, obj in ((1, car), (2, truck)):
            got = np.asarray(xywh_to_xyxy(out[0, :, c]))
            assert np.abs(got - np.asarray(shifted(obj.box, dy=TOP))).max() <= 2
        assert out[0, 5, 1] > 0.9 and 0.7 < out[0, 6, 2] < 0.85  # the car always wins


def test_demo_assets_are_reused_and_rebuilt_when_stale(
    demo_assets: DemoAssets,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copy = tmp_path / "assets"
    shutil.copytree(demo_assets.root, copy)
    mtimes = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    # Keep the test session's logging setup (main() would replace the root handlers).
    monkeypatch.setattr("pytrickle_worker.devtools.__main__.setup_logging", lambda level: None)  # pyright: ignore[reportUnknownLambdaType, reportUnknownArgumentType]
    with caplog.at_level(logging.INFO):
        assert demo_main([str(copy)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == mtimes
    assert str(copy / "demo.mpta") in caplog.text

    (copy / demo_assets_module.STAMP_NAME).write_text("0\n")
    rebuilt = build_demo_assets(copy)
    assert (copy / demo_assets_module.STAMP_NAME).read_text().startswith(f"{ASSETS_VERSION} ")
    assert rebuilt.mpta_path.read_bytes() == demo_assets.mpta_path.read_bytes()
    assert rebuilt.video_path.stat().st_mtime_ns != mtimes["sample.mp4"]
    assert not [p for p in copy.iterdir() if "tmp" in p.name]
