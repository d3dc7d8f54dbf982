"""OnnxModel on real onnxruntime sessions of tiny models built here with the onnx package."""

from __future__ import annotations

import logging
import threading
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pytrickle_worker.core.errors import ModelError
from pytrickle_worker.devtools.models import build_colour_classifier
from pytrickle_worker.engine.inference.imageops import resize_center_crop
from pytrickle_worker.engine.inference.metadata import parse_metadata
from pytrickle_worker.engine.inference.model import (
    Classification,
    ModelInfo,
    OnnxModel,
    StageTimings,
)
from pytrickle_worker.engine.inference.postprocess import OutputContract
from pytrickle_worker.engine.inference.providers import ProviderChoice, select_providers
from tests.test_inference_postprocess import v8_output

NAMES3 = "{0: 'person', 1: 'car', 2: 'truck'}"


def constant_model(
    path: Path,
    value: np.ndarray,
    *,
    input_shape: Sequence[int | str] = (1, 3, 64, 64),
    output_shape: Sequence[int | str] | None = None,
    metadata: Mapping[str, str] | None = None,
    float16_input: bool = False,
    extra_outputs: Sequence[np.ndarray] = (),
) -> Path:
    """A model whose ``output0`` is ``value`` (plus 0 × mean(input)), with metadata_props."""
    nodes: list[onnx.NodeProto] = []
    source = "images"
    if float16_input:
        nodes.append(helper.make_node("Cast", ["images"], ["images_f32"], to=TensorProto.FLOAT))
        source = "images_f32"
    nodes.append(helper.make_node("ReduceMean", [source], ["mean"], keepdims=0))
    nodes.append(helper.make_node("Mul", ["mean", "zero"], ["zeroed"]))
    initializers = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    outputs: list[onnx.ValueInfoProto] = []
    for k, array in enumerate([value, *extra_outputs]):
        name = "output0" if k == 0 else f"output{k}"
        const = f"value{k}"
        initializers.append(numpy_helper.from_array(np.asarray(array, np.float32), const))
        nodes.append(helper.make_node("Add", [const, "zeroed"], [name]))
        shape = output_shape if (k == 0 and output_shape is not None) else list(array.shape)
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
    in_type = TensorProto.FLOAT16 if float16_input else TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("images", in_type, list(input_shape))]
    graph = helper.make_graph(nodes, "constant", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, text in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, text
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def v8_rows(
    rows: Sequence[tuple[float, float, float, float, int, float]], nc: int, n: int = 20
) -> npt.NDArray[np.float32]:
    return v8_output(rows, nc, n)


@pytest.fixture(scope="module")
def cpu() -> ProviderChoice:
    return select_providers("cpu", intra_op_threads=1)


# ------------------------------------------------------------------ refusing bad files


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("yolov8n.pt", "PyTorch checkpoint"),
        ("best.pth", "PyTorch checkpoint"),
        ("model.engine", "TensorRT engine"),
        ("model.torchscript", "TorchScript model"),
        ("weights.bin", "not an ONNX model"),
    ],
)
def test_non_onnx_files_are_refused_with_the_export_command(
    tmp_path: Path, cpu: ProviderChoice, name: str, kind: str
) -> None:
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ModelError) as info:
        OnnxModel(path, cpu)
    message = str(info.value)
    assert f"'{name}'" in message
    assert kind in message
    stem = name.rsplit(".", 1)[0]
    assert f"yolo export model={stem}.pt format=onnx" in message
    assert "pytrickle-worker mpta convert IN.mpta OUT.mpta" in message


def test_missing_file(tmp_path: Path, cpu: ProviderChoice) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        OnnxModel(tmp_path / "absent.onnx", cpu)


def test_corrupt_onnx_names_the_file(tmp_path: Path, cpu: ProviderChoice) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(ModelError) as info:
        OnnxModel(path, cpu)
    assert str(path) in str(info.value)


