"""``OnnxModel``: one ONNX Runtime session of an ultralytics-exported model.

Loading reads the input (name, ``[1, 3, h, w]`` size), the ``metadata_props`` ultralytics
writes (parsed safely by :mod:`.metadata`) and infers the output contract
(:mod:`.postprocess`). ``detect()`` and ``classify()`` are thread-safe: onnxruntime
sessions allow concurrent ``run`` calls, and each thread gets its own preprocessing buffers.

Both are built on three steps that a batching caller can use on their own:
``preprocess(frame) -> (tensor, meta)`` per image, ``run(batch) -> output`` on a stacked
``(N, 3, h, w)`` batch, and ``postprocess_detections(output, metas)`` /
``postprocess_classifications(output)`` back to one result per image.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, cast

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from av.video.reformatter import VideoReformatter

from pytrickle_worker.core.errors import ModelError
from pytrickle_worker.core.frame import FramePixels
from pytrickle_worker.engine.inference.batching import (
    BatchCoordinator,
    FloatType,
    ModelBatcher,
    model_max_batch,
    padded_batch_sizes,
)
from pytrickle_worker.engine.inference.binding import BoundRunner
from pytrickle_worker.engine.inference.imageops import (
    LetterboxBuffer,
    LetterboxInfo,
    letterbox,
    letterbox_pixels,
    resize_center_crop,
    scale_boxes_to_frame,
)
from pytrickle_worker.engine.inference.metadata import parse_metadata
from pytrickle_worker.engine.inference.postprocess import (
    Detections,
    OutputContract,
    decode_classification,
    decode_detections,
    infer_contract,
)
from pytrickle_worker.engine.inference.providers import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderChoice,
    select_providers,
)

__all__ = [
    "Classification",
    "InferenceObserver",
    "InputMeta",
    "ModelInfo",
    "OnnxModel",
    "StageTimings",
    "file_sha256",
]

logger = logging.getLogger(__name__)

_ORT: Final[Any] = cast("Any", ort)

DEFAULT_IMGSZ: Final = 640
DEFAULT_STRIDE: Final = 32
#: Numeric names given to an end-to-end model without names (its class count is unknown).
_FALLBACK_NAME_COUNT: Final = 1000

_NOT_ONNX: Final[dict[str, str]] = {
    ".pt": "a PyTorch checkpoint",
    ".pth": "a PyTorch checkpoint",
    ".torchscript": "a TorchScript model",
    ".engine": "a TensorRT engine",
    ".trt": "a TensorRT engine",
    ".tflite": "a TensorFlow Lite model",
    ".pb": "a TensorFlow graph",
    ".mlpackage": "a CoreML model",
    ".xml": "an OpenVINO model",
}


def _export_hint(name: str) -> str:
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return (
        f"export it to ONNX (`yolo export model={stem}.pt format=onnx dynamic=True` or "
        "`pytrickle-worker mpta convert IN.mpta OUT.mpta`)"
    )


# --------------------------------------------------------------------------------------
# Small value types
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class StageTimings:
    """Milliseconds spent per stage, accumulated over calls (``time.perf_counter``).

    Not thread-safe: use one per stream/frame.
    """

    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    calls: int = 0

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms

    @property
    def overhead_ms(self) -> float:
        """Everything but ``session.run``."""
        return self.preprocess_ms + self.postprocess_ms

    def record(self, started: float, preprocessed: float, inferred: float, ended: float) -> None:
        """Add one call from its four ``time.perf_counter()`` stamps."""
        self.preprocess_ms += (preprocessed - started) * 1000
        self.inference_ms += (inferred - preprocessed) * 1000
        self.postprocess_ms += (ended - inferred) * 1000
        self.calls += 1

    def add(self, other: StageTimings) -> None:
        self.preprocess_ms += other.preprocess_ms
        self.inference_ms += other.inference_ms
        self.postprocess_ms += other.postprocess_ms
        self.calls += other.calls

    def reset(self) -> None:
        self.preprocess_ms = self.inference_ms = self.postprocess_ms = 0.0
        self.calls = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "preprocess_ms": round(self.preprocess_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "postprocess_ms": round(self.postprocess_ms, 3),
            "total_ms": round(self.total_ms, 3),
            "calls": self.calls,
        }


@dataclass(frozen=True, slots=True)
class Classification:
    """Top-1 of a classifier. ``probs`` holds every class probability."""

    class_id: int
    class_name: str
    confidence: float
    probs: npt.NDArray[np.float32] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class InputMeta:
    """How one image became a model input: what postprocessing needs to map results back.

    ``letterbox`` is the placement of a detector's input, ``None`` for a classifier's.
    """

    frame_shape: tuple[int, ...]
    letterbox: LetterboxInfo | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What was loaded. ``provider`` is the execution provider the session really uses.

    ``names`` has one entry per class index (``"0"``, ``"1"``, ... where metadata has none).
    ``nc`` is 0 for an end-to-end model without names (class count unknown). ``batch`` is
    the input's fixed batch size, or None for a dynamic batch axis.
    """

    path: Path
    sha256: str
    input_name: str
    input_size: tuple[int, int]
    names: tuple[str, ...]
    task: str
    contract: OutputContract
    nc: int
    stride: int
    provider: str
    output_name: str = "output0"
    input_dtype: str = "float32"
    end2end: bool = False
    batch: int | None = 1

    @property
    def can_batch(self) -> bool:
        """Whether one run can take several images (a dynamic or fixed batch above 1)."""
        return self.batch is None or self.batch > 1


