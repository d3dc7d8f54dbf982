"""End-to-end geometry with the demo colour models: rendered boxes come back within 2 px."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytrickle_worker.devtools.models import (
    DetectorContract,
    build_colour_classifier,
    build_colour_detector,
)
from pytrickle_worker.devtools.synthetic import (
    CLASSIFIER_NAMES,
    DETECTOR_NAMES,
    SceneObject,
    render_scene,
)
from pytrickle_worker.engine.inference.imageops import crop
from pytrickle_worker.engine.inference.model import OnnxModel
from pytrickle_worker.engine.inference.postprocess import OutputContract
from pytrickle_worker.engine.inference.providers import ProviderChoice, select_providers
from pytrickle_worker.engine.inference.registry import ModelRegistry

CONTRACTS: dict[DetectorContract, OutputContract] = {
    "v8": OutputContract.YOLOV8_DETECT,
    "v5": OutputContract.YOLOV5_DETECT,
    "e2e": OutputContract.END2END_DETECT,
}
FRAMES = [(640, 480), (1280, 720), (480, 640), (1000, 300), (320, 240), (1920, 1080)]
EXTRA_COLOURS = {"bus": (230, 230, 40), "van": (40, 220, 220), "bike": (220, 40, 220)}


@pytest.fixture(scope="module")
def cpu() -> ProviderChoice:
    return select_providers("cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("colour-models")


@pytest.fixture(scope="module")
def detectors(model_dir: Path, cpu: ProviderChoice) -> dict[DetectorContract, OnnxModel]:
    return {
        name: OnnxModel(build_colour_detector(model_dir / f"det-{name}.onnx", contract=name), cpu)
        for name in CONTRACTS
    }


@pytest.fixture(scope="module")
def classifier(model_dir: Path, cpu: ProviderChoice) -> OnnxModel:
    return OnnxModel(build_colour_classifier(model_dir / "badge.onnx", imgsz=64), cpu)


def scene(width: int, height: int) -> list[SceneObject]:
    """One object per class, at odd pixel edges, with a badge each."""

    def box(x1: float, y1: float, x2: float, y2: float) -> tuple[int, int, int, int]:
        return (
            int(width * x1) + 1,
            int(height * y1) + 1,
            int(width * x2) + 1,
            int(height * y2) + 1,
        )

    return [
        SceneObject("person", box(0.05, 0.10, 0.25, 0.70), badge="white"),
        SceneObject("car", box(0.40, 0.50, 0.70, 0.90), badge="yellow"),
        SceneObject("truck", box(0.75, 0.05, 0.97, 0.45), badge="black"),
    ]


def test_detectors_load_with_their_contract(detectors: dict[DetectorContract, OnnxModel]) -> None:
    for name, model in detectors.items():
        assert model.info.contract is CONTRACTS[name]
        assert model.info.names == tuple(DETECTOR_NAMES)
        assert model.info.input_size == (640, 640)


@pytest.mark.parametrize(("width", "height"), FRAMES)
@pytest.mark.parametrize("contract", list(CONTRACTS))
def test_boxes_map_back_to_ground_truth(
    detectors: dict[DetectorContract, OnnxModel],
    contract: DetectorContract,
    width: int,
    height: int,
) -> None:
    model = detectors[contract]
    objects = scene(width, height)
    dets = model.detect(render_scene(width, height, objects), conf_thres=0.25)
    found = {model.info.names[int(c)]: dets.boxes[i] for i, c in enumerate(dets.class_ids)}
    assert sorted(found) == sorted(o.class_name for o in objects)
    assert len(dets) == len(objects)  # the shifted duplicates were suppressed
    for obj in objects:
        np.testing.assert_allclose(found[obj.class_name], obj.box, atol=2.0, err_msg=obj.class_name)
    assert np.all(dets.scores > 0.9)
    assert np.all(np.diff(dets.scores) <= 0)


def test_class_restriction_on_a_real_detector(detectors: dict[DetectorContract, OnnxModel]) -> None:
    model = detectors["v8"]
    frame = render_scene(640, 480, scene(640, 480))
    dets = model.detect(frame, classes=model.class_indices(["car", "truck"]))
    assert sorted(model.info.names[int(c)] for c in dets.class_ids) == ["car", "truck"]
    assert len(model.detect(frame, conf_thres=1.0)) == 0  # the filter is strict


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (480, 640), (320, 240)])
def test_classifier_top1_on_badge_crops(
    detectors: dict[DetectorContract, OnnxModel], classifier: OnnxModel, width: int, height: int
) -> None:
    assert classifier.info.contract is OutputContract.CLASSIFY
    assert classifier.info.names == tuple(CLASSIFIER_NAMES)
    objects = scene(width, height)
    frame = render_scene(width, height, objects)
    model = detectors["e2e"]
    dets = model.detect(frame)
    badges = {o.class_name: o.badge for o in objects}
    for box, class_id in zip(dets.boxes, dets.class_ids, strict=True):
        patch = crop(frame, box)
        assert patch is not None
        top = classifier.classify(patch)
        assert top.class_name == badges[model.info.names[int(class_id)]]
        assert top.confidence > 0.9


@pytest.mark.parametrize("contract", ["v8", "v5"])
def test_model_without_names_gets_numeric_names(
    model_dir: Path, cpu: ProviderChoice, contract: DetectorContract
) -> None:
    names = [*DETECTOR_NAMES, *EXTRA_COLOURS]
    path = build_colour_detector(
        model_dir / f"nameless-{contract}.onnx",
        contract=contract,
        names=names,
        with_names=False,
        colours=EXTRA_COLOURS,
    )
    model = OnnxModel(path, cpu)
    assert model.info.contract is CONTRACTS[contract]
    assert model.info.names == ("0", "1", "2", "3", "4", "5")
    frame = render_scene(
        800,
        600,
        [
            SceneObject("car", (100, 100, 300, 250)),
            SceneObject("van", (400, 300, 600, 500), colour=EXTRA_COLOURS["van"]),
        ],
    )
    dets = model.detect(frame)
    assert sorted(model.info.names[int(c)] for c in dets.class_ids) == ["1", "4"]


def test_registry_shares_demo_models(model_dir: Path, cpu: ProviderChoice) -> None:
    registry = ModelRegistry(cpu)
    path = model_dir / "det-v8.onnx"
    first, second = registry.acquire(path), registry.acquire(path)
    assert first is second
    frame = render_scene(640, 480, scene(640, 480))
    assert len(first.detect(frame)) == 3
    registry.release(first)
    registry.release(second)
    assert registry.loaded_count == 0