def test_truncated_onnx_names_the_file(tmp_path: Path, cpu: ProviderChoice) -> None:
    good = constant_model(tmp_path / "good.onnx", v8_rows([], 3), metadata={"names": NAMES3})
    path = tmp_path / "truncated.onnx"
    path.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ModelError, match=r"truncated\.onnx"):
        OnnxModel(path, cpu)


def test_zip_named_onnx_is_recognised(tmp_path: Path, cpu: ProviderChoice) -> None:
    path = tmp_path / "renamed.onnx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"torch")
    with pytest.raises(ModelError, match="zip archive"):
        OnnxModel(path, cpu)


# ------------------------------------------------------------------ metadata


def test_parse_metadata_ultralytics_values() -> None:
    meta = parse_metadata(
        {
            "description": "Ultralytics YOLOv8n model",
            "author": "Ultralytics",
            "names": NAMES3,
            "task": "detect",
            "stride": "32",
            "imgsz": "[384, 640]",
            "batch": "1",
            "end2end": "False",
            "args": "{'batch': 1, 'half': False}",
        }
    )
    assert meta.names == {0: "person", 1: "car", 2: "truck"}
    assert meta.task == "detect"
    assert meta.stride == 32
    assert meta.imgsz == (384, 640)
    assert meta.batch == 1
    assert meta.end2end is False
    assert meta.kpt_shape is False


def test_parse_metadata_variants() -> None:
    meta = parse_metadata(
        {
            "names": "['a', 'b']",
            "task": "'classify'",
            "imgsz": "224",
            "stride": "[8, 16, 32]",
            "end2end": "True",
            "kpt_shape": "[17, 3]",
        }
    )
    assert meta.names == {0: "a", 1: "b"}
    assert meta.task == "classify"
    assert meta.imgsz == (224, 224)
    assert meta.stride == 32
    assert meta.end2end is True
    assert meta.kpt_shape is True
    assert parse_metadata({"names": "{'0': 'x', '1': 'y'}"}).names == {0: "x", 1: "y"}
    assert parse_metadata({}).names is None


def test_malicious_metadata_is_not_executed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sentinel = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {sentinel}')"
    caplog.set_level(logging.WARNING)
    meta = parse_metadata(
        {
            "names": payload,
            "imgsz": payload,
            "stride": "(lambda: 1)()",
            "task": "detect; rm -rf /",
            "end2end": "open('/etc/passwd').read()",
            "batch": "1" * 10,
        }
    )
    assert not sentinel.exists()
    assert meta.names is None and meta.imgsz is None and meta.stride is None
    assert meta.task is None and meta.end2end is None
    assert "not a Python literal" in caplog.text