def _names_tuple(names: dict[int, str] | None, count: int) -> tuple[str, ...]:
    named = names or {}
    return tuple(named.get(i, str(i)) for i in range(count))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def non_onnx_kind(name: str) -> str | None:
    """What a model file named ``name`` is when it is not ONNX ("a PyTorch checkpoint",
    "not an ONNX model"), going by its suffix; None for a ``.onnx`` file."""
    suffix = Path(name).suffix.lower()
    return None if suffix == ".onnx" else _NOT_ONNX.get(suffix, "not an ONNX model")


def _check_model_path(path: Path) -> None:
    kind = non_onnx_kind(path.name)
    if kind is not None:
        raise ModelError(
            f"model '{path.name}' is {kind}; this worker runs ONNX models only: "
            f"{_export_hint(path.name)}"
        )
    if not path.is_file():
        raise ModelError(f"model file '{path}' does not exist")
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read model file '{path}': {exc}") from exc
    if head == b"PK\x03\x04":
        raise ModelError(
            f"model '{path.name}' is a zip archive (a PyTorch checkpoint named .onnx?), "
            f"not an ONNX model: {_export_hint(path.name)}"
        )


def _dims(shape: object) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for value in cast("Sequence[object]", shape or []):
        if (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str):
            dims.append(value)
        else:
            dims.append(None)
    return dims


def dynamic_batch_input(path: Path) -> tuple[str, tuple[int, int, int]] | None:
    """The input name and ``(c, h, w)`` of a model whose single image input has a dynamic
    batch axis (a dynamic h/w is read from the ultralytics ``imgsz`` metadata); None for a
    fixed batch or an input the loader will refuse anyway. Read from a CPU session created
    without optimisation: cheap, no engine and no graph rewrites."""
    options = _ORT.SessionOptions()
    options.graph_optimization_level = _ORT.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        probe = _ORT.InferenceSession(str(path), options, providers=[CPU])
    except Exception as exc:
        raise ModelError(f"cannot load ONNX model '{path}': {exc}") from exc
    inputs = list(probe.get_inputs())
    if len(inputs) != 1:
        return None
    shape = _dims(inputs[0].shape)
    if len(shape) != 4 or _fixed_dim(shape[0]) is not None:
        return None
    h, w = _input_size(shape, parse_metadata(_metadata_props(probe), path.name).imgsz)
    return str(inputs[0].name), (_fixed_dim(shape[1]) or 3, h, w)


def _fixed_dim(value: int | str | None) -> int | None:
    """A dimension's size when the model fixes it (a positive int), else None."""
    return value if isinstance(value, int) and value > 0 else None


