"""The thread budget: how many inference runs at once, and how many threads each.

The rule is one pure function, :func:`thread_budget`; :func:`usable_cores` says how many
cores the process may use (the CPU affinity mask, capped by a container's cgroup CPU quota).

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
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

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

_CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
_PROC_CGROUP: Final = Path("/proc/self/cgroup")


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


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota_v2(text: str | None) -> float | None:
    """``cpu.max``: ``"max 100000"`` (no limit) or ``"200000 100000"`` (2 CPUs)."""
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(quota_text: str | None, period_text: str | None) -> float | None:
    """``cpu.cfs_quota_us`` (-1: no limit) over ``cpu.cfs_period_us``."""
    if not quota_text or not period_text:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _own_cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """The process's cgroup v2 directory and its parents up to ``root`` (nearest first)."""
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "" and path.startswith("/"):
            dirs: list[Path] = []
            current = Path(path)
            while True:
                dirs.append(root / current.relative_to("/"))
                if current == current.parent:
                    break
                current = current.parent
            return dirs
    return [root]


def cgroup_cpu_limit(root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC_CGROUP) -> float | None:
    """The cgroup CPU quota in CPUs (``2.5``), or ``None`` when there is none.

    cgroup v2: the smallest ``cpu.max`` of the process's cgroup and its parents (inside a
    container the process's cgroup is the mount's root). cgroup v1:
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` under ``cpu/`` or ``cpu,cpuacct/``.
    """
    limits: list[float] = []
    for directory in _own_cgroup_dirs(root, proc_cgroup):
        limit = _quota_v2(_read(directory / "cpu.max"))
        if limit is not None:
            limits.append(limit)
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        directory = root / name
        limit = _quota_v1(
            _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
        )
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def usable_cores(affinity: int, quota: float | None) -> int:
    """Cores this process may use: ``affinity`` CPUs, capped by a cgroup CPU ``quota``.

    A fractional quota is rounded down (a budget above the quota is throttled), to at
    least 1.
    """
    cores = max(1, affinity)
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return cores


def host_cores() -> int:
    """:func:`usable_cores` of this process: its affinity mask and its cgroup CPU quota."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    return usable_cores(affinity, cgroup_cpu_limit())
