"""PipelineService: the async face of the engine, usable with or without the server.

It owns the archive cache, the model registry, the :class:`InferenceScheduler` (every
inference run of both doors, and model loading on its own threads) and the action
dispatcher, and gives each a start/stop lifecycle::

    async with PipelineService(WorkerConfig()) as service:  # any EngineConfig will do
        pipeline = await service.load("demo.mpta")
        result = await service.process(pipeline, frame, TrackerState(frame_rate=15))
        await service.release(pipeline)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np

from pytrickle_worker.core.frame import FramePixels
from pytrickle_worker.core.logutil import mask_url
from pytrickle_worker.engine.inference.batching import default_max_batch
from pytrickle_worker.engine.inference.budget import ThreadBudget, host_cores, thread_budget
from pytrickle_worker.engine.inference.providers import ProviderChoice, select_providers
from pytrickle_worker.engine.inference.registry import ModelRegistry
from pytrickle_worker.engine.inference.scheduler import InferenceScheduler
from pytrickle_worker.engine.mpta.actions import ActionDispatcher, ActionJob
from pytrickle_worker.engine.mpta.archive import ArchiveLimits
from pytrickle_worker.engine.mpta.engine import (
    EngineSettings,
    PipelineResult,
    PipelineRunner,
    RootOverrides,
)
from pytrickle_worker.engine.mpta.fetch import ArchiveCache
from pytrickle_worker.engine.mpta.loader import LoadedPipeline, load_pipeline_tree
from pytrickle_worker.engine.mpta.policy import ModelUrlPolicy
from pytrickle_worker.engine.tracking.bytetrack import TrackerState

logger = logging.getLogger(__name__)


class EngineConfig(Protocol):
    """What the engine reads of the worker's configuration.

    :class:`pytrickle_worker.config.WorkerConfig` provides all of it; the engine names only
    what it needs, so that it does not import the layers above it.
    """

    @property
    def cache_dir(self) -> Path: ...
    @property
    def execution_provider(self) -> str: ...
    @property
    def intra_op_threads(self) -> int: ...
    @property
    def inference_workers(self) -> int: ...
    @property
    def ort_allow_spinning(self) -> bool: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def trt_fp16(self) -> bool: ...
    @property
    def cudnn_conv_algo_search(self) -> str: ...
    @property
    def io_binding(self) -> str: ...
    @property
    def batch_sizes(self) -> str: ...
    @property
    def batch_max_wait_ms(self) -> float: ...
    @property
    def max_archive_bytes(self) -> int: ...
    @property
    def max_uncompressed_bytes(self) -> int: ...
    @property
    def max_archive_files(self) -> int: ...
    @property
    def download_connect_timeout_s(self) -> float: ...
    @property
    def download_read_timeout_s(self) -> float: ...
    @property
    def nms_iou(self) -> float | None: ...
    @property
    def max_detections(self) -> int: ...
    @property
    def tracker_low_conf(self) -> float: ...
    @property
    def action_buffer_size(self) -> int: ...
    @property
    def action_retry_interval_s(self) -> float: ...
    @property
    def redis_url(self) -> str | None: ...
    def model_url_policy(self, trusted: Iterable[str] = ()) -> ModelUrlPolicy: ...


def _budget_and_providers(
    config: EngineConfig, providers: ProviderChoice | None, cores: int
) -> tuple[ThreadBudget, ProviderChoice]:
    """The thread budget for ``cores``, and the providers with its intra-op thread count.

    Given ``providers`` keep their intra-op threads (they count as configured). Otherwise the
    CPU budget decides the sessions' threads, and the GPU one does when a GPU is chosen.
    """
    workers = config.inference_workers
    if providers is not None:
        budget = thread_budget(
            cores,
            gpu=providers.uses_gpu,
            inference_workers=workers,
            intra_op_threads=providers.intra_op_threads,
        )
        return budget, providers
    budget = thread_budget(
        cores, inference_workers=workers, intra_op_threads=config.intra_op_threads
    )
    choice = select_providers(
        config.execution_provider,
        intra_op_threads=budget.intra_op_threads,
        trt_cache_dir=config.cache_dir / "tensorrt",
        trt_fp16=config.trt_fp16,
        cudnn_conv_algo_search=config.cudnn_conv_algo_search,
        allow_spinning=config.ort_allow_spinning,
        io_binding=config.io_binding,
    )
    if choice.uses_gpu:
        budget = thread_budget(
            cores, gpu=True, inference_workers=workers, intra_op_threads=config.intra_op_threads
        )
        choice = choice.with_intra_op_threads(budget.intra_op_threads)
    return budget, choice


class PipelineService:
    def __init__(
        self,
        config: EngineConfig,
        providers: ProviderChoice | None = None,
        *,
        cores: int | None = None,
    ) -> None:
        """``cores``: the usable cores the thread budget is for (default: this host's,
        :func:`host_cores`)."""
        self.config = config
        self.budget, self.providers = _budget_and_providers(
            config, providers, cores if cores is not None else host_cores()
        )
        self.archives = ArchiveCache(
            config.cache_dir / "mpta",
            ArchiveLimits(
                max_archive_bytes=config.max_archive_bytes,
                max_uncompressed_bytes=config.max_uncompressed_bytes,
                max_files=config.max_archive_files,
            ),
            connect_timeout_s=config.download_connect_timeout_s,
            read_timeout_s=config.download_read_timeout_s,
        )
        max_batch = config.max_batch or default_max_batch(self.providers.uses_gpu)
        self.scheduler = InferenceScheduler(
            self.budget, max_batch=max_batch, max_wait_s=config.batch_max_wait_ms / 1000
        )
        self.registry = ModelRegistry(
            self.providers,
            batching=self.scheduler.batching,
            max_batch=max_batch,
            pad_to_sizes=None if config.batch_sizes == "auto" else config.batch_sizes == "padded",
        )
        self.runner = PipelineRunner(
            EngineSettings(
                iou_threshold=config.nms_iou,
                max_detections=config.max_detections,
                tracker_low_conf=config.tracker_low_conf,
            )
        )
        self.actions = ActionDispatcher(
            max_pending=config.action_buffer_size,
            retry_interval_s=config.action_retry_interval_s,
            redis_url_override=config.redis_url,
        )

    async def start(self) -> None:
        """Start the inference scheduler (idempotent)."""
        self.scheduler.start()

    async def __aenter__(self) -> PipelineService:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def load(self, source: str) -> LoadedPipeline:
        """Fetch, extract, validate and load ``source``; raises an MptaError subclass."""
        archive = await self.archives.open(source)
        # On the scheduler's loading threads: the inference threads never wait behind it.
        loading = asyncio.wrap_future(
            self.scheduler.submit_load(
                load_pipeline_tree,
                archive.spec,
                archive.root,
                self.registry,
                source,
                archive.sha256,
            )
        )
        try:
            pipeline = await asyncio.shield(loading)
        except asyncio.CancelledError:
            # The load runs on in its thread; whatever it loads is released, not leaked.
            loading.add_done_callback(self._release_abandoned)
            raise
        logger.info(
            "loaded pipeline %s (%s…): %d node(s), %s",
            mask_url(source),
            archive.sha256[:12],
            len(pipeline.nodes()),
            self.describe_actions_target(pipeline),
        )
        return pipeline

    def _release_abandoned(self, loading: asyncio.Future[LoadedPipeline]) -> None:
        if loading.cancelled() or loading.exception() is not None:
            return
        pipeline = loading.result()
        logger.info("releasing %s: its load was cancelled", mask_url(pipeline.source))
        try:
            self.scheduler.submit_load(pipeline.release)
        except RuntimeError:  # the scheduler is stopped: the service is closing
            pipeline.release()

    def describe_actions_target(self, pipeline: LoadedPipeline) -> str:
        """Where ``pipeline``'s Redis actions go, for log lines (credentials masked)."""
        if not any(node.spec.actions for node in pipeline.nodes()):
            return "no Redis actions"
        url = self.actions.target_url(pipeline.redis)
        if url is None:
            return "Redis actions skipped (no redis block and PTW_REDIS_URL unset)"
        origin = "PTW_REDIS_URL" if self.actions.redis_url_override else "its redis block"
        return f"Redis actions to {mask_url(url)} ({origin})"

    def describe_redis_setting(self) -> str:
        """The worker-wide Redis setting, for the startup log line (credentials masked)."""
        override = self.actions.redis_url_override
        if override:
            return f"Redis actions go to {mask_url(override)} (PTW_REDIS_URL)"
        return "Redis actions go to each pipeline's redis block (PTW_REDIS_URL unset)"

    async def release(self, pipeline: LoadedPipeline) -> None:
        await self.scheduler.load(pipeline.release)

    async def process(
        self,
        pipeline: LoadedPipeline,
        frame: np.ndarray | FramePixels,
        tracker: TrackerState | None = None,
        *,
        run_actions: bool = True,
        overrides: RootOverrides | None = None,
    ) -> PipelineResult:
        """Run the pipeline on ``frame`` on the inference scheduler, then queue its actions.

        ``frame`` is an RGB array or a decoded frame whose RGB is made only if a crop or an
        action needs it (``PipelineRunner.run``).

        Both doors call this: CMS subscriptions and trickle streams (``overrides``: the
        stream's ``min_confidence``/``trigger_classes``).
        """
        result = await self.scheduler.run(self.runner.run, pipeline, frame, tracker, overrides)
        if run_actions:
            self.dispatch_actions(pipeline, result)
        return result

    def dispatch_actions(self, pipeline: LoadedPipeline, result: PipelineResult) -> bool:
        """Queue the actions of the result's node, then of the branches on its path
        (deepest first, as the original ran them); True when any was queued.

        With tracking, only a confirmed track's result (one with an id) runs actions, as
        the original's, which saw its tracker's confirmed tracks only: an object seen once
        would otherwise save and publish an event without an id, then again with one.
        """
        detection = result.detection
        if detection is None or (result.tracked and detection.get("id") is None):
            return False
        node = result.action_node
        own = [(node, result.action_image)] if node is not None and node.spec.actions else []
        queued = False
        for target, image in [*own, *result.path_actions]:
            job = ActionJob(
                node_path=target.path, actions=target.spec.actions, detection=detection, image=image
            )
            queued = self.actions.submit(pipeline.redis, job) or queued
        return queued

    async def close(self) -> None:
        await self.actions.close()
        await self.archives.close()
        # Off the event loop: a model load or inference still running would block it.
        await self.scheduler.stop()
