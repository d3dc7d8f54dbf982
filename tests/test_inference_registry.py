"""ModelRegistry: load once per content, share, refcount, close on last release."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from pytrickle_worker.core.errors import ModelError
from pytrickle_worker.engine.inference.providers import select_providers
from pytrickle_worker.engine.inference.registry import ModelRegistry
from tests.test_inference_model import NAMES3, constant_model, v8_rows


@pytest.fixture
def registry() -> ModelRegistry:
    return ModelRegistry(select_providers("cpu", intra_op_threads=1))


def test_acquire_loads_once_and_release_closes(tmp_path: Path, registry: ModelRegistry) -> None:
    path = constant_model(tmp_path / "a.onnx", v8_rows([], 3), metadata={"names": NAMES3})
    first = registry.acquire(path)
    second = registry.acquire(path)
    assert first is second
    assert registry.loaded_count == 1
    assert registry.total_loads == 1
    assert registry.refcount(first) == 2
    [row] = registry.stats()
    assert row["refs"] == 2
    assert row["contract"] == "yolov8_detect"
    assert row["provider"] == "CPUExecutionProvider"
    registry.release(first)
    assert not first.closed
    assert registry.loaded_count == 1
    registry.release(second)
    assert first.closed
    assert registry.loaded_count == 0
    assert registry.stats() == []
    third = registry.acquire(path)
    assert third is not first
    assert registry.total_loads == 2


def test_same_content_under_another_name_is_shared(tmp_path: Path, registry: ModelRegistry) -> None:
    path = constant_model(tmp_path / "a.onnx", v8_rows([], 3))
    copy = tmp_path / "copy" / "b.onnx"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert registry.acquire(path) is registry.acquire(copy)
    other = constant_model(tmp_path / "c.onnx", v8_rows([(1, 1, 1, 1, 0, 0.5)], 3))
    assert registry.acquire(other) is not registry.acquire(path)
    assert registry.loaded_count == 2


def test_concurrent_acquire_loads_once(tmp_path: Path, registry: ModelRegistry) -> None:
    path = constant_model(tmp_path / "a.onnx", v8_rows([], 3))
    other = constant_model(tmp_path / "b.onnx", v8_rows([], 2))
    barrier = threading.Barrier(8)
    got: list[object] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        barrier.wait()
        model = registry.acquire(path if index % 2 else other)
        with lock:
            got.append(model)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 8
    assert len({id(m) for m in got}) == 2
    assert registry.total_loads == 2
    assert sorted(row["refs"] for row in registry.stats()) == [4, 4]


def test_failed_load_is_not_cached(tmp_path: Path, registry: ModelRegistry) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelError):
        registry.acquire(path)
    assert registry.loaded_count == 0
    constant_model(path, v8_rows([], 3))
    assert registry.acquire(path).info.nc == 3


def test_errors_for_missing_and_pt_files(tmp_path: Path, registry: ModelRegistry) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        registry.acquire(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match=r"yolo export model=x\.pt format=onnx"):
        registry.acquire(tmp_path / "x.pt")


def test_release_of_unknown_model_warns(
    tmp_path: Path, registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    path = constant_model(tmp_path / "a.onnx", v8_rows([], 3))
    model = registry.acquire(path)
    registry.release(model)
    caplog.set_level(logging.WARNING)
    registry.release(model)
    assert "does not hold" in caplog.text


def test_models_work_after_acquire_and_close_all(tmp_path: Path, registry: ModelRegistry) -> None:
    path = constant_model(tmp_path / "a.onnx", v8_rows([(32, 32, 8, 8, 2, 0.9)], 3))
    model = registry.acquire(path)
    assert model.detect(np.zeros((64, 64, 3), np.uint8)).class_ids.tolist() == [2]
    registry.close()
    assert model.closed
    assert registry.loaded_count == 0
