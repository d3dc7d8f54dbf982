"""Real models through the worker's batching path: a batched result is the batch-1 result.

The project's generated ONNX models (colour detector in the v8, v5 and e2e contracts, badge
classifier) run on onnxruntime's CPU provider through :meth:`OnnxModel.enable_batching`;
several threads call ``detect``/``classify`` at once, each on its own image (one of them
without any object), and each must get exactly what its image gives alone with batching off.
Nothing is mocked: the only stand-in is :func:`hold_slot`, a run of *another* model on the
same coordinator that keeps the one run slot busy while the requests gather (with the slot
free, the first request always runs alone at once: continuous batching), so the batch of K
is certain, and is asserted from the coordinator's statistics.

Then the same through :class:`PipelineService`: the demo MPTA (detector → classifier branch)
on frames processed concurrently with ``max_batch`` 4, and several tracked streams
interleaved through the batched models, against sequential processing with ``max_batch`` 1
(the batched variant of test_engine's track-id test).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import onnx
import onnx.numpy_helper
import pytest

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.devtools.models import build_colour_classifier, build_colour_detector
from pytrickle_worker.devtools.synthetic import (
    SceneObject,
    colour_for_confidence,
    moving_objects,
    render_scene,
)
from pytrickle_worker.engine.inference.batching import BatchCoordinator, ModelBatcher
from pytrickle_worker.engine.inference.model import Classification, ModelInfo, OnnxModel
from pytrickle_worker.engine.inference.postprocess import Detections
from pytrickle_worker.engine.inference.providers import ProviderChoice, select_providers
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.engine.tracking.bytetrack import TrackerState

Image = npt.NDArray[np.uint8]
Result = Detections | Classification

KINDS = ["v8", "v5", "e2e", "classify"]
DETECTOR_SIZE = (160, 224)  # (height, width): not square, so H and W stay apart
CLASSIFIER_SIZE = 64
MAX_BATCHES = [2, 4]
FIXED_BATCH = 4
#: How long a gathering may take before the test gives up (the VM is shared).
GATHER_TIMEOUT_S = 20.0


# ----------------------------------------------------------------------------- images


def detector_images() -> list[Image]:
    """Six scenes of different sizes (so each has its own letterbox), the second empty."""
    sizes = [(224, 160), (300, 200), (200, 250), (224, 160), (400, 240), (180, 180)]
    scenes = [
        [
            SceneObject("person", (5, 10, 25, 60)),
            SceneObject("car", (40, 20, 140, 80), badge="white"),
            SceneObject("truck", (120, 100, 210, 150), colour=colour_for_confidence("truck", 0.6)),
        ],
        [],  # no objects
        [SceneObject("car", (100, 90, 180, 140), colour=colour_for_confidence("car", 0.8))],
        [
            SceneObject("truck", (10, 10, 90, 70)),
            SceneObject("person", (150, 40, 170, 110), colour=colour_for_confidence("person", 0.7)),
        ],
        [SceneObject("person", (300, 20, 340, 200)), SceneObject("car", (20, 150, 200, 230))],
        [SceneObject("truck", (60, 60, 170, 120), colour=colour_for_confidence("truck", 0.9))],
    ]
    return [
        render_scene(width, height, objects, seed=index)
        for index, ((width, height), objects) in enumerate(zip(sizes, scenes, strict=True))
    ]


def classifier_images() -> list[Image]:
    """Six crops of different sizes, the second without any object; off-colour cars give
    probabilities well away from 0 and 1, so that a mixed-up result shows."""

    def car(width: int, height: int, seed: int, **kwargs: Any) -> Image:
        return render_scene(
            width, height, [SceneObject("car", (0, 0, width, height), **kwargs)], seed=seed
        )

    return [
        car(64, 64, 1, badge="white"),
        render_scene(64, 64, [], seed=2),  # no object at all
        car(80, 50, 3, colour=(128, 128, 128)),
        car(90, 90, 4, colour=(110, 110, 110)),
        car(50, 70, 5, colour=(180, 180, 150)),
        car(120, 100, 6, colour=(130, 125, 120)),
    ]


def images_for(kind: str) -> list[Image]:
    return classifier_images() if kind == "classify" else detector_images()


def build(kind: str, path: Path, batch: int | None) -> Path:
    if kind == "classify":
        return build_colour_classifier(path, CLASSIFIER_SIZE, batch=batch)
    assert kind in ("v8", "v5", "e2e")
    return build_colour_detector(path, kind, DETECTOR_SIZE, batch=batch)


# ----------------------------------------------------------------------------- results


def infer(model: OnnxModel, image: Image) -> Result:
    if model.info.contract.is_detection:
        return model.detect(image)
    return model.classify(image)


def assert_same(got: Result, want: Result, label: str) -> None:
    if isinstance(want, Detections):
        assert isinstance(got, Detections), label
        assert got.boxes.shape == want.boxes.shape, label
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-4, rtol=1e-4, err_msg=label)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4, rtol=1e-4, err_msg=label)
        np.testing.assert_array_equal(got.class_ids, want.class_ids, err_msg=label)
        return
    assert isinstance(got, Classification), label
    assert (got.class_id, got.class_name) == (want.class_id, want.class_name), label
    np.testing.assert_allclose(got.confidence, want.confidence, atol=1e-4, rtol=1e-4)
    assert got.probs is not None and want.probs is not None
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-4, rtol=1e-4, err_msg=label)


def describe(result: Result) -> object:
    if isinstance(result, Detections):
        return (len(result), result.class_ids.tolist(), np.round(result.scores, 3).tolist())
    return (result.class_name, round(result.confidence, 3))


@dataclass(frozen=True)
class Built:
    """One model kind: its dynamic, fixed-4 and fixed-1 builds, images and batch-1 results."""

    kind: str
    dynamic: Path
    fixed: Path
    single: Path
    images: list[Image]
    references: list[Result]


@pytest.fixture(scope="module")
def cpu() -> ProviderChoice:
    return select_providers("cpu", intra_op_threads=1)


@pytest.fixture(scope="module", params=KINDS)
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cpu: ProviderChoice
) -> Built:
    kind = cast("str", request.param)
    out = tmp_path_factory.mktemp(f"batching-{kind}")
    single = build(kind, out / "single.onnx", 1)
    images = images_for(kind)
    # The reference: every image alone, on the batch-1 build, batching off.
    reference_model = OnnxModel(single, cpu)
    references = [infer(reference_model, image) for image in images]
    # The test is only as good as its images: they must give different results.
    described = [describe(r) for r in references]
    assert len(set(map(repr, described))) == len(described), described
    if kind != "classify":
        assert [len(cast("Detections", r)) > 0 for r in references] == [
            True,
            False,
            True,
            True,
            True,
            True,
        ]
    return Built(
        kind=kind,
        dynamic=build(kind, out / "dynamic.onnx", None),
        fixed=build(kind, out / "fixed.onnx", FIXED_BATCH),
        single=single,
        images=images,
        references=references,
    )


# ----------------------------------------------------------------------------- gathering


@contextmanager
def hold_slot(coordinator: BatchCoordinator) -> Generator[None]:
    """Keep the coordinator's one run slot busy (with a run of another model, a plain
    function here) until the block ends, so that requests gather meanwhile."""
    running, release = threading.Event(), threading.Event()

    def blocked_run(batch: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        running.set()
        release.wait(GATHER_TIMEOUT_S)
        return np.zeros((batch.shape[0], 1), np.float32)

    other = ModelBatcher(
        coordinator,
        "other-model",
        blocked_run,
        max_batch=1,
        fixed_batch=None,
        input_shape=(1, 1, 1),
        dtype=np.float32,
    )
    holder = threading.Thread(target=other.run, args=(np.zeros((1, 1, 1, 1), np.float32),))
    holder.start()
    try:
        assert running.wait(GATHER_TIMEOUT_S), "the slot holder never ran"
        yield
    finally:
        release.set()
        holder.join(GATHER_TIMEOUT_S)


def pending(model: OnnxModel) -> int:
    """Requests waiting in the model's batcher."""
    batcher = model._batcher  # pyright: ignore[reportPrivateUsage] - observing the gathering
    assert batcher is not None
    with batcher._coordinator.cond:  # pyright: ignore[reportPrivateUsage] - same
        return len(batcher._pending)  # pyright: ignore[reportPrivateUsage] - same


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GATHER_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def sizes_since(coordinator: BatchCoordinator, before: dict[int, int]) -> dict[int, int]:
    """The batch sizes (size → count) run since ``before`` was taken."""
    now = cast("dict[int, int]", coordinator.stats()["batch_sizes"])
    return {size: n - before.get(size, 0) for size, n in now.items() if n > before.get(size, 0)}


