"""Execution-provider choice for ONNX Runtime: TensorRT, CUDA or CPU, decided once per process.

:func:`select_providers` turns a preference (``PTW_EXECUTION_PROVIDER``: ``auto``,
``tensorrt``, ``cuda`` or ``cpu``) into a :class:`ProviderChoice` that the application owns
and hands to the :class:`~pytrickle_worker.engine.inference.registry.ModelRegistry`. Nothing here
is cached in module globals: call it once at start-up and keep the result.

``auto`` uses a GPU provider only when onnxruntime lists it *and* NVML reports at least one
usable device (``pynvml`` import or init failure means "no GPU"), so a CPU host never tries
CUDA and never logs CUDA errors. An explicit ``cuda``/``tensorrt`` request on a host whose
onnxruntime build lacks that provider raises :class:`ProviderUnavailableError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, cast

import onnxruntime as ort

from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.hardware import count_gpus

__all__ = [
    "CONV_ALGO_SEARCHES",
    "CPU",
    "CUDA",
    "PREFERENCES",
    "TENSORRT",
    "ProviderChoice",
    "ProviderSpec",
    "ProviderUnavailableError",
    "available_providers",
    "count_gpus",
    "default_intra_op_threads",
    "select_providers",
]

logger = logging.getLogger(__name__)

# onnxruntime's compiled classes carry no type information; go through an explicit Any.
_ORT: Final[Any] = cast("Any", ort)

TENSORRT: Final = "TensorrtExecutionProvider"
CUDA: Final = "CUDAExecutionProvider"
CPU: Final = "CPUExecutionProvider"

Preference = Literal["auto", "tensorrt", "cuda", "cpu"]
PREFERENCES: Final[tuple[str, ...]] = ("auto", "tensorrt", "cuda", "cpu")
#: The CUDA provider's ``cudnn_conv_algo_search`` settings. The worker's default is
#: ``heuristic``: ``exhaustive`` (onnxruntime's default) benchmarks every convolution's
#: algorithms at each new input shape, and continuous batching forms every batch size from
#: 1 to max_batch, so a live stream would stall on the first run of each.
CONV_ALGO_SEARCHES: Final[tuple[str, ...]] = ("heuristic", "exhaustive", "default")

#: A provider as onnxruntime's ``providers=`` argument takes it: a name, or (name, options).
ProviderSpec = str | tuple[str, dict[str, object]]

_SHORT_NAMES: Final[dict[str, str]] = {TENSORRT: "tensorrt", CUDA: "cuda", CPU: "cpu"}


class ProviderUnavailableError(WorkerError, ValueError):
    """The requested execution provider is not available on this host."""


def available_providers() -> list[str]:
    """``onnxruntime.get_available_providers()``, typed."""
    return [str(name) for name in _ORT.get_available_providers()]


def default_intra_op_threads() -> int:
    """Physical cores usable by this process (at least 1).

    Hyper-threads do not speed up onnxruntime's GEMM/conv kernels, so physical cores are the
    better default; the count is capped by the CPU affinity mask (containers, ``taskset``).
    """
    physical: int | None = None
    try:
        import psutil  # noqa: PLC0415

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    logical = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = logical
    cores = physical or logical
    if usable < logical:
        # Affinity-limited: assume the allowed CPUs include hyper-thread siblings in the
        # same proportion as the whole machine.
        cores = max(1, usable * cores // logical)
    return max(1, min(cores, usable))


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    """The execution providers every session of this process uses, plus session settings.

    ``providers`` is in onnxruntime's ``providers=`` format, best first, always ending with
    the CPU provider (onnxruntime places nodes a GPU provider cannot run there).
    """

    preference: str
    providers: tuple[ProviderSpec, ...]
    intra_op_threads: int
    reason: str
    available: tuple[str, ...] = ()
    gpu_count: int = 0
    allow_spinning: bool = True
    #: ``auto`` may fall back to the next provider when a session cannot be created on this
    #: one; an explicit request must get the provider it asked for.
    strict: bool = False
    #: Run through IO binding with preallocated input/output buffers on the session's
    #: device (``PTW_IO_BINDING``; ``auto``: on for a GPU provider).
    io_binding: bool = False
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(p if isinstance(p, str) else p[0] for p in self.providers)
        object.__setattr__(self, "_names", names)

    @property
    def provider_names(self) -> tuple[str, ...]:
        """Provider names, best first (``("CUDAExecutionProvider", "CPUExecutionProvider")``)."""
        return self._names

    @property
    def primary(self) -> str:
        """The preferred provider's name."""
        return self._names[0]

    @property
    def name(self) -> str:
        """Short name of the preferred provider: ``tensorrt``, ``cuda`` or ``cpu``."""
        return short_name(self.primary)

    @property
    def uses_gpu(self) -> bool:
        return self.primary != CPU

    def ort_providers(self) -> list[ProviderSpec]:
        """A fresh list for ``InferenceSession(providers=...)``."""
        return [p if isinstance(p, str) else (p[0], dict(p[1])) for p in self.providers]

    @property
    def device_id(self) -> int:
        """The GPU the chain's GPU providers use (0 on a CPU chain)."""
        for spec in self.providers:
            if not isinstance(spec, str) and "device_id" in spec[1]:
                return int(cast(int, spec[1]["device_id"]))
        return 0

    def with_tensorrt_profile(
        self, input_name: str, chw: tuple[int, int, int], max_batch: int
    ) -> ProviderChoice:
        """The same chain with TensorRT optimisation profiles for a model whose batch axis
        is dynamic: batch 1 to ``max_batch`` (optimised for ``max_batch``), so that the
        engine is built once, at load, for every batch the scheduler forms. No TensorRT in
        the chain: unchanged."""
        if TENSORRT not in self._names:
            return self
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        c, h, w = chw
        # Input names with ':' or ',' would break TensorRT's "name:dims,name:dims" syntax.
        if any(ch in input_name for ch in ":,"):
            logger.warning("input %r: no TensorRT profile (name has ':' or ',')", input_name)
            return self

        def dims(batch: int) -> str:
            return f"{input_name}:{batch}x{c}x{h}x{w}"

        specs: list[ProviderSpec] = []
        for spec in self.providers:
            if not isinstance(spec, str) and spec[0] == TENSORRT:
                options = dict(spec[1])
                options["trt_profile_min_shapes"] = dims(1)
                options["trt_profile_opt_shapes"] = dims(max_batch)
                options["trt_profile_max_shapes"] = dims(max_batch)
                specs.append((TENSORRT, options))
            else:
                specs.append(spec)
        return replace(self, providers=tuple(specs))

    def with_intra_op_threads(self, threads: int) -> ProviderChoice:
        """The same choice with ``threads`` intra-op threads per session (the budget's)."""
        if threads < 1:
            raise ValueError(f"intra-op threads must be >= 1, got {threads}")
        return replace(self, intra_op_threads=threads)

    def cpu_only(self) -> ProviderChoice:
        """The same settings on the CPU provider alone (the fallback of ``auto``)."""
        return ProviderChoice(
            preference=self.preference,
            providers=(CPU,),
            intra_op_threads=self.intra_op_threads,
            reason=f"fallback from {self.primary}",
            available=self.available,
            gpu_count=self.gpu_count,
            allow_spinning=self.allow_spinning,
            strict=False,
            io_binding=self.io_binding,
        )

    def session_options(self) -> Any:
        """New ``onnxruntime.SessionOptions``: full graph optimisation, sequential, our threads.

        (Typed ``Any``: onnxruntime ships no type information for its compiled classes.)
        """
        options = _ORT.SessionOptions()
        options.graph_optimization_level = _ORT.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = _ORT.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: ORT warnings are noise for users
        if not self.allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def describe(self) -> str:
        chain = " > ".join(short_name(n) for n in self.provider_names)
        binding = "; IO binding" if self.io_binding else ""
        return (
            f"{self.primary} ({self.reason}; chain {chain}; "
            f"intra-op threads {self.intra_op_threads}{binding})"
        )


