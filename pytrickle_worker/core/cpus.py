"""How many cores this process may use: its CPU affinity mask, capped by a container's
cgroup CPU quota (cgroup v2 ``cpu.max`` up the hierarchy, or v1 CFS quota/period).

The inference thread budget and the camera hub's decoder threads both size themselves from
:func:`host_cores`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Final

__all__ = ["cgroup_cpu_limit", "host_cores", "usable_cores"]

_CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
_PROC_CGROUP: Final = Path("/proc/self/cgroup")


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