def gathered_round(
    model: OnnxModel, coordinator: BatchCoordinator, images: Sequence[Image]
) -> tuple[list[Result], dict[int, int]]:
    """One thread per image behind a barrier, all gathered while the slot is busy, then
    released together. Returns each thread's result and the batch sizes that ran."""
    results: list[Result | None] = [None] * len(images)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(images))

    def call(index: int) -> None:
        try:
            barrier.wait(GATHER_TIMEOUT_S)
            results[index] = infer(model, images[index])
        except BaseException as exc:
            errors.append(exc)

    before = cast("dict[int, int]", coordinator.stats()["batch_sizes"])
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(images))]
    with hold_slot(coordinator):
        for thread in threads:
            thread.start()
        wait_until(lambda: pending(model) == len(images) or bool(errors), "the requests")
    for thread in threads:
        thread.join(GATHER_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), "a caller never returned"
    assert not errors, errors
    sizes = sizes_since(coordinator, before)
    sizes[1] -= 1  # the slot holder's run
    return [r for r in results if r is not None], {s: n for s, n in sizes.items() if n}


def expected_sizes(count: int, max_batch: int) -> dict[int, int]:
    """Oldest first, up to ``max_batch`` a batch: full batches, then the rest."""
    sizes: dict[int, int] = {}
    if count >= max_batch:
        sizes[max_batch] = count // max_batch
    if count % max_batch:
        sizes[count % max_batch] = 1
    return sizes