@pytest.mark.parametrize(
    "names",
    [
        "{0: 'a', -1: 'b'}",
        "{'x': 'a'}",
        "42",
        "[" * 5000,
        "x" * 2_000_000,
    ],
)
def test_malformed_names_fall_back(names: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert parse_metadata({"names": names}).names is None
    assert caplog.records


def test_model_with_malicious_metadata_loads_with_numeric_names(
    tmp_path: Path, cpu: ProviderChoice
) -> None:
    sentinel = tmp_path / "pwned"
    path = constant_model(
        tmp_path / "evil.onnx",
        v8_rows([(32, 32, 10, 10, 1, 0.9)], 3),
        metadata={"names": f"__import__('os').system('touch {sentinel}')", "task": "detect"},
    )
    model = OnnxModel(path, cpu)
    assert not sentinel.exists()
    assert model.info.names == ("0", "1", "2")
    dets = model.detect(np.zeros((64, 64, 3), np.uint8))
    assert model.info.names[int(dets.class_ids[0])] == "1"


# ------------------------------------------------------------------ loading


def test_info_of_a_v8_detector(tmp_path: Path, cpu: ProviderChoice) -> None:
    path = constant_model(
        tmp_path / "det.onnx",
        v8_rows([], 3),
        metadata={"names": NAMES3, "task": "detect", "stride": "32", "imgsz": "[64, 64]"},
    )
    model = OnnxModel(path, cpu)
    info = model.info
    assert isinstance(info, ModelInfo)
    assert info.path == path
    assert len(info.sha256) == 64
    assert info.input_name == "images"
    assert info.input_size == (64, 64)
    assert info.names == ("person", "car", "truck")
    assert info.task == "detect"
    assert info.contract is OutputContract.YOLOV8_DETECT
    assert info.nc == 3
    assert info.stride == 32
    assert info.provider == "CPUExecutionProvider"
    assert model.warmup_ms > 0
    with pytest.raises(AttributeError):
        info.nc = 4  # type: ignore[misc]


def test_dynamic_input_uses_metadata_imgsz_then_640(tmp_path: Path, cpu: ProviderChoice) -> None:
    dynamic = ("batch", 3, "height", "width")
    path = constant_model(
        tmp_path / "dyn.onnx",
        v8_rows([], 2),
        input_shape=dynamic,
        metadata={"names": "['a', 'b']", "imgsz": "[96, 128]"},
    )
    assert OnnxModel(path, cpu).info.input_size == (96, 128)
    path = constant_model(
        tmp_path / "dyn640.onnx",
        v8_rows([], 2),
        input_shape=dynamic,
        metadata={"names": "['a', 'b']", "imgsz": "[big, 1]"},
    )
    assert OnnxModel(path, cpu).info.input_size == (640, 640)


def test_a_fixed_batch_loads_and_single_images_are_padded(
    tmp_path: Path, cpu: ProviderChoice
) -> None:
    path = constant_model(tmp_path / "b2.onnx", v8_rows([], 2), input_shape=(2, 3, 64, 64))
    model = OnnxModel(path, cpu)  # the warm-up ran one image, padded to two
    assert model.info.batch == 2 and model.info.can_batch
    assert len(model.detect(np.zeros((48, 64, 3), np.uint8))) == 0
    with pytest.raises(ModelError, match="fixed batch of 2; got 3"):
        model.run(np.zeros((3, 3, 64, 64), np.float32))
    dynamic = constant_model(tmp_path / "dyn.onnx", v8_rows([], 2), input_shape=("n", 3, 64, 64))
    assert OnnxModel(dynamic, cpu).info.batch is None
    assert OnnxModel(constant_model(tmp_path / "b1.onnx", v8_rows([], 2)), cpu).info.batch == 1


def test_unsupported_outputs_are_refused_at_load(tmp_path: Path, cpu: ProviderChoice) -> None:
    path = constant_model(tmp_path / "odd.onnx", np.zeros((1, 3, 4, 5), np.float32))
    with pytest.raises(ModelError) as info:
        OnnxModel(path, cpu)
    assert "odd.onnx" in str(info.value)
    assert "[1, 3, 4, 5]" in str(info.value)
    seg = constant_model(
        tmp_path / "seg.onnx",
        np.zeros((1, 4 + 3 + 32, 20), np.float32),
        extra_outputs=[np.zeros((1, 32, 16, 16), np.float32)],
        metadata={"names": NAMES3, "task": "segment"},
    )
    with pytest.raises(ModelError, match="segmentation"):
        OnnxModel(seg, cpu)
    pose = constant_model(
        tmp_path / "pose.onnx",
        np.zeros((1, 56, 20), np.float32),
        metadata={"names": "{0: 'person'}", "task": "pose", "kpt_shape": "[17, 3]"},
    )
    with pytest.raises(ModelError, match="pose"):
        OnnxModel(pose, cpu)


def test_dynamic_output_dims_are_resolved_by_a_probe(tmp_path: Path, cpu: ProviderChoice) -> None:
    path = constant_model(
        tmp_path / "probe.onnx", v8_rows([], 3), output_shape=("b", "rows", "anchors")
    )
    model = OnnxModel(path, cpu)
    assert model.info.contract is OutputContract.YOLOV8_DETECT
    assert model.info.names == ("0", "1", "2")


def test_end2end_without_names(tmp_path: Path, cpu: ProviderChoice) -> None:
    out = np.zeros((1, 300, 6), np.float32)
    out[0, 0] = [10, 10, 30, 30, 0.9, 7]
    model = OnnxModel(constant_model(tmp_path / "e2e.onnx", out), cpu)
    assert model.info.contract is OutputContract.END2END_DETECT
    assert model.info.nc == 0
    dets = model.detect(np.zeros((64, 64, 3), np.uint8))
    assert model.info.names[int(dets.class_ids[0])] == "7"


# ------------------------------------------------------------------ inference


def test_detect_maps_boxes_to_frame_pixels(tmp_path: Path, cpu: ProviderChoice) -> None:
    # Input-space box (10, 26)-(30, 36): for a 128x64 frame, r = 0.5 and pad_top = 16.
    out = v8_rows([(20, 31, 20, 10, 1, 0.9), (40, 40, 4, 4, 0, 0.1)], 3)
    model = OnnxModel(constant_model(tmp_path / "d.onnx", out, metadata={"names": NAMES3}), cpu)
    timings = StageTimings()
    dets = model.detect(np.zeros((64, 128, 3), np.uint8), conf_thres=0.25, timings=timings)
    assert len(dets) == 1
    np.testing.assert_allclose(dets.boxes[0], [20, 20, 60, 40], atol=1e-4)
    assert dets.class_ids.tolist() == [1]
    assert timings.calls == 1 and timings.inference_ms > 0 and timings.preprocess_ms > 0
    model.detect(np.zeros((64, 128, 3), np.uint8), timings=timings)
    assert timings.calls == 2
    assert timings.total_ms == pytest.approx(
        timings.preprocess_ms + timings.inference_ms + timings.postprocess_ms
    )
    assert set(timings.as_dict()) >= {"preprocess_ms", "inference_ms", "postprocess_ms"}


def test_detect_boxes_are_clipped_to_the_frame(tmp_path: Path, cpu: ProviderChoice) -> None:
    out = v8_rows([(5, 5, 30, 30, 0, 0.9)], 1)
    model = OnnxModel(constant_model(tmp_path / "c.onnx", out, metadata={"names": "['x']"}), cpu)
    dets = model.detect(np.zeros((64, 64, 3), np.uint8))
    np.testing.assert_allclose(dets.boxes[0], [0, 0, 20, 20])


def test_detect_class_restriction_and_class_indices(
    tmp_path: Path, cpu: ProviderChoice, caplog: pytest.LogCaptureFixture
) -> None:
    out = v8_rows([(10, 10, 8, 8, 0, 0.9), (40, 40, 8, 8, 1, 0.8), (20, 50, 8, 8, 2, 0.7)], 3)
    model = OnnxModel(constant_model(tmp_path / "f.onnx", out, metadata={"names": NAMES3}), cpu)
    frame = np.zeros((64, 64, 3), np.uint8)
    caplog.set_level(logging.WARNING)
    indices = model.class_indices(["truck", "Car", "bicycle"])
    assert indices.tolist() == [1, 2]
    assert caplog.text.count("bicycle") == 1
    model.class_indices(["bicycle"])
    assert caplog.text.count("bicycle") == 1  # logged once
    assert model.detect(frame, classes=indices).class_ids.tolist() == [1, 2]
    assert model.detect(frame, classes=[0]).class_ids.tolist() == [0]
    assert len(model.detect(frame, classes=model.class_indices(["nothing"]))) == 0
    assert len(model.detect(frame, conf_thres=0.75)) == 2
    assert len(model.detect(frame, max_det=1)) == 1


def test_classify_with_probabilities_and_logits(tmp_path: Path, cpu: ProviderChoice) -> None:
    meta = {"names": "{0: 'white', 1: 'yellow', 2: 'black'}", "task": "classify"}
    probs = np.array([[0.1, 0.2, 0.7]], np.float32)
    model = OnnxModel(constant_model(tmp_path / "p.onnx", probs, metadata=meta), cpu)
    assert model.info.contract is OutputContract.CLASSIFY
    timings = StageTimings()
    top = model.classify(np.zeros((30, 50, 3), np.uint8), timings=timings)
    assert isinstance(top, Classification)
    assert (top.class_id, top.class_name) == (2, "black")
    assert top.confidence == pytest.approx(0.7)
    assert timings.calls == 1
    logits = np.array([[3.0, 1.0, -2.0]], np.float32)
    model = OnnxModel(constant_model(tmp_path / "l.onnx", logits, metadata=meta), cpu)
    top = model.classify(np.zeros((8, 8, 3), np.uint8))
    assert top.class_name == "white"
    expected = np.exp(3.0) / (np.exp(3.0) + np.exp(1.0) + np.exp(-2.0))
    assert top.confidence == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ModelError, match="classifier"):
        model.detect(np.zeros((8, 8, 3), np.uint8))