def _input_size(
    shape: Sequence[int | str | None], imgsz: tuple[int, int] | None
) -> tuple[int, int]:
    """``(h, w)`` of an ``[n, c, h, w]`` input: its fixed sizes, else the ultralytics
    ``imgsz`` metadata, else the default."""
    fallback = imgsz or (DEFAULT_IMGSZ, DEFAULT_IMGSZ)
    return _fixed_dim(shape[2]) or fallback[0], _fixed_dim(shape[3]) or fallback[1]


def _metadata_props(session: Any) -> dict[str, str]:
    """A session's ``metadata_props`` as plain strings."""
    return {str(k): str(v) for k, v in dict(session.get_modelmeta().custom_metadata_map).items()}


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class InferenceObserver(Protocol):
    """Told about every ``session.run`` of a model (metrics). Called from inference threads,
    so it must be thread-safe and cheap."""

    def observe_inference(self, model: ModelInfo, seconds: float, batch_size: int) -> None: ...


class _ThreadState(threading.local):
    """Per-thread preprocessing state of one model."""

    def __init__(self) -> None:
        self.letterbox: LetterboxBuffer | None = None
        self.reformatter: VideoReformatter | None = None
        self.classify_input: npt.NDArray[np.floating] | None = None


class OnnxModel:
    """An ultralytics ONNX model on one onnxruntime session.

    ``providers`` defaults to :func:`select_providers` ``("auto")``; pass the process-wide
    :class:`ProviderChoice`. ``sha256`` may be given when the caller already hashed the
    file. Raises :class:`ModelError` for a non-ONNX file (with the export command), a file
    onnxruntime cannot load, or an unsupported input/output contract.
    """

    def __init__(
        self,
        path: str | Path,
        providers: ProviderChoice | None = None,
        *,
        sha256: str | None = None,
        warmup: bool = True,
        max_batch: int = 1,
    ) -> None:
        """``max_batch``: the largest batch the scheduler will form for this model (the
        TensorRT optimisation profile covers 1..max_batch)."""
        self.path = Path(path)
        _check_model_path(self.path)
        choice = providers if providers is not None else select_providers("auto")
        started = time.perf_counter()
        if TENSORRT in choice.provider_names:
            choice = self._with_tensorrt_profile(choice, max_batch)
        self._session: Any = self._create_session(choice)
        self._bound: BoundRunner | None = None
        self._lock = threading.Lock()
        self._local = _ThreadState()
        self._warned_names: set[str] = set()
        self._warned_class_ids = False
        self._batcher: ModelBatcher | None = None
        #: Set by the registry once the model is loaded (so the warm-up is not observed).
        self.observer: InferenceObserver | None = None
        try:
            self._info = self._read_info(sha256 or file_sha256(self.path))
        except OSError as exc:
            raise ModelError(f"cannot read model file '{self.path}': {exc}") from exc
        if choice.io_binding:
            self._bound = self._bind(choice)
        self.load_ms = (time.perf_counter() - started) * 1000
        self.warmup_ms = 0.0
        self._warm = warmup
        if warmup:
            self.warmup()
        info = self._info
        logger.info(
            "loaded %s: %s, %d classes, input %dx%d %s, %s, load %.0f ms, warmup %.0f ms",
            self.path.name,
            info.contract.value,
            info.nc,
            info.input_size[1],
            info.input_size[0],
            info.input_dtype,
            info.provider,
            self.load_ms,
            self.warmup_ms,
        )

    # -- loading ------------------------------------------------------------------------

    def _with_tensorrt_profile(self, choice: ProviderChoice, max_batch: int) -> ProviderChoice:
        """``choice`` with a TensorRT profile for this model's dynamic batch axis."""
        found = dynamic_batch_input(self.path)
        if found is None:
            return choice
        name, chw = found
        return choice.with_tensorrt_profile(name, chw, max_batch)

    def _bind(self, choice: ProviderChoice) -> BoundRunner:
        info = self._info
        output = next(o for o in self._session.get_outputs() if o.name == info.output_name)
        tail = [_fixed_dim(d) for d in _dims(output.shape)[1:]]
        fixed_tail = None if None in tail else tuple(d for d in tail if d is not None)
        on_gpu = info.provider in (CUDA, TENSORRT)
        return BoundRunner(
            self._session,
            info.input_name,
            info.output_name,
            fixed_tail,
            device="cuda" if on_gpu else "cpu",
            device_id=choice.device_id if on_gpu else 0,
            input_dtype=np.float16 if info.input_dtype == "float16" else np.float32,
            output_dtype=np.float16 if str(output.type) == "tensor(float16)" else np.float32,
        )

    def _new_session(self, choice: ProviderChoice) -> Any:
        return _ORT.InferenceSession(
            str(self.path),
            sess_options=choice.session_options(),
            providers=choice.ort_providers(),
        )

    def _create_session(self, choice: ProviderChoice) -> Any:
        try:
            session = self._new_session(choice)
        except Exception as exc:
            if not choice.uses_gpu:
                raise ModelError(f"cannot load ONNX model '{self.path}': {exc}") from exc
            # Is the model broken, or the GPU provider? Ask the CPU provider.
            try:
                session = self._new_session(choice.cpu_only())
            except Exception as cpu_exc:
                raise ModelError(f"cannot load ONNX model '{self.path}': {cpu_exc}") from cpu_exc
            if choice.strict:
                raise ModelError(
                    f"'{self.path.name}' loads on the CPU but not on {choice.primary} "
                    f"(PTW_EXECUTION_PROVIDER={choice.preference}): {exc}"
                ) from exc
            logger.warning(
                "%s: cannot create a %s session (%s); using the CPU",
                self.path.name,
                choice.primary,
                exc,
            )
        active = [str(p) for p in session.get_providers()]
        if choice.strict and choice.primary not in active:
            raise ModelError(
                f"'{self.path.name}': onnxruntime did not enable {choice.primary} "
                f"(PTW_EXECUTION_PROVIDER={choice.preference}); session providers: "
                f"{', '.join(active)}"
            )
        if active and active[0] != choice.primary and choice.primary != CPU:
            logger.warning(
                "%s: asked for %s, onnxruntime uses %s", self.path.name, choice.primary, active[0]
            )
        return session

    def _read_info(self, sha256: str) -> ModelInfo:
        session = self._session
        source = self.path.name
        inputs = list(session.get_inputs())
        if len(inputs) != 1:
            raise ModelError(f"'{source}' has {len(inputs)} inputs; expected one image input")
        inp = inputs[0]
        in_shape = _dims(inp.shape)
        in_type = str(inp.type)
        if len(in_shape) != 4:
            raise ModelError(
                f"'{source}' input {inp.name!r} has shape {in_shape}; expected [1, 3, h, w]"
            )
        if in_type not in ("tensor(float)", "tensor(float16)"):
            raise ModelError(f"'{source}' input {inp.name!r} is {in_type}; expected float32/16")
        channel_dim = in_shape[1]
        fixed_batch = _fixed_dim(in_shape[0])
        if isinstance(channel_dim, int) and channel_dim != 3:
            raise ModelError(f"'{source}' takes {channel_dim} channels; expected 3 (RGB)")

        meta = parse_metadata(_metadata_props(session), source)
        input_size = _input_size(in_shape, meta.imgsz)
        outputs = list(session.get_outputs())
        shapes = [_dims(o.shape) for o in outputs]
        nc_meta = len(meta.names) if meta.names else None
        if meta.names and sorted(meta.names) != list(range(len(meta.names))):
            nc_meta = max(meta.names) + 1
        kwargs: dict[str, Any] = {
            "end2end": meta.end2end,
            "input_size": input_size,
            "kpt_shape": meta.kpt_shape,
        }
        try:
            contract, nc = infer_contract(shapes, nc_meta, meta.task, **kwargs)
        except ModelError as exc:
            if all(isinstance(d, int) for s in shapes for d in s):
                raise ModelError(f"'{source}': {exc}") from exc
            # Dynamic output dims the metadata could not settle: look at a real output.
            concrete = self._probe_shapes(str(inp.name), in_type, input_size, fixed_batch or 1)
            try:
                contract, nc = infer_contract(concrete, nc_meta, meta.task, **kwargs)
            except ModelError as exc2:
                raise ModelError(f"'{source}': {exc2}") from exc2
        if contract is OutputContract.END2END_DETECT and nc == 0:
            logger.warning(
                "%s: end-to-end model without class names; classes are named by index", source
            )
            names = _names_tuple(meta.names, _FALLBACK_NAME_COUNT)
        else:
            if meta.names is None:
                logger.warning("%s: no class names in metadata; using '0'..'%d'", source, nc - 1)
            elif len(meta.names) != nc:
                logger.warning(
                    "%s: metadata names %d classes, the output has %d", source, len(meta.names), nc
                )
            names = _names_tuple(meta.names, nc)
        task = meta.task or ("classify" if contract is OutputContract.CLASSIFY else "detect")
        active = [str(p) for p in session.get_providers()]
        return ModelInfo(
            path=self.path,
            sha256=sha256,
            input_name=str(inp.name),
            input_size=input_size,
            names=names,
            task=task,
            contract=contract,
            nc=nc,
            stride=meta.stride or DEFAULT_STRIDE,
            provider=active[0] if active else CPU,
            output_name=str(outputs[0].name),
            input_dtype="float16" if in_type == "tensor(float16)" else "float32",
            end2end=contract is OutputContract.END2END_DETECT,
            batch=fixed_batch,
        )

    def _probe_shapes(
        self, input_name: str, in_type: str, input_size: tuple[int, int], batch: int
    ) -> list[list[int | str | None]]:
        dtype = np.float16 if in_type == "tensor(float16)" else np.float32
        probe = np.zeros((batch, 3, *input_size), dtype=dtype)
        try:
            results = self._session.run(None, {input_name: probe})
        except Exception as exc:
            raise ModelError(
                f"'{self.path.name}': inference on a blank image failed: {exc}"
            ) from exc
        return [_dims(np.asarray(r).shape) for r in results]

    # -- properties ---------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def names(self) -> tuple[str, ...]:
        return self._info.names

    @property
    def closed(self) -> bool:
        return self._session is None

    def class_name(self, class_id: int) -> str:
        names = self._info.names
        return names[class_id] if 0 <= class_id < len(names) else str(class_id)

    def class_indices(self, names: Iterable[str]) -> npt.NDArray[np.int64]:
        """Sorted class indices of ``names``; unknown names are ignored (warned once each).

        Exact matches win; otherwise a case-insensitive match is used. An empty result means
        "no class" (not "all classes" -- that is ``classes=None``).
        """
        lookup = {name: i for i, name in enumerate(self._info.names)}
        folded: dict[str, int] = {}
        for name, i in lookup.items():
            folded.setdefault(name.casefold(), i)
        found: set[int] = set()
        unknown: list[str] = []
        for name in names:
            index = lookup.get(name)
            if index is None:
                index = folded.get(name.casefold())
            if index is None:
                unknown.append(name)
            else:
                found.add(index)
        if unknown:
            with self._lock:
                new = [n for n in unknown if n not in self._warned_names]
                self._warned_names.update(new)
            if new:
                logger.warning(
                    "%s has no class %s (classes: %s)",
                    self.path.name,
                    ", ".join(repr(n) for n in new),
                    ", ".join(self._info.names[:20]) + (" …" if len(self._info.names) > 20 else ""),
                )
        return np.array(sorted(found), dtype=np.int64)

    # -- inference ----------------------------------------------------------------------

    def enable_batching(
        self,
        coordinator: BatchCoordinator,
        max_batch: int,
        *,
        pad_to_sizes: bool | None = False,
    ) -> None:
        """Run this model through ``coordinator``'s run slots, batching its single-image
        runs with other threads' (cross-stream batching,
        :mod:`~pytrickle_worker.engine.inference.batching`). Idempotent.

        ``pad_to_sizes``: a dynamic batch is padded to one of :func:`padded_batch_sizes`,
        and each of them is run once now when the model warms up (a GPU's first run of a
        new input shape stalls); None: when the session runs on a GPU provider (a model
        that fell back to the CPU runs each batch at its own size)."""
        with self._lock:
            if self._batcher is not None:
                return
            info = self._info
            # A model that cannot batch gets a batcher of one all the same: its runs take
            # the coordinator's run slots like every other model's.
            size = model_max_batch(info.batch, max_batch, self.path.name)
            if pad_to_sizes is None:
                pad_to_sizes = info.provider in (CUDA, TENSORRT)
            run_sizes = padded_batch_sizes(size) if pad_to_sizes and info.batch is None else ()
            dtype = np.float16 if info.input_dtype == "float16" else np.float32
            if self._warm and len(run_sizes) > 1:
                # Under the lock for seconds on a GPU: harmless, the registry hands the
                # model out only once this returns.
                run_sizes = self._warm_sizes(run_sizes, dtype)
                size = run_sizes[-1]
            self._batcher = ModelBatcher(
                coordinator,
                self.path.name,
                self._session_run,
                max_batch=size,
                fixed_batch=info.batch,
                input_shape=(3, *info.input_size),
                dtype=dtype,
                run_sizes=run_sizes,
            )

    def _warm_sizes(self, sizes: tuple[int, ...], dtype: FloatType) -> tuple[int, ...]:
        """Run each of ``sizes`` past 1 (warmup() ran 1) once; the sizes up to the first
        that fails or answers another batch (a graph whose "dynamic" batch axis does not
        batch, a batch the device has no memory for), which the model then keeps to."""
        started = time.perf_counter()
        h, w = self._info.input_size
        name = self.path.name
        for index, size in enumerate(sizes[1:], 1):
            try:
                rows = self._session_run(np.zeros((size, 3, h, w), dtype=dtype)).shape[0]
            except Exception as exc:  # onnxruntime's own errors have no common base
                problem = f"fails ({exc})"
            else:
                if rows == size:
                    continue
                problem = f"gives an output of {rows} image(s)"
            kept = sizes[:index]
            logger.warning(
                "%s: a batch of %d %s; batches of up to %d only%s",
                name,
                size,
                problem,
                kept[-1],
                " (not batched)" if kept[-1] == 1 else "",
            )
            sizes = kept
            break
        elapsed = (time.perf_counter() - started) * 1000
        self.warmup_ms += elapsed
        if len(sizes) > 1:
            logger.info(
                "%s: batches padded to %s; warmed up in %.0f ms",
                name,
                ", ".join(str(size) for size in sizes),
                elapsed,
            )
        return sizes

    @property
    def max_batch(self) -> int:
        """The most images one run takes here (1 until batching is enabled)."""
        batcher = self._batcher
        return 1 if batcher is None else batcher.max_batch

    def run(self, batch: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """The first output, ``(N, ...)``, for an ``(N, 3, h, w)`` input.

        With batching enabled a single image (``N == 1``) joins other threads' images in
        one ``session.run``; the result is the same. ``N`` above a fixed batch size is an
        error; below it, the input is padded.
        """
        batcher = self._batcher
        if batcher is not None and batch.shape[0] == 1:
            return batcher.run(batch)
        return self._session_run(batch)

    def _session_run(self, batch: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        session = self._session
        if session is None:
            raise ModelError(f"model '{self.path.name}' is closed")
        info = self._info
        count = int(batch.shape[0])
        fixed = info.batch
        if fixed is not None and count != fixed:
            if count > fixed:
                raise ModelError(
                    f"'{self.path.name}' takes a fixed batch of {fixed}; got {count} images"
                )
            padded = np.zeros((fixed, *batch.shape[1:]), dtype=batch.dtype)
            padded[:count] = batch
            batch = padded
        observer = self.observer
        started = time.perf_counter() if observer is not None else 0.0
        bound = self._bound
        if bound is not None:
            output = bound.run(batch)
        else:
            result = session.run([info.output_name], {info.input_name: batch})
            output = np.asarray(result[0], dtype=np.float32)
        if observer is not None:
            observer.observe_inference(info, time.perf_counter() - started, count)
        return output[:count] if fixed is not None and count != fixed else output

    def _letterbox_buffer(self) -> LetterboxBuffer:
        state = self._local
        buffer = state.letterbox
        if buffer is None:
            dtype = np.float16 if self._info.input_dtype == "float16" else np.float32
            buffer = LetterboxBuffer(self._info.input_size, dtype=dtype)
            state.letterbox = buffer
        return buffer

    def preprocess(
        self, frame: npt.NDArray[np.uint8] | FramePixels, *, squash: bool = False
    ) -> tuple[npt.NDArray[np.floating], InputMeta]:
        """One ``(H, W, 3)`` uint8 RGB image to a ``(1, 3, h, w)`` input and its meta.

        Detectors letterbox it, classifiers resize the shorter side and crop the centre (with
        ``squash``, resize the whole image to the input, aspect ratio not kept).
        ``frame`` may be a decoded frame whose RGB is lazy: a detector then scales the
        decoder's frame straight to its input (one swscale call), a classifier takes its RGB.
        The tensor is this thread's reusable buffer for this model: it is valid until the
        same thread preprocesses again for this model; copy it (``np.concatenate`` into a
        batch does) to keep it longer.
        """
        info = self._info
        if info.contract is OutputContract.CLASSIFY:
            state = self._local
            if state.reformatter is None:
                state.reformatter = VideoReformatter()
                dtype = np.float16 if info.input_dtype == "float16" else np.float32
                state.classify_input = np.empty((1, 3, *info.input_size), dtype=dtype)
            h, w = info.input_size
            rgb = frame if isinstance(frame, np.ndarray) else frame.to_rgb()
            tensor = resize_center_crop(
                rgb,
                h if h == w and not squash else (h, w),
                state.classify_input,
                reformatter=state.reformatter,
            )
            return tensor, InputMeta(rgb.shape)
        if isinstance(frame, np.ndarray):
            tensor, lb = letterbox(frame, info.input_size, self._letterbox_buffer())
            return tensor, InputMeta(frame.shape, lb)
        tensor, lb = letterbox_pixels(frame, info.input_size, self._letterbox_buffer())
        return tensor, InputMeta((frame.height, frame.width, 3), lb)

    @staticmethod
    def _per_image(output: npt.NDArray[np.float32], count: int) -> list[npt.NDArray[np.float32]]:
        if count == 1:
            return [output]
        if output.shape[0] != count:
            raise ModelError(f"a batch of {count} gave an output of shape {output.shape}")
        return [output[i : i + 1] for i in range(count)]

    def postprocess_detections(
        self,
        output: npt.NDArray[np.float32],
        metas: Sequence[InputMeta],
        conf_thres: float = 0.25,
        classes: npt.NDArray[np.integer] | Sequence[int] | None = None,
        iou_thres: float = 0.7,
        max_det: int = 300,
        *,
        agnostic: bool = False,
    ) -> list[Detections]:
        """A detector's ``(N, ...)`` output to one :class:`Detections` per image (``metas``
        in batch order): confidence filter, ``classes`` restriction, NMS, then boxes scaled
        back to each frame and clipped."""
        info = self._info
        if not info.contract.is_detection:
            raise ModelError(f"'{self.path.name}' is a classifier; use classify()")
        allowed = None if classes is None else np.asarray(classes, dtype=np.int64)
        results: list[Detections] = []
        for image_output, meta in zip(self._per_image(output, len(metas)), metas, strict=True):
            dets = decode_detections(
                image_output,
                info.contract,
                conf_thres,
                allowed,
                iou_thres=iou_thres,
                max_det=max_det,
                agnostic=agnostic,
            )
            if len(dets):
                class_ids = dets.class_ids
                valid = (class_ids >= 0) & (class_ids < len(info.names))
                if not valid.all():
                    if not self._warned_class_ids:
                        self._warned_class_ids = True
                        logger.warning(
                            "%s: dropping detections with class ids outside 0..%d",
                            self.path.name,
                            len(info.names) - 1,
                        )
                    dets = Detections(dets.boxes[valid], dets.scores[valid], class_ids[valid])
                if meta.letterbox is not None:
                    dets = Detections(
                        scale_boxes_to_frame(dets.boxes, meta.letterbox, meta.frame_shape),
                        dets.scores,
                        dets.class_ids,
                    )
            results.append(dets)
        return results

    def postprocess_classifications(
        self, output: npt.NDArray[np.float32], count: int = 1
    ) -> list[Classification]:
        """A classifier's ``(N, nc)`` output to one top-1 :class:`Classification` per image."""
        if self._info.contract is not OutputContract.CLASSIFY:
            raise ModelError(f"'{self.path.name}' is a detector; use detect()")
        results: list[Classification] = []
        for image_output in self._per_image(output, count):
            class_id, confidence, probs = decode_classification(image_output)
            results.append(Classification(class_id, self.class_name(class_id), confidence, probs))
        return results

    def detect(
        self,
        frame: npt.NDArray[np.uint8] | FramePixels,
        conf_thres: float = 0.25,
        classes: npt.NDArray[np.integer] | Sequence[int] | None = None,
        iou_thres: float = 0.7,
        max_det: int = 300,
        timings: StageTimings | None = None,
        *,
        agnostic: bool = False,
    ) -> Detections:
        """Detect objects in an ``(H, W, 3)`` uint8 RGB frame (or a decoded frame, see
        :meth:`preprocess`); boxes in frame pixels.

        :meth:`preprocess` (letterbox) → :meth:`run` → :meth:`postprocess_detections`.
        """
        if not self._info.contract.is_detection:
            raise ModelError(f"'{self.path.name}' is a classifier; use classify()")
        t0 = time.perf_counter()
        tensor, meta = self.preprocess(frame)
        t1 = time.perf_counter()
        output = self.run(tensor)
        t2 = time.perf_counter()
        (dets,) = self.postprocess_detections(
            output, (meta,), conf_thres, classes, iou_thres, max_det, agnostic=agnostic
        )
        t3 = time.perf_counter()
        if timings is not None:
            timings.record(t0, t1, t2, t3)
        return dets

    def classify(
        self,
        frame: npt.NDArray[np.uint8] | FramePixels,
        timings: StageTimings | None = None,
        *,
        squash: bool = False,
    ) -> Classification:
        """Classify an ``(H, W, 3)`` uint8 RGB image (resize shorter side, centre crop; with
        ``squash`` the whole image resized to the input).

        :meth:`preprocess` → :meth:`run` → :meth:`postprocess_classifications`.
        """
        if self._info.contract is not OutputContract.CLASSIFY:
            raise ModelError(f"'{self.path.name}' is a detector; use detect()")
        t0 = time.perf_counter()
        tensor, _meta = self.preprocess(frame, squash=squash)
        t1 = time.perf_counter()
        output = self.run(tensor)
        t2 = time.perf_counter()
        (result,) = self.postprocess_classifications(output)
        t3 = time.perf_counter()
        if timings is not None:
            timings.record(t0, t1, t2, t3)
        return result

    def warmup(self) -> None:
        """One inference on a blank image (allocates arenas, builds GPU kernels/engines)."""
        h, w = self._info.input_size
        blank = np.zeros((h, w, 3), dtype=np.uint8)
        started = time.perf_counter()
        try:
            if self._info.contract is OutputContract.CLASSIFY:
                self.classify(blank)
            else:
                self.detect(blank, conf_thres=0.25)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"'{self.path.name}': warm-up inference failed: {exc}") from exc
        self.warmup_ms = (time.perf_counter() - started) * 1000

    def close(self) -> None:
        """Drop the session (its memory is freed once no call is using it)."""
        self._session = None
        self._bound = None

    def __repr__(self) -> str:
        info = self._info
        return (
            f"OnnxModel({self.path.name!r}, {info.contract.value}, nc={info.nc}, "
            f"input={info.input_size}, provider={info.provider})"
        )