def check_rounds(
    model: OnnxModel, built: Built, counts: Sequence[int], configured: int, max_batch: int
) -> None:
    """Rounds of ``counts`` threads on ``model`` batched with ``configured`` as the maximum
    (``max_batch``: the model's own limit that follows from it)."""
    coordinator = BatchCoordinator(1)
    model.enable_batching(coordinator, configured)
    assert model.max_batch == max_batch
    for count in counts:
        images = built.images[:count]
        results, sizes = gathered_round(model, coordinator, images)
        label = f"{built.kind}: {count} thread(s), max_batch {max_batch}"
        assert sizes == expected_sizes(count, max_batch), (label, sizes)
        assert len(results) == count
        for index, (got, want) in enumerate(zip(results, built.references, strict=False)):
            assert_same(got, want, f"{label}, image {index}")
    stats = coordinator.stats()
    assert stats["slots_busy"] == 0
    assert stats["largest_batch"] == min(max(counts), max_batch)


# ----------------------------------------------------------------------------- dynamic batch


@pytest.mark.parametrize("max_batch", MAX_BATCHES)
def test_dynamic_batch_gives_each_thread_its_batch_1_result(
    built: Built, cpu: ProviderChoice, max_batch: int
) -> None:
    model = OnnxModel(built.dynamic, cpu)
    assert model.info.batch is None and model.info.can_batch
    assert model.max_batch == 1  # until batching is enabled
    # Batching off, the dynamic build gives the batch-1 build's results.
    for image, want in zip(built.images, built.references, strict=True):
        assert_same(infer(model, image), want, f"{built.kind}: unbatched")
    # 1, 2, 3 and max_batch threads gather into one batch; one more than max_batch splits.
    counts = sorted({1, 2, 3, max_batch, max_batch + 1})
    check_rounds(model, built, counts, max_batch, max_batch)


