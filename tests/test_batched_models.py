"""The hand-built models with a batch: every image of a batch gets exactly its batch-1 output.

Each model kind (colour detector in the v8, v5 and e2e contracts, badge classifier, the
YOLOv8n-like benchmark model at a small size) is built with ``batch=None`` (dynamic) and
``batch=4`` (fixed), and run directly with onnxruntime on batches of different images
(one without any object), against the same images run one by one through the default
batch-1 build.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from pytrickle_worker.devtools.models import (
    build_colour_classifier,
    build_colour_detector,
    build_yolov8n_like,
)
from pytrickle_worker.devtools.synthetic import (
    SceneObject,
    colour_for_confidence,
    moving_objects,
    render_scene,
)

Image = npt.NDArray[np.uint8]
Output = npt.NDArray[np.float32]

KINDS = ["v8", "v5", "e2e", "classify", "yolo"]
FIXED_BATCH = 4
# Small inputs keep the runs fast; the detector's is not square, so H and W stay apart.
DETECTOR_SIZE = (160, 224)  # (height, width)
CLASSIFIER_SIZE = 64
YOLO_SIZE = 96


@dataclass(frozen=True)
class Built:
    """One model kind built three ways, its test images and their batch-1 outputs."""

    kind: str
    single: Path
    dynamic: Path
    fixed: Path
    images: list[Image]
    references: list[Output]


def build(kind: str, path: Path, batch: int | None) -> Path:
    if kind == "classify":
        return build_colour_classifier(path, CLASSIFIER_SIZE, batch=batch)
    if kind == "yolo":
        build_yolov8n_like(path, imgsz=YOLO_SIZE, nc=3, batch=batch)
        return path
    assert kind in ("v8", "v5", "e2e")
    return build_colour_detector(path, kind, DETECTOR_SIZE, batch=batch)


def detector_images() -> list[Image]:
    height, width = DETECTOR_SIZE
    scenes = [
        [
            SceneObject("person", (5, 10, 25, 60)),
            SceneObject("car", (40, 20, 140, 80), badge="white"),
            SceneObject("truck", (120, 100, 210, 150), colour=colour_for_confidence("truck", 0.6)),
        ],
        [],  # no objects: all-zero output
        [SceneObject("car", (100, 90, 180, 140), colour=colour_for_confidence("car", 0.8))],
        [
            SceneObject("truck", (10, 10, 90, 70)),
            SceneObject("person", (150, 40, 170, 110), colour=colour_for_confidence("person", 0.7)),
        ],
    ]
    return [render_scene(width, height, objects, seed=i) for i, objects in enumerate(scenes)]


def classifier_images() -> list[Image]:
    size = CLASSIFIER_SIZE
    whole = (0, 0, size, size)
    return [
        render_scene(size, size, [SceneObject("car", whole, badge="white")], seed=1),
        render_scene(size, size, [SceneObject("car", whole, badge="yellow")], seed=2),
        render_scene(size, size, [SceneObject("car", whole)], seed=3),  # a car without a badge
        render_scene(size, size, [], seed=4),  # no object at all
    ]


def yolo_images() -> list[Image]:
    size = YOLO_SIZE
    moving = [
        render_scene(size, size, moving_objects(index, size, size, 15.0), seed=index)
        for index in (0, 60, 120)
    ]
    return [moving[0], render_scene(size, size, [], seed=3), *moving[1:]]


def images_for(kind: str) -> list[Image]:
    if kind == "classify":
        return classifier_images()
    if kind == "yolo":
        return yolo_images()
    return detector_images()


def to_batch(images: Sequence[Image]) -> npt.NDArray[np.float32]:
    stacked = np.stack([image.astype(np.float32) / np.float32(255.0) for image in images])
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def infer(sess: ort.InferenceSession, images: Sequence[Image]) -> Output:
    output = cast("list[object]", sess.run(["output0"], {"images": to_batch(images)}))[0]
    assert isinstance(output, np.ndarray)
    return np.asarray(output, dtype=np.float32)


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.fixture(scope="module", params=KINDS)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    kind = cast("str", request.param)
    out = tmp_path_factory.mktemp(f"batched-{kind}")
    single = build(kind, out / "single.onnx", 1)
    images = images_for(kind)
    sess = session(single)
    references = [infer(sess, [image])[0] for image in images]
    return Built(
        kind=kind,
        single=single,
        dynamic=build(kind, out / "dynamic.onnx", None),
        fixed=build(kind, out / "fixed.onnx", FIXED_BATCH),
        images=images,
        references=references,
    )


def detection_scores(kind: str, output: Output) -> Output:
    """The candidates' scores of one image's detector output."""
    if kind == "v8":
        return output[4:].max(axis=0)
    return output[:, 4]  # v5 objectness; e2e score


def assert_matches(out: Output, references: Sequence[Output]) -> None:
    assert out.shape == (len(references), *references[0].shape)
    for got, want in zip(out, references, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_the_test_images_give_different_outputs(built: Built) -> None:
    refs = built.references
    assert len(refs) == FIXED_BATCH
    for i in range(len(refs)):
        for j in range(i + 1, len(refs)):
            assert not np.allclose(refs[i], refs[j], atol=1e-3), (built.kind, i, j)
    if built.kind in ("v8", "v5", "e2e"):
        found = [int(np.count_nonzero(detection_scores(built.kind, ref))) for ref in refs]
        # Primary and duplicate candidates (v8, v5); one row per object (e2e).
        per_object = 1 if built.kind == "e2e" else 2
        assert found == [3 * per_object, 0, per_object, 2 * per_object]


def test_dynamic_batch_runs_each_image_as_alone(built: Built) -> None:
    sess = session(built.dynamic)
    images, refs = built.images, built.references
    for n in range(1, len(images) + 1):
        assert_matches(infer(sess, images[:n]), refs[:n])
    # Another order: each image's output follows the image, not its position.
    order = [3, 1, 0, 2]
    assert_matches(infer(sess, [images[i] for i in order]), [refs[i] for i in order])
    # The same image twice in one batch.
    assert_matches(infer(sess, [images[2], images[2]]), [refs[2], refs[2]])


def test_fixed_batch_runs_each_image_as_alone(built: Built) -> None:
    sess = session(built.fixed)
    images, refs = built.images, built.references
    assert_matches(infer(sess, images), refs)
    order = [2, 0, 3, 1]
    assert_matches(infer(sess, [images[i] for i in order]), [refs[i] for i in order])


def test_batch_dims_and_metadata(built: Built) -> None:
    single, dynamic, fixed = (session(p) for p in (built.single, built.dynamic, built.fixed))
    assert single.get_inputs()[0].shape[0] == 1
    assert single.get_outputs()[0].shape[0] == 1
    assert dynamic.get_inputs()[0].shape[0] == "batch"
    assert dynamic.get_outputs()[0].shape[0] == "batch"
    assert fixed.get_inputs()[0].shape[0] == FIXED_BATCH
    assert fixed.get_outputs()[0].shape[0] == FIXED_BATCH
    # Apart from the batch, the shapes are those of the batch-1 build.
    for sess in (dynamic, fixed):
        assert sess.get_inputs()[0].shape[1:] == single.get_inputs()[0].shape[1:]
        assert sess.get_outputs()[0].shape[1:] == single.get_outputs()[0].shape[1:]

    if built.kind == "v5":  # yolov5's metadata: stride and names only
        assert "batch" not in metadata(built.dynamic)
        return
    for path, batch, dynamic_arg in (
        (built.single, 1, False),
        (built.dynamic, 1, True),  # what ultralytics writes for export(dynamic=True)
        (built.fixed, FIXED_BATCH, False),
    ):
        meta = metadata(path)
        assert meta["batch"] == str(batch)
        args = cast("dict[str, object]", ast.literal_eval(meta["args"]))
        assert (args["batch"], args["dynamic"]) == (batch, dynamic_arg)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_must_be_positive_or_none(tmp_path: Path, kind: str) -> None:
    for bad in (0, -2):
        with pytest.raises(ValueError, match="batch must be a positive int or None"):
            build(kind, tmp_path / "bad.onnx", bad)
