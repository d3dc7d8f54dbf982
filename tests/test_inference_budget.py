"""The thread budget rule, the usable-core count (affinity, cgroup v1/v2 quota) and the
budget PipelineService derives from the configuration."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.engine.inference.budget import (
    GPU_INFERENCE_WORKERS,
    cgroup_cpu_limit,
    host_cores,
    thread_budget,
    usable_cores,
)
from pytrickle_worker.engine.inference.providers import select_providers
from pytrickle_worker.engine.mpta.service import PipelineService


@pytest.mark.parametrize(
    ("cores", "workers", "decode"),
    [(1, 1, 0), (2, 2, 0), (3, 3, 0), (4, 3, 1), (8, 6, 2), (16, 12, 4), (64, 48, 16)],
)
def test_cpu_auto_budget_is_single_thread_runs_on_the_cores_left_by_decoding(
    cores: int, workers: int, decode: int
) -> None:
    budget = thread_budget(cores)
    assert (budget.inference_workers, budget.intra_op_threads, budget.decode_cores) == (
        workers,
        1,
        decode,
    )
    assert budget.inference_threads + budget.decode_cores <= cores
    assert not budget.oversubscribed
    assert not budget.workers_configured and not budget.intra_configured


def test_configured_values_win_and_the_other_divides_the_inference_cores() -> None:
    # 8 cores: 2 left to decoding, 6 inference cores.
    assert thread_budget(8, inference_workers=2).intra_op_threads == 3
    assert thread_budget(8, inference_workers=4).intra_op_threads == 1
    assert thread_budget(8, intra_op_threads=3).inference_workers == 2
    assert thread_budget(8, intra_op_threads=6).inference_workers == 1
    assert thread_budget(8, intra_op_threads=16).inference_workers == 1
    both = thread_budget(8, inference_workers=3, intra_op_threads=4)
    assert (both.inference_workers, both.intra_op_threads) == (3, 4)
    assert both.workers_configured and both.intra_configured
    assert both.oversubscribed  # 12 + 2 > 8: used as given, flagged
    assert "configured" in both.describe()


def test_gpu_budget_runs_two_at_once_with_one_intra_op_thread() -> None:
    budget = thread_budget(16, gpu=True)
    assert (budget.inference_workers, budget.intra_op_threads) == (GPU_INFERENCE_WORKERS, 1)
    assert not budget.oversubscribed
    assert thread_budget(1, gpu=True).inference_workers == GPU_INFERENCE_WORKERS
    configured = thread_budget(16, gpu=True, inference_workers=4, intra_op_threads=2)
    assert (configured.inference_workers, configured.intra_op_threads) == (4, 2)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="cores"):
        thread_budget(0)
    with pytest.raises(ValueError, match="0 = auto"):
        thread_budget(4, inference_workers=-1)


def test_usable_cores_is_the_affinity_capped_by_the_quota_rounded_down() -> None:
    assert usable_cores(8, None) == 8
    assert usable_cores(8, 2.0) == 2
    assert usable_cores(8, 2.5) == 2
    assert usable_cores(8, 0.5) == 1
    assert usable_cores(2, 16.0) == 2
    assert usable_cores(0, None) == 1
    cores = host_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_cgroup_v2_quota_of_the_process_cgroup_and_its_parents(tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/kubepods/pod1/ctr")
    root = tmp_path / "cgroup"
    write(root / "cpu.max", "max 100000")
    assert cgroup_cpu_limit(root, proc) is None
    write(root / "kubepods" / "pod1" / "ctr" / "cpu.max", "250000 100000")
    assert cgroup_cpu_limit(root, proc) == 2.5
    write(root / "kubepods" / "cpu.max", "150000 100000")  # a tighter parent wins
    assert cgroup_cpu_limit(root, proc) == 1.5
    # Inside a container the process's cgroup is the namespace's root: "0::/".
    write(proc, "0::/")
    assert cgroup_cpu_limit(root, proc) is None
    write(root / "cpu.max", "200000 100000")
    assert cgroup_cpu_limit(root, proc) == 2.0
    write(root / "cpu.max", "garbage")
    assert cgroup_cpu_limit(root, proc) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    write(proc, "4:cpu,cpuacct:/\n1:name=systemd:/")
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1")
    write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(root, proc) is None
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "300000")
    assert cgroup_cpu_limit(root, proc) == 3.0
    write(root / "cpu" / "cpu.cfs_quota_us", "50000")
    write(root / "cpu" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(root, proc) == 0.5
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path / "missing-proc") is None


async def test_pipeline_service_sizes_its_scheduler_and_sessions_by_the_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = WorkerConfig(cache_dir=tmp_path, execution_provider="cpu")
    service = PipelineService(config, cores=4)
    assert (service.budget.inference_workers, service.budget.intra_op_threads) == (3, 1)
    assert service.providers.intra_op_threads == 1
    assert service.scheduler.budget is service.budget

    configured = WorkerConfig(
        cache_dir=tmp_path, execution_provider="cpu", inference_workers=1, intra_op_threads=0
    )
    service = PipelineService(configured, cores=4)
    assert (service.budget.inference_workers, service.budget.intra_op_threads) == (1, 3)
    assert service.providers.intra_op_threads == 3

    # Given providers keep their threads: they count as configured.
    given = select_providers("cpu", intra_op_threads=2)
    service = PipelineService(config, given, cores=4)
    assert service.budget.intra_op_threads == 2 and service.budget.intra_configured
    assert service.budget.inference_workers == 1

    with caplog.at_level(logging.INFO, logger="pytrickle_worker.engine.inference.scheduler"):
        async with PipelineService(config, cores=4) as started:
            assert started.scheduler.running
        assert not started.scheduler.running
    lines = [r.getMessage() for r in caplog.records if "inference scheduler" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "3 inference worker(s) (auto) × 1 intra-op thread(s) (auto)" in lines[0]
