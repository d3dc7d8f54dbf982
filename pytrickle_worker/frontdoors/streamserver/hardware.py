"""GPU facts for ``/hardware/info`` and ``/hardware/stats``, in pytrickle's shapes.

The GPU list and load come from :class:`~pytrickle_worker.core.hardware.HardwareMonitor`; the
few NVML facts it does not sample (UUID, compute capability, memory-controller load) are
read from NVML directly, only once the monitor has found GPUs (so NVML is initialised).
Without a GPU, or when NVML fails, both maps are empty. Blocking: call from a thread.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from pytrickle_worker.core.hardware import GpuSample, HardwareMonitor

logger = logging.getLogger(__name__)

__all__ = ["gpu_info", "gpu_stats"]


def _nvml_extras(samples: tuple[GpuSample, ...]) -> dict[int, dict[str, Any]]:
    extras: dict[int, dict[str, Any]] = {}
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        return extras
    for sample in samples:
        found: dict[str, Any] = {}
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(sample.index)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            found["id"] = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            found["major"], found["minor"] = int(major), int(minor)
            found["utilization_memory"] = int(nvml.nvmlDeviceGetUtilizationRates(handle).memory)
        except Exception as exc:  # any NVML failure only loses the extra fields
            logger.debug("NVML details of GPU %d unavailable: %s", sample.index, exc)
        extras[sample.index] = found
    return extras


def _base(sample: GpuSample, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": extra.get("id", str(sample.index)),
        "name": sample.name,
        "memory_total": sample.memory_total_bytes,
        "memory_free": max(0, sample.memory_total_bytes - sample.memory_used_bytes),
    }


def gpu_info(monitor: HardwareMonitor) -> dict[str, dict[str, Any]]:
    """``{index: {id, name, memory_total, memory_free, major, minor}}`` (bytes)."""
    samples = monitor.gpus()
    extras = _nvml_extras(samples) if samples else {}
    info: dict[str, dict[str, Any]] = {}
    for sample in samples:
        extra = extras.get(sample.index, {})
        entry = _base(sample, extra)
        entry["major"] = extra.get("major")
        entry["minor"] = extra.get("minor")
        info[str(sample.index)] = entry
    return info


def gpu_stats(monitor: HardwareMonitor) -> dict[str, dict[str, Any]]:
    """``{index: {id, name, memory_total, memory_free, utilization_compute,
    utilization_memory}}`` (bytes, percent)."""
    samples = monitor.gpus()
    extras = _nvml_extras(samples) if samples else {}
    stats: dict[str, dict[str, Any]] = {}
    for sample in samples:
        extra = extras.get(sample.index, {})
        entry = _base(sample, extra)
        entry["utilization_compute"] = round(sample.utilization_percent)
        entry["utilization_memory"] = extra.get("utilization_memory")
        stats[str(sample.index)] = entry
    return stats
