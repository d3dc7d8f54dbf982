"""CPU, memory and GPU load (psutil, NVML), for stateReport and /hardware/*."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import psutil

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int

    @property
    def memory_percent(self) -> float:
        if self.memory_total_bytes <= 0:
            return 0.0
        return 100.0 * self.memory_used_bytes / self.memory_total_bytes


@dataclass(frozen=True)
class LoadSample:
    """``cpu_percent`` is averaged since the previous sample (psutil semantics)."""

    cpu_percent: float
    memory_percent: float
    gpus: tuple[GpuSample, ...]

    @property
    def gpu_percent(self) -> float | None:
        if not self.gpus:
            return None
        return sum(g.utilization_percent for g in self.gpus) / len(self.gpus)

    @property
    def gpu_memory_percent(self) -> float | None:
        if not self.gpus:
            return None
        used = sum(g.memory_used_bytes for g in self.gpus)
        total = sum(g.memory_total_bytes for g in self.gpus)
        return 100.0 * used / total if total else 0.0


def count_gpus() -> int:
    """Number of NVIDIA GPUs NVML reports; 0 when ``pynvml`` is missing or NVML fails.

    Failures are logged at DEBUG only: on a CPU host they are the normal case.
    """
    try:
        import pynvml  # noqa: PLC0415 - optional at run time: only GPU hosts need it
    except ImportError:
        logger.debug("pynvml is not installed; assuming no GPU")
        return 0
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses, or OSError for a missing library
        logger.debug("NVML is unavailable (%s); assuming no GPU", exc)
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception as exc:
        logger.debug("NVML could not count devices (%s); assuming no GPU", exc)
        return 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception as exc:
            logger.debug("nvmlShutdown failed: %s", exc)


class HardwareMonitor:
    """Samples system load. NVML is initialised once, lazily; without it GPU values are None.

    ``sample()`` never blocks for long (psutil's cpu_percent with ``interval=None`` compares
    with the previous call), so it may run on the event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._nvml_tried = False
        psutil.cpu_percent(interval=None)  # prime the counter: the first call returns 0.0

    def _nvml_module(self) -> Any:
        with self._lock:
            if not self._nvml_tried:
                self._nvml_tried = True
                try:
                    import pynvml  # noqa: PLC0415 - optional at run time: no GPU, no driver

                    pynvml.nvmlInit()
                    self._nvml = pynvml
                    logger.info("NVML: %d GPU(s)", pynvml.nvmlDeviceGetCount())
                except Exception as exc:  # any NVML/driver failure means "no GPU"
                    logger.debug("NVML unavailable (%s): GPU load is reported as null", exc)
                    self._nvml = None
            return self._nvml

    def gpus(self) -> tuple[GpuSample, ...]:
        nvml = self._nvml_module()
        if nvml is None:
            return ()
        samples: list[GpuSample] = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                samples.append(
                    GpuSample(
                        index,
                        name.decode() if isinstance(name, bytes) else str(name),
                        float(util.gpu),
                        int(memory.used),
                        int(memory.total),
                    )
                )
        except Exception as exc:  # a GPU that falls off the bus must not break heartbeats
            logger.warning("NVML query failed: %s", exc)
            return ()
        return tuple(samples)

    def sample(self) -> LoadSample:
        return LoadSample(
            cpu_percent=float(psutil.cpu_percent(interval=None)),
            memory_percent=float(psutil.virtual_memory().percent),
            gpus=self.gpus(),
        )

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception as exc:  # shutdown errors are irrelevant at exit
                    logger.debug("nvmlShutdown: %s", exc)
                self._nvml = None