def test_batches_are_gathered_again_and_again_without_a_mix_up(
    built: Built, cpu: ProviderChoice
) -> None:
    """The batch tensor is reused from batch to batch: rounds of different sizes and
    orders leave nothing of one round in the next."""
    model = OnnxModel(built.dynamic, cpu)
    coordinator = BatchCoordinator(1)
    model.enable_batching(coordinator, 4)
    order = [4, 1, 0, 5, 3, 2]
    for count in (4, 2, 3, 1, 4):
        picked = order[:count]
        results, sizes = gathered_round(model, coordinator, [built.images[i] for i in picked])
        assert sizes == {count: 1}
        for index, got in zip(picked, results, strict=True):
            assert_same(got, built.references[index], f"{built.kind}: image {index}")
        order = order[1:] + order[:1]


class RunSizes:
    """The model's observer: the batch size of every ``session.run`` it makes."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def observe_inference(self, model: ModelInfo, seconds: float, batch_size: int) -> None:
        self.sizes.append(batch_size)


def test_padded_sizes_are_warmed_up_and_every_thread_gets_its_batch_1_result(
    built: Built, cpu: ProviderChoice, caplog: pytest.LogCaptureFixture
) -> None:
    model = OnnxModel(built.dynamic, cpu)
    coordinator = BatchCoordinator(1)
    with caplog.at_level(logging.INFO, logger="pytrickle_worker.engine.inference.model"):
        model.enable_batching(coordinator, 6, pad_to_sizes=True)
    warmed = [r.getMessage() for r in caplog.records if "batches padded to" in r.getMessage()]
    assert len(warmed) == 1 and "dynamic.onnx: batches padded to 1, 2, 4, 6;" in warmed[0]
    runs = RunSizes()
    model.observer = runs
    for count in (3, 5, 6, 1):
        results, sizes = gathered_round(model, coordinator, built.images[:count])
        assert sizes == {count: 1}  # the requests; the session saw the padded size
        for index, (got, want) in enumerate(zip(results, built.references, strict=False)):
            assert_same(got, want, f"{built.kind}: {count} padded, image {index}")
    assert runs.sizes == [4, 6, 6, 1]
    assert coordinator.stats()["padded_rows"] == 1 + 1


def single_image_graph(source: Path, path: Path, how: str) -> Path:
    """``source`` (a dynamic-batch classifier) with its output cut to one image: the input
    still declares a dynamic batch, but a batch of more than one fails inside the graph
    (``reshape``, as in models exported with a hard-coded reshape) or answers its first
    image only (``slice``)."""
    model = onnx.load(str(source))
    graph = model.graph
    output = graph.output[0]
    classes = output.type.tensor_type.shape.dim[1].dim_value
    hidden = output.name + "_batched"
    for node in graph.node:
        node.output[:] = [hidden if name == output.name else name for name in node.output]
    constants = {"one_image": [1, classes], "zero": [0], "one": [1]}
    for name, values in constants.items():
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(values, np.int64), name))
    if how == "reshape":
        node = onnx.helper.make_node("Reshape", [hidden, "one_image"], [output.name])
    else:
        node = onnx.helper.make_node("Slice", [hidden, "zero", "one", "zero"], [output.name])
    graph.node.append(node)
    output.type.tensor_type.shape.dim[0].Clear()
    output.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("how", "problem"),
    [("reshape", "fails ("), ("slice", "gives an output of 1 image(s)")],
)
def test_a_graph_that_does_not_batch_loads_unbatched_with_a_warning(
    tmp_path: Path, cpu: ProviderChoice, caplog: pytest.LogCaptureFixture, how: str, problem: str
) -> None:
    dynamic = build_colour_classifier(tmp_path / "dynamic.onnx", 64, batch=None)
    broken = single_image_graph(dynamic, tmp_path / "one-image.onnx", how)
    model = OnnxModel(broken, cpu)
    assert model.info.batch is None  # it declares a dynamic batch
    coordinator = BatchCoordinator(1)
    with caplog.at_level(logging.WARNING, logger="pytrickle_worker.engine.inference.model"):
        model.enable_batching(coordinator, 8, pad_to_sizes=True)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert warned[0].startswith(f"one-image.onnx: a batch of 2 {problem}")
    assert warned[0].endswith("; batches of up to 1 only (not batched)")
    assert model.max_batch == 1
    images = classifier_images()[:3]
    reference = OnnxModel(dynamic, cpu)
    results, sizes = gathered_round(model, coordinator, images)
    assert sizes == {1: 3}  # one image a run, and every one right
    for index, (got, image) in enumerate(zip(results, images, strict=True)):
        assert_same(got, infer(reference, image), f"image {index}")


def test_a_fixed_batch_keeps_its_size_when_sizes_are_padded(
    built: Built, cpu: ProviderChoice, caplog: pytest.LogCaptureFixture
) -> None:
    model = OnnxModel(built.fixed, cpu)
    coordinator = BatchCoordinator(1)
    with caplog.at_level(logging.INFO, logger="pytrickle_worker.engine.inference.model"):
        model.enable_batching(coordinator, 8, pad_to_sizes=True)
    assert "batches padded to" not in caplog.text  # no other size is warmed up
    runs = RunSizes()
    model.observer = runs
    results, _ = gathered_round(model, coordinator, built.images[:3])
    for index, (got, want) in enumerate(zip(results, built.references, strict=False)):
        assert_same(got, want, f"{built.kind}: fixed 4, image {index}")
    assert runs.sizes == [FIXED_BATCH]


def test_auto_pads_only_a_session_on_a_gpu(built: Built, cpu: ProviderChoice) -> None:
    model = OnnxModel(built.dynamic, cpu)
    coordinator = BatchCoordinator(1)
    model.enable_batching(coordinator, 6, pad_to_sizes=None)  # auto: this session is the CPU's
    runs = RunSizes()
    model.observer = runs
    gathered_round(model, coordinator, built.images[:3])
    assert runs.sizes == [3]


# ----------------------------------------------------------------------------- fixed batches


def test_fixed_batch_of_4_is_padded(built: Built, cpu: ProviderChoice) -> None:
    model = OnnxModel(built.fixed, cpu)
    assert model.info.batch == FIXED_BATCH
    # Unbatched, one image is padded to 4 by the session run itself.
    for image, want in zip(built.images, built.references, strict=True):
        assert_same(infer(model, image), want, f"{built.kind}: fixed 4, unbatched")
    # Batched, the model's own batch wins over the configured one, smaller or larger.
    larger = OnnxModel(built.fixed, cpu, warmup=False)
    larger.enable_batching(BatchCoordinator(1), 8)
    assert larger.max_batch == FIXED_BATCH
    check_rounds(model, built, [1, 2, 3, 4], 2, FIXED_BATCH)


def test_fixed_batch_of_1_is_not_batched_but_keeps_to_the_run_slots(
    built: Built, cpu: ProviderChoice, caplog: pytest.LogCaptureFixture
) -> None:
    model = OnnxModel(built.single, cpu)
    assert model.info.batch == 1 and not model.info.can_batch
    coordinator = BatchCoordinator(1)
    with caplog.at_level(logging.INFO, logger="pytrickle_worker.engine.inference.batching"):
        model.enable_batching(coordinator, 4)
        model.enable_batching(coordinator, 4)  # idempotent: no second line
    assert model.max_batch == 1
    why = [r for r in caplog.records if "single.onnx: fixed batch of 1" in r.getMessage()]
    assert len(why) == 1 and why[0].levelno == logging.INFO
    assert "not batched" in why[0].getMessage() and "dynamic" in why[0].getMessage()

    runs: list[int] = []

    class Runs:
        def observe_inference(self, model: object, seconds: float, batch_size: int) -> None:
            runs.append(batch_size)

    model.observer = Runs()
    images = built.images[:3]
    results: list[Result | None] = [None] * len(images)

    def call(index: int) -> None:
        results[index] = infer(model, images[index])

    before = cast("dict[int, int]", coordinator.stats()["batch_sizes"])
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(images))]
    with hold_slot(coordinator):
        for thread in threads:
            thread.start()
        wait_until(lambda: pending(model) == len(images), "the requests")
        time.sleep(0.05)
        assert runs == []  # the one slot is busy: no run of this model either
    for thread in threads:
        thread.join(GATHER_TIMEOUT_S)
    assert runs == [1, 1, 1]  # then one at a time, each alone
    sizes = sizes_since(coordinator, before)
    assert sizes == {1: len(images) + 1}  # and the slot holder's
    for index, got in enumerate(results):
        assert got is not None
        assert_same(got, built.references[index], f"{built.kind}: fixed 1, image {index}")


# ----------------------------------------------------------------------------- PipelineService


def service_config(
    tmp_path: Path, max_batch: int, batch_sizes: Literal["auto", "padded", "exact"] = "auto"
) -> WorkerConfig:
    """One run slot (one inference worker of one thread), so that frames gather."""
    return WorkerConfig(
        batch_sizes=batch_sizes,
        cache_dir=tmp_path / f"cache-{max_batch}",
        execution_provider="cpu",
        inference_workers=1,
        intra_op_threads=1,
        max_batch=max_batch,
    )


def demo_frames() -> list[Image]:
    """Six 640x360 frames: the moving car and truck, an empty frame, single objects."""
    width, height, fps = 640, 360, 15.0
    scenes = [
        moving_objects(0, width, height, fps),
        [],
        [SceneObject("car", (300, 100, 460, 220), badge="white")],
        [SceneObject("truck", (50, 200, 250, 330))],
        moving_objects(90, width, height, fps),
        [SceneObject("car", (20, 20, 180, 120), badge="black", colour=(205, 50, 45))],
    ]
    return [render_scene(width, height, s, seed=i) for i, s in enumerate(scenes)]


def assert_same_json(got: Any, want: Any, where: str) -> None:
    """Equal, with floats (confidences) within 1e-4."""
    if isinstance(want, float) and not isinstance(got, bool):
        assert got == pytest.approx(want, abs=1e-4, rel=1e-4), where
    elif isinstance(want, dict):
        want_dict = cast("dict[str, Any]", want)
        assert isinstance(got, dict), where
        got_dict = cast("dict[str, Any]", got)
        assert set(got_dict) == set(want_dict), where
        for key, value in want_dict.items():
            if key != "ms":  # timings differ from run to run
                assert_same_json(got_dict[key], value, f"{where}.{key}")
    elif isinstance(want, list):
        want_list = cast("list[Any]", want)
        assert isinstance(got, list), where
        got_list = cast("list[Any]", got)
        assert len(got_list) == len(want_list), where
        for index, (a, b) in enumerate(zip(got_list, want_list, strict=True)):
            assert_same_json(a, b, f"{where}[{index}]")
    else:
        assert got == want, where


@pytest.mark.parametrize("batch_sizes", ["auto", "padded"])
async def test_pipeline_frames_processed_concurrently_with_max_batch_4_equal_sequential(
    demo_assets: DemoAssets, tmp_path: Path, batch_sizes: Literal["auto", "padded"]
) -> None:
    frames = demo_frames()
    async with PipelineService(service_config(tmp_path, 1), cores=2) as service:
        assert service.scheduler.pipeline_threads == 1
        pipeline = await service.load(str(demo_assets.mpta_path))
        expected = [
            (await service.process(pipeline, frame, TrackerState(frame_rate=5), run_actions=False))
            for frame in frames
        ]
        assert service.scheduler.batching.stats()["largest_batch"] == 1
        await service.release(pipeline)
    wanted = [r.to_json() for r in expected]
    classes = [r["detection"]["class"] if r["detection"] else None for r in wanted]
    assert classes == ["yellow", None, "white", "truck", "yellow", "black"]

    async with PipelineService(service_config(tmp_path, 4, batch_sizes), cores=2) as service:
        assert service.scheduler.pipeline_threads == 4
        # auto pads where a session runs on a GPU: here, on the CPU, each batch keeps its size
        assert service.registry.pad_to_sizes == (None if batch_sizes == "auto" else True)
        pipeline = await service.load(str(demo_assets.mpta_path))
        assert pipeline.root.model.max_batch == 4
        largest = 1
        for attempt in range(5):  # frames gather while the model is busy: nearly always
            results = await asyncio.gather(
                *(
                    service.process(pipeline, frame, TrackerState(frame_rate=5), run_actions=False)
                    for frame in frames
                )
            )
            for index, (got, want) in enumerate(zip(results, wanted, strict=True)):
                assert_same_json(got.to_json(), want, f"attempt {attempt}, frame {index}")
            largest = cast("int", service.scheduler.batching.stats()["largest_batch"])
            if largest > 1:
                break
        assert largest > 1, "the concurrent frames never ran as one batch"
        if batch_sizes == "auto":
            assert service.scheduler.batching.stats()["padded_rows"] == 0
        await service.release(pipeline)


# ----------------------------------------------------------------------------- tracking


STREAMS = 4
STREAM_FRAMES = 14
STREAM_FPS = 5.0
#: Stream 1 loses its objects for these frames (longer than the tracker keeps a lost
#: track at 5 fps), so its car's id changes mid-stream.
GAP = range(4, 10)


def stream_frames(stream: int) -> list[Image]:
    """Each stream: the moving scene at its own phase; stream 1 with a gap."""
    frames: list[Image] = []
    for index in range(STREAM_FRAMES):
        objects = moving_objects(index + 17 * stream, 640, 360, STREAM_FPS)
        if stream == 1 and index in GAP:
            objects = []
        frames.append(render_scene(640, 360, objects, seed=stream * 100 + index))
    return frames


async def track_stream(
    service: PipelineService, pipeline: Any, frames: Sequence[Image]
) -> list[dict[str, Any]]:
    """One stream's frames in order, one in flight (as a stream door does)."""
    tracker = TrackerState(frame_rate=STREAM_FPS)
    records: list[dict[str, Any]] = []
    for frame in frames:
        result = await service.process(pipeline, frame, tracker, run_actions=False)
        records.append(result.to_json())
    return records


