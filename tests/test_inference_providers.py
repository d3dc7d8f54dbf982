"""Execution-provider choice (real onnxruntime; GPU hosts described via ``available``)."""

from __future__ import annotations

import logging

import onnxruntime as ort
import pytest

from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.engine.inference.providers import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderChoice,
    ProviderUnavailableError,
    available_providers,
    count_gpus,
    default_intra_op_threads,
    select_providers,
)

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cpu_is_always_available() -> None:
    choice = select_providers("cpu", intra_op_threads=3)
    assert isinstance(choice, ProviderChoice)
    assert choice.provider_names == (CPU,)
    assert choice.name == "cpu"
    assert choice.intra_op_threads == 3
    assert not choice.uses_gpu


def test_auto_on_this_host_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    choice = select_providers("auto")
    if CUDA not in ort.get_available_providers():
        assert choice.provider_names == (CPU,)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert choice.primary in infos[0].getMessage()


def test_auto_prefers_tensorrt_then_cuda_when_a_gpu_is_usable() -> None:
    choice = select_providers("auto", available=GPU_BUILD, gpu_count=2, trt_cache_dir="/tmp/trt")
    assert choice.provider_names == (TENSORRT, CUDA, CPU)
    assert choice.name == "tensorrt"
    assert choice.gpu_count == 2
    assert not choice.strict
    trt_options = choice.ort_providers()[0]
    assert isinstance(trt_options, tuple)
    assert trt_options[1]["trt_engine_cache_enable"] is True
    assert trt_options[1]["trt_engine_cache_path"] == "/tmp/trt"
    cuda_only = select_providers("auto", available=GPU_BUILD[1:], gpu_count=1)
    assert cuda_only.provider_names == (CUDA, CPU)


def test_auto_without_a_usable_gpu_stays_on_cpu() -> None:
    choice = select_providers("auto", available=GPU_BUILD, gpu_count=0)
    assert choice.provider_names == (CPU,)
    assert "no GPU is usable" in choice.reason


def test_explicit_cuda_without_the_provider_names_what_is_available() -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        select_providers("cuda", available=["AzureExecutionProvider", CPU])
    message = str(info.value)
    assert "CUDAExecutionProvider" in message
    assert "AzureExecutionProvider, CPUExecutionProvider" in message
    assert "onnxruntime-gpu" in message
    assert isinstance(info.value, WorkerError)
    assert isinstance(info.value, ValueError)


def test_explicit_cuda_on_this_host() -> None:
    if CUDA in available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider"):
        select_providers("cuda")
    with pytest.raises(ProviderUnavailableError, match="TensorrtExecutionProvider"):
        select_providers("tensorrt")


def test_explicit_gpu_choices_are_strict() -> None:
    cuda = select_providers("cuda", available=GPU_BUILD, gpu_count=1)
    assert cuda.provider_names == (CUDA, CPU)
    assert cuda.strict
    trt = select_providers("TensorRT", available=GPU_BUILD, gpu_count=1)
    assert trt.provider_names == (TENSORRT, CUDA, CPU)
    fallback = trt.cpu_only()
    assert fallback.provider_names == (CPU,)
    assert not fallback.strict


def test_explicit_cuda_without_nvml_is_tried_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    choice = select_providers("cuda", available=GPU_BUILD, gpu_count=0)
    assert choice.primary == CUDA
    assert "NVML reports no GPU" in caplog.text


def test_unknown_preference() -> None:
    with pytest.raises(ProviderUnavailableError, match="auto, tensorrt, cuda, cpu"):
        select_providers("opencl")


def test_session_options() -> None:
    choice = select_providers("cpu", intra_op_threads=2, allow_spinning=False)
    options = choice.session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = select_providers("cpu", intra_op_threads=0)
    assert default.intra_op_threads == default_intra_op_threads() >= 1


def test_count_gpus_never_raises() -> None:
    assert count_gpus() >= 0


def test_choice_is_immutable() -> None:
    choice = select_providers("cpu")
    with pytest.raises(AttributeError):
        choice.intra_op_threads = 8  # type: ignore[misc]
    assert "cpu" in choice.describe()