def short_name(provider: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda``; unknown names are returned unchanged."""
    return _SHORT_NAMES.get(provider, provider)


def _tensorrt_spec(cache_dir: Path, device_id: int, fp16: bool) -> ProviderSpec:
    return (
        TENSORRT,
        {
            "device_id": device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache_dir),
            "trt_fp16_enable": fp16,
        },
    )


def _cuda_spec(device_id: int, conv_algo_search: str) -> ProviderSpec:
    return (CUDA, {"device_id": device_id, "cudnn_conv_algo_search": conv_algo_search.upper()})


def select_providers(
    preference: str = "auto",
    *,
    intra_op_threads: int | None = None,
    device_id: int = 0,
    trt_cache_dir: str | Path | None = None,
    trt_fp16: bool = False,
    cudnn_conv_algo_search: str = "heuristic",
    allow_spinning: bool = True,
    available: Sequence[str] | None = None,
    gpu_count: int | None = None,
    io_binding: str = "auto",
) -> ProviderChoice:
    """Choose the execution providers for this process and log the choice at INFO.

    ``preference`` is ``auto`` (TensorRT, then CUDA, when onnxruntime lists them and NVML
    reports a GPU; otherwise CPU), ``tensorrt``, ``cuda`` or ``cpu``. ``intra_op_threads``
    of ``None`` or ``0`` means one per physical core. ``available`` and ``gpu_count``
    default to ``onnxruntime.get_available_providers()`` and :func:`count_gpus`; passing
    them is for hosts where the probe is known or for tests.

    Raises :class:`ProviderUnavailableError` when ``preference`` is unknown, or names a
    provider this onnxruntime build does not offer.
    """
    pref = preference.strip().lower()
    if pref not in PREFERENCES:
        raise ProviderUnavailableError(
            f"unknown execution provider {preference!r}: expected one of {', '.join(PREFERENCES)}"
        )
    offered = tuple(available if available is not None else available_providers())
    conv_search = cudnn_conv_algo_search.strip().lower()
    if conv_search not in CONV_ALGO_SEARCHES:
        raise ProviderUnavailableError(
            f"cudnn_conv_algo_search must be one of {', '.join(CONV_ALGO_SEARCHES)}, "
            f"not {cudnn_conv_algo_search!r}"
        )
    threads = intra_op_threads if intra_op_threads else default_intra_op_threads()
    if threads < 0:
        raise ProviderUnavailableError(f"intra-op threads must be >= 0, not {threads}")
    cache_dir = (
        Path(trt_cache_dir)
        if trt_cache_dir is not None
        else Path.home() / ".cache" / "pytrickle-worker" / "tensorrt"
    )

    def wanted_missing(provider: str) -> ProviderUnavailableError:
        return ProviderUnavailableError(
            f"execution provider {pref!r} was requested but onnxruntime "
            f"{ort.__version__} does not offer {provider}; available: {', '.join(offered)}. "
            "Install onnxruntime-gpu (pip install 'pytrickle-worker[gpu]', replacing "
            "onnxruntime) on a host with an NVIDIA driver, or set PTW_EXECUTION_PROVIDER=auto "
            "or cpu"
        )

    gpus = 0
    chain: list[ProviderSpec] = []
    if pref == "cpu":
        chain.append(CPU)
        reason, strict = "requested", False
    elif pref in ("cuda", "tensorrt"):
        wanted = TENSORRT if pref == "tensorrt" else CUDA
        if wanted not in offered:
            raise wanted_missing(wanted)
        gpus = gpu_count if gpu_count is not None else count_gpus()
        if gpus == 0:
            # Jetson boards have CUDA but no NVML: honour the explicit request, and let
            # session creation fail clearly if the device is really missing.
            logger.warning(
                "%s requested but NVML reports no GPU; trying it anyway", short_name(wanted)
            )
        chain = [_tensorrt_spec(cache_dir, device_id, trt_fp16)] if pref == "tensorrt" else []
        if CUDA in offered:
            chain.append(_cuda_spec(device_id, conv_search))
        chain.append(CPU)
        reason, strict = "requested", True
    else:
        gpu_providers = [p for p in (TENSORRT, CUDA) if p in offered]
        if gpu_providers:
            gpus = gpu_count if gpu_count is not None else count_gpus()
        if gpu_providers and gpus > 0:
            chain = []
            if TENSORRT in gpu_providers:
                chain.append(_tensorrt_spec(cache_dir, device_id, trt_fp16))
            if CUDA in gpu_providers:
                chain.append(_cuda_spec(device_id, conv_search))
            chain.append(CPU)
            reason = f"auto: NVML reports {gpus} GPU{'s' if gpus != 1 else ''}"
        elif gpu_providers:
            chain = [CPU]
            reason = "auto: onnxruntime has GPU providers but no GPU is usable"
        else:
            chain = [CPU]
            reason = "auto: no GPU provider in this onnxruntime build"
        strict = False
    if CPU not in offered and CPU in chain:
        # Never happens with official builds; keep the chain usable if it does.
        chain.remove(CPU)
    if not chain:
        raise ProviderUnavailableError(f"no usable execution provider among {offered}")

    if io_binding not in ("auto", "on", "off"):
        raise ProviderUnavailableError(f"io_binding must be auto, on or off, not {io_binding!r}")
    gpu_chain = chain[0] != CPU
    choice = ProviderChoice(
        preference=pref,
        providers=tuple(chain),
        intra_op_threads=threads,
        reason=reason,
        available=offered,
        gpu_count=gpus,
        allow_spinning=allow_spinning,
        strict=strict,
        io_binding=io_binding == "on" or (io_binding == "auto" and gpu_chain),
    )
    logger.info("execution provider: %s", choice.describe())
    return choice