def test_classify_on_a_detector_is_an_error(tmp_path: Path, cpu: ProviderChoice) -> None:
    model = OnnxModel(constant_model(tmp_path / "x.onnx", v8_rows([], 2)), cpu)
    with pytest.raises(ModelError, match="detector"):
        model.classify(np.zeros((8, 8, 3), np.uint8))


def test_classify_squash_resizes_the_whole_image_to_the_input(
    tmp_path: Path, cpu: ProviderChoice
) -> None:
    model = OnnxModel(build_colour_classifier(tmp_path / "c.onnx", imgsz=32), cpu)
    wide = np.zeros((20, 80, 3), np.uint8)
    wide[:, :, 0] = np.arange(80, dtype=np.uint8)[None, :] * 3  # a ramp across the width
    squashed, _ = model.preprocess(wide, squash=True)
    np.testing.assert_array_equal(squashed, resize_center_crop(wide, (32, 32)))
    # The whole width is there: the first and last columns keep the ramp's ends.
    assert squashed[0, 0, :, 0].mean() < 0.05 and squashed[0, 0, :, -1].mean() > 0.85
    centred, _ = model.preprocess(wide)
    np.testing.assert_array_equal(centred, resize_center_crop(wide, 32))
    assert centred[0, 0, :, 0].mean() > 0.3  # the centre crop cut the ends off


