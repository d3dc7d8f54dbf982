"""The GPU paths, checked where CI can: IO binding runs the same code on the CPU device, and
the TensorRT options are built for each model's batch axis (the engine build itself needs a
GPU: see bench/RESULTS.md, "GPU", for the command that measures it on one).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.core.errors import ModelError, WorkerError
from pytrickle_worker.devtools.models import build_colour_classifier, build_colour_detector
from pytrickle_worker.devtools.synthetic import moving_objects, render_scene
from pytrickle_worker.engine.inference.batching import BatchCoordinator
from pytrickle_worker.engine.inference.binding import BoundRunner
from pytrickle_worker.engine.inference.model import OnnxModel, dynamic_batch_input
from pytrickle_worker.engine.inference.providers import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderChoice,
    ProviderUnavailableError,
    select_providers,
)

W, H = 320, 240


def scenes(count: int) -> list[np.ndarray]:
    return [render_scene(W, H, moving_objects(i * 7, W, H, 10.0), seed=i) for i in range(count)]


def test_io_binding_gives_the_plain_run_results_on_cpu(tmp_path: Path) -> None:
    path = build_colour_detector(tmp_path / "det.onnx", "v8", imgsz=(256, 256), batch=None)
    plain = OnnxModel(path, select_providers("cpu", intra_op_threads=1, io_binding="off"))
    bound = OnnxModel(path, select_providers("cpu", intra_op_threads=1, io_binding="on"))
    assert bound._bound is not None and plain._bound is None  # pyright: ignore[reportPrivateUsage]
    for frame in scenes(4):
        a, b = plain.detect(frame, conf_thres=0.1), bound.detect(frame, conf_thres=0.1)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
    classifier = build_colour_classifier(tmp_path / "cls.onnx", batch=None)
    plain_c = OnnxModel(classifier, select_providers("cpu", intra_op_threads=1, io_binding="off"))
    bound_c = OnnxModel(classifier, select_providers("cpu", intra_op_threads=1, io_binding="on"))
    crop = np.full((40, 60, 3), (30, 200, 40), np.uint8)
    assert plain_c.classify(crop).class_name == bound_c.classify(crop).class_name


def test_io_binding_keeps_one_buffer_set_per_run_in_flight(tmp_path: Path) -> None:
    """Batched runs of several sizes on two slots: every caller gets its own frame's result
    and buffers are reused, not allocated per run."""
    path = build_colour_detector(tmp_path / "det.onnx", "v8", imgsz=(256, 256), batch=None)
    choice = select_providers("cpu", intra_op_threads=1, io_binding="on")
    reference = OnnxModel(path, select_providers("cpu", intra_op_threads=1, io_binding="off"))
    model = OnnxModel(path, choice)
    model.enable_batching(BatchCoordinator(2), max_batch=3)
    frames = scenes(6)
    expected = [reference.detect(f, conf_thres=0.1) for f in frames]
    errors: list[str] = []

    def stream(index: int) -> None:
        for _ in range(15):
            got = model.detect(frames[index], conf_thres=0.1)
            if not np.allclose(got.boxes, expected[index].boxes, atol=1e-4):
                errors.append(f"stream {index}: {got.boxes} != {expected[index].boxes}")

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    bound = model._bound  # pyright: ignore[reportPrivateUsage]
    assert bound is not None
    # At most two runs at once, of sizes 1..3 (and the warm-up's): a handful of sets.
    assert 1 <= bound.allocated <= 2 * 3 + 1, bound.allocated


def test_a_bound_result_is_not_overwritten_by_the_next_run(tmp_path: Path) -> None:
    """The buffers are reused: a result handed out must not be a view of them."""
    path = build_colour_detector(tmp_path / "det.onnx", "v8", imgsz=(256, 256), batch=None)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name, output = session.get_inputs()[0].name, session.get_outputs()[0]
    tail = tuple(int(d) for d in output.shape[1:])
    runner = BoundRunner(session, name, output.name, tail, device="cpu")
    rng = np.random.default_rng(0)
    first_input, second_input = (rng.random((1, 3, 256, 256), dtype=np.float32) for _ in "ab")
    first = runner.run(first_input)
    kept = first.copy()
    second = runner.run(second_input)
    assert runner.allocated == 1  # the second run reused the first's buffers
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_allclose(first, session.run(None, {name: first_input})[0], atol=1e-5)


def test_io_binding_setting_is_checked() -> None:
    assert select_providers("cpu", io_binding="auto").io_binding is False
    assert select_providers("cpu", io_binding="on").io_binding is True
    with pytest.raises(ProviderUnavailableError, match="io_binding"):
        select_providers("cpu", io_binding="yes")


def test_cuda_conv_algo_search_setting() -> None:
    def cuda_options(**kwargs: str) -> dict[str, object]:
        chain = select_providers("cuda", available=[CUDA, CPU], gpu_count=1, **kwargs)
        [cuda] = [spec for spec in chain.providers if not isinstance(spec, str)]
        assert cuda[0] == CUDA
        return cuda[1]

    # Continuous batching forms every batch size: no exhaustive benchmark per new shape.
    assert cuda_options()["cudnn_conv_algo_search"] == "HEURISTIC"
    assert cuda_options(cudnn_conv_algo_search="Exhaustive")["cudnn_conv_algo_search"] == (
        "EXHAUSTIVE"
    )
    with pytest.raises(ProviderUnavailableError, match=r"cudnn_conv_algo_search.*'fastest'"):
        select_providers(
            "cuda", available=[CUDA, CPU], gpu_count=1, cudnn_conv_algo_search="fastest"
        )
    with pytest.raises(WorkerError, match="cudnn_conv_algo_search"):
        WorkerConfig.load(None, {"PTW_CUDNN_CONV_ALGO_SEARCH": "fastest"})
    assert WorkerConfig.load(None, {}).cudnn_conv_algo_search == "heuristic"


def gpu_chain(fp16: bool = True) -> ProviderChoice:
    """What ``select_providers("tensorrt")`` chooses on a GPU host (CI has none: the
    provider list and GPU count are given)."""
    return select_providers(
        "tensorrt",
        available=[TENSORRT, CUDA, CPU],
        gpu_count=1,
        trt_fp16=fp16,
        trt_cache_dir="/tmp/ptw-trt-cache",
        device_id=0,
    )


def test_tensorrt_profiles_cover_batch_one_to_max() -> None:
    choice = gpu_chain()
    assert choice.io_binding  # auto: on for a GPU chain
    profiled = choice.with_tensorrt_profile("images", (3, 640, 640), 16)
    [trt] = [spec for spec in profiled.providers if not isinstance(spec, str)][:1]
    assert trt[0] == TENSORRT
    options = trt[1]
    assert options["trt_profile_min_shapes"] == "images:1x3x640x640"
    assert options["trt_profile_opt_shapes"] == "images:16x3x640x640"
    assert options["trt_profile_max_shapes"] == "images:16x3x640x640"
    assert options["trt_fp16_enable"] is True
    assert options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == "/tmp/ptw-trt-cache"
    # The original choice is unchanged (it serves every model), and CPU chains ignore it.
    assert not any(
        "trt_profile_min_shapes" in spec[1]
        for spec in choice.providers
        if not isinstance(spec, str)
    )
    cpu = select_providers("cpu")
    assert cpu.with_tensorrt_profile("images", (3, 640, 640), 16) is cpu


def test_tensorrt_profile_refusals(caplog: pytest.LogCaptureFixture) -> None:
    choice = gpu_chain()
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        choice.with_tensorrt_profile("images", (3, 640, 640), 0)
    # TensorRT's "name:dims,name:dims" syntax cannot carry these names: no profile, a warning.
    with caplog.at_level("WARNING"):
        assert choice.with_tensorrt_profile("in:put", (3, 640, 640), 8) is choice
    assert "no TensorRT profile" in caplog.text


def test_an_unreadable_model_is_a_model_error_when_reading_its_input(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07 this is no protobuf graph")
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        dynamic_batch_input(broken)


def test_the_profile_is_read_from_the_models_input(tmp_path: Path) -> None:
    dynamic = build_colour_detector(tmp_path / "d.onnx", "v8", imgsz=(384, 512), batch=None)
    assert dynamic_batch_input(dynamic) == ("images", (3, 384, 512))
    fixed = build_colour_detector(tmp_path / "f.onnx", "v8", imgsz=(384, 512), batch=4)
    assert dynamic_batch_input(fixed) is None
    one = build_colour_detector(tmp_path / "one.onnx", "v8", imgsz=(384, 512))
    assert dynamic_batch_input(one) is None