async def test_track_ids_of_interleaved_streams_through_batched_models_equal_batch_1(
    demo_assets: DemoAssets, tmp_path: Path
) -> None:
    frames = [stream_frames(stream) for stream in range(STREAMS)]
    async with PipelineService(service_config(tmp_path, 1), cores=2) as service:
        pipeline = await service.load(str(demo_assets.mpta_path))
        expected = [await track_stream(service, pipeline, f) for f in frames]
        await service.release(pipeline)
    ids = [[r["detection"]["id"] if r["detection"] else None for r in s] for s in expected]
    assert ids[0] == [1] * STREAM_FRAMES
    assert ids[1][: GAP.start] == [1] * GAP.start
    assert ids[1][GAP.start : GAP.stop] == [None] * len(GAP)
    # Car (1) and truck (2) were lost in the gap; back, the car is a new track, confirmed
    # (given an id) on its second frame: 3.
    assert ids[1][GAP.stop :] == [None] + [3] * (STREAM_FRAMES - GAP.stop - 1)

    async with PipelineService(service_config(tmp_path, 4), cores=2) as service:
        pipeline = await service.load(str(demo_assets.mpta_path))
        got = await asyncio.gather(*(track_stream(service, pipeline, f) for f in frames))
        stats = service.scheduler.batching.stats()
        await service.release(pipeline)
    for stream, (records, wanted) in enumerate(zip(got, expected, strict=True)):
        for index, (record, want) in enumerate(zip(records, wanted, strict=True)):
            assert_same_json(record, want, f"stream {stream}, frame {index}")
    assert cast("int", stats["largest_batch"]) > 1, stats