def test_float16_input(tmp_path: Path, cpu: ProviderChoice) -> None:
    out = v8_rows([(32, 32, 10, 10, 0, 0.9)], 1)
    path = constant_model(tmp_path / "h.onnx", out, float16_input=True)
    model = OnnxModel(path, cpu)
    assert model.info.input_dtype == "float16"
    assert len(model.detect(np.zeros((64, 64, 3), np.uint8))) == 1


def test_concurrent_detect_uses_per_thread_buffers(tmp_path: Path, cpu: ProviderChoice) -> None:
    out = v8_rows([(32, 32, 20, 20, 0, 0.9)], 1)
    model = OnnxModel(constant_model(tmp_path / "t.onnx", out), cpu)
    shapes = [(64, 64), (64, 128), (128, 64), (32, 100)]
    expected = {s: model.detect(np.zeros((*s, 3), np.uint8)).boxes.copy() for s in shapes}
    errors: list[str] = []
    barrier = threading.Barrier(len(shapes))

    def worker(shape: tuple[int, int]) -> None:
        barrier.wait()
        frame = np.zeros((*shape, 3), np.uint8)
        for _ in range(25):
            boxes = model.detect(frame).boxes
            if not np.allclose(boxes, expected[shape]):
                errors.append(f"{shape}: {boxes} != {expected[shape]}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in shapes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


def test_closed_model_refuses_inference(tmp_path: Path, cpu: ProviderChoice) -> None:
    model = OnnxModel(constant_model(tmp_path / "z.onnx", v8_rows([], 2)), cpu)
    model.close()
    assert model.closed
    with pytest.raises(ModelError, match="closed"):
        model.detect(np.zeros((8, 8, 3), np.uint8))
