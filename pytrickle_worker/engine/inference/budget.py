"""The thread budget: how many inference runs at once, and how many threads each.

The rule is one pure function, :func:`thread_budget`; ``core.cpus.host_cores`` says how
many cores the process may use (the CPU affinity mask, capped by a container's cgroup CPU
quota).

The rule (``PTW_INFERENCE_WORKERS`` and ``PTW_INTRA_OP_THREADS``, 0 = auto):

* ``decode = cores // 4`` cores are left to decoding, RGB conversion and encoding (none below
  4 cores: there they share the cores between runs, since onnxruntime does not spin);
* the other ``cores - decode`` cores (at least 1) are the inference cores;
* CPU provider: one intra-op thread per run and one run per inference core
  (``workers = inference cores``, ``intra = 1``). Measured on the YOLOv8n-sized model on 2
  cores (bench/RESULTS.md): two parallel single-thread runs give more frames/s than one
  two-thread run, since onnxruntime's kernels do not scale linearly across threads;
* GPU provider: 2 runs (one prepares or decodes on the CPU while the other runs on the GPU),
  1 intra-op thread (it serves only the nodes that fall back to the CPU);
* a configured value wins; when only one of the two is set, the other divides the inference
  cores by it (at least 1). Then ``workers × intra + decode <= cores`` always holds for the
  automatic values; configured ones that exceed the cores are used as given, with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

# Re-exported: callers size their budget from the same count of usable cores.
from pytrickle_worker.core.cpus import cgroup_cpu_limit, host_cores, usable_cores

__all__ = [
    "GPU_INFERENCE_WORKERS",
    "ThreadBudget",
    "cgroup_cpu_limit",
    "host_cores",
    "thread_budget",
    "usable_cores",
]

logger = logging.getLogger(__name__)

#: Concurrent runs on a GPU provider.
GPU_INFERENCE_WORKERS: Final = 2
#: One core in this many is left to decoding, conversion and encoding.
_DECODE_SHARE: Final = 4


@dataclass(frozen=True, slots=True)
class ThreadBudget:
    """The chosen budget. ``decode_cores`` are the cores left outside inference."""

    cores: int
    inference_workers: int
    intra_op_threads: int
    decode_cores: int
    gpu: bool = False
    workers_configured: bool = False
    intra_configured: bool = False

    @property
    def inference_threads(self) -> int:
        """Threads that may run inference kernels at once: workers × intra-op threads."""
        return self.inference_workers * self.intra_op_threads

    @property
    def oversubscribed(self) -> bool:
        return not self.gpu and self.inference_threads + self.decode_cores > self.cores

    def describe(self) -> str:
        def origin(configured: bool) -> str:
            return "configured" if configured else "auto"

        return (
            f"{self.cores} core(s), {'GPU' if self.gpu else 'CPU'} provider: "
            f"{self.inference_workers} inference worker(s) "
            f"({origin(self.workers_configured)}) × {self.intra_op_threads} intra-op "
            f"thread(s) ({origin(self.intra_configured)}), {self.decode_cores} core(s) left "
            "to decoding"
        )


def thread_budget(
    cores: int,
    *,
    gpu: bool = False,
    inference_workers: int = 0,
    intra_op_threads: int = 0,
) -> ThreadBudget:
    """The budget for ``cores`` usable cores (see the module docstring for the rule).

    ``inference_workers`` and ``intra_op_threads`` are the configured values, 0 = auto.
    """
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    if inference_workers < 0 or intra_op_threads < 0:
        raise ValueError("inference_workers and intra_op_threads must be >= 0 (0 = auto)")
    decode = cores // _DECODE_SHARE
    inference_cores = max(1, cores - decode)
    if gpu:
        workers = inference_workers or GPU_INFERENCE_WORKERS
        intra = intra_op_threads or 1
    elif inference_workers and intra_op_threads:
        workers, intra = inference_workers, intra_op_threads
    elif inference_workers:
        workers = inference_workers
        intra = max(1, inference_cores // workers)
    elif intra_op_threads:
        intra = intra_op_threads
        workers = max(1, inference_cores // intra)
    else:
        workers, intra = inference_cores, 1
    return ThreadBudget(
        cores=cores,
        inference_workers=workers,
        intra_op_threads=intra,
        decode_cores=decode,
        gpu=gpu,
        workers_configured=inference_workers > 0,
        intra_configured=intra_op_threads > 0,
    )
