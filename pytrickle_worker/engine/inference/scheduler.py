"""``InferenceScheduler``: the one owner of the worker's inference threads.

Every model run of every stream goes through :meth:`InferenceScheduler.run` (the CMS door
through ``PipelineService.process``, the stream door through the same call), so the number
of runs at once, and the threads each uses, follow one :class:`ThreadBudget`. Model loading
(session creation, graph optimisation, a TensorRT engine build, the warm-up run) and
unloading go through :meth:`InferenceScheduler.load`, on separate threads: a subscribe that
loads a model never makes the running streams' frames wait. The loading threads run at a
lower priority (niceness +``LOAD_NICENESS``), so where the cores are short a load also
gives way to the inference threads on the CPU.

Cross-stream batching: each job (one frame's pipeline) runs on a *pipeline thread*; the
model runs inside it go through :attr:`InferenceScheduler.batching`, whose run slots (one
per budgeted inference worker) turn the concurrent runs of one model into one batched
``session.run`` (:mod:`~pytrickle_worker.engine.inference.batching`). With ``max_batch`` 1
there is one pipeline thread per slot and every run is a batch of one.

Threads: ``inference_0`` … (``budget.inference_workers × max_batch`` pipeline threads, of
which at most ``budget.inference_workers`` run a model at once) and ``inference_load_0`` …
(``load_workers``). Jobs queue first-in first-out; at most ``max_pending`` inference jobs are
queued or running at once, further callers wait (each stream has one frame in flight, so
this bound is only reached with more streams than it).

Lifecycle: :meth:`start` (creates the pools, logs the budget once), :meth:`stop` (waits for
the running jobs, drops the queued ones; off the event loop). It may be started again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Final, ParamSpec, TypedDict, TypeVar

from pytrickle_worker.core.threads import lower_thread_priority, name_os_thread
from pytrickle_worker.engine.inference.batching import BatchCoordinator
from pytrickle_worker.engine.inference.budget import ThreadBudget

__all__ = ["DEFAULT_LOAD_WORKERS", "LOAD_NICENESS", "InferenceScheduler", "SchedulerStats"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: Model loads at once (each loads on its own thread; a TensorRT build is one of them).
DEFAULT_LOAD_WORKERS: Final = 2
#: Queued + running inference jobs per inference worker before callers wait.
_PENDING_PER_WORKER: Final = 16
#: Niceness added to the loading threads: when the cores are short, a load (graph
#: optimisation, an engine build) gives way to the inference threads instead of sharing.
LOAD_NICENESS: Final = 10


def _start_load_thread(niceness: int) -> None:
    """A model-loading thread: named for the OS, and below the frame path's priority."""
    name_os_thread("ptw-model-load")
    lower_thread_priority(niceness, "a model-loading thread")


class SchedulerStats(TypedDict):
    """:meth:`InferenceScheduler.stats` (JSON-serialisable)."""

    inference_workers: int
    intra_op_threads: int
    pipeline_threads: int
    max_batch: int
    batching: dict[str, object]
    load_workers: int
    running: bool
    inference_pending: int
    inference_done: int
    loads_pending: int
    loads_done: int


class InferenceScheduler:
    """Runs inference jobs on the budget's threads and loads on their own threads."""

    def __init__(
        self,
        budget: ThreadBudget,
        *,
        load_workers: int = DEFAULT_LOAD_WORKERS,
        max_pending: int | None = None,
        load_niceness: int = LOAD_NICENESS,
        max_batch: int = 1,
        max_wait_s: float = 0.0,
    ) -> None:
        """``max_batch``: the batch size for models with a dynamic batch axis (1: no
        batching); ``max_wait_s``: how long a run may wait for a fuller batch."""
        if load_workers < 1:
            raise ValueError(f"load_workers must be >= 1, got {load_workers}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.budget = budget
        self.max_batch = max_batch
        self.batching = BatchCoordinator(budget.inference_workers, max_wait_s=max_wait_s)
        #: A frame's whole pipeline runs on one of these; a batch needs one per image.
        self.pipeline_threads = budget.inference_workers * max_batch
        self.load_workers = load_workers
        #: onnxruntime starts a session's intra-op threads inside its constructor, on the
        #: loading thread, and a Linux thread inherits its creator's niceness; an
        #: unprivileged thread cannot take it back. With more than one intra-op thread a
        #: niced load would leave every later run's helper threads niced, so loads then run
        #: at the inference threads' priority.
        self.load_niceness = load_niceness if budget.intra_op_threads <= 1 else 0
        self.max_pending = max_pending or max(
            budget.inference_workers * _PENDING_PER_WORKER, self.pipeline_threads
        )
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self._inference: ThreadPoolExecutor | None = None
        self._loads: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._lock = threading.Lock()
        self._inference_pending = 0
        self._inference_done = 0
        self._loads_pending = 0
        self._loads_done = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._inference is not None

    def start(self) -> None:
        """Create the thread pools (threads start on first use) and log the budget."""
        if self._inference is not None:
            return
        budget = self.budget
        self._inference = ThreadPoolExecutor(
            max_workers=self.pipeline_threads,
            thread_name_prefix="inference",
            initializer=name_os_thread,
            initargs=("ptw-inference",),
        )
        self._loads = ThreadPoolExecutor(
            max_workers=self.load_workers,
            thread_name_prefix="inference_load",
            initializer=_start_load_thread,
            initargs=(self.load_niceness,),
        )
        self._slots = None  # bound to the loop of the first run
        if self.load_niceness == 0 and budget.intra_op_threads > 1:
            logger.info(
                "model loads run at normal priority: onnxruntime's %d intra-op threads per "
                "session start on the loading thread and would inherit a lowered one",
                budget.intra_op_threads,
            )
        logger.info(
            "inference scheduler: %s; batches of up to %d (max wait %.0f ms) on %d pipeline "
            "thread(s); %d model-loading thread(s)",
            budget.describe(),
            self.max_batch,
            self.batching.max_wait_s * 1000,
            self.pipeline_threads,
            self.load_workers,
        )
        if budget.oversubscribed:
            logger.warning(
                "inference budget: %d worker(s) × %d intra-op thread(s) + %d decode core(s) "
                "exceed the %d usable core(s): runs will compete for the CPU",
                budget.inference_workers,
                budget.intra_op_threads,
                budget.decode_cores,
                budget.cores,
            )

    async def stop(self) -> None:
        """Drop queued jobs, wait for the running ones (off the event loop), end the threads."""
        inference, loads = self._inference, self._loads
        self._inference = self._loads = None
        self._slots = None
        for pool in (inference, loads):
            if pool is not None:
                await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ jobs

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args)`` on an inference thread; raises ``RuntimeError`` when stopped."""
        pool = self._inference
        if pool is None:
            raise RuntimeError("the inference scheduler is not running")
        slots = self._slots
        if slots is None:
            slots = self._slots = asyncio.Semaphore(self.max_pending)
        async with slots:
            with self._lock:
                self._inference_pending += 1
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    pool, partial(fn, *args, **kwargs)
                )
            finally:
                with self._lock:
                    self._inference_pending -= 1
                    self._inference_done += 1

    async def load(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args)`` on a loading thread (model loads, engine builds, unloads)."""
        future = self.submit_load(fn, *args, **kwargs)
        return await asyncio.wrap_future(future)

    def submit_load(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Like :meth:`load`, from any thread, without waiting."""
        pool = self._loads
        if pool is None:
            raise RuntimeError("the inference scheduler is not running")
        with self._lock:
            self._loads_pending += 1
        future = pool.submit(fn, *args, **kwargs)
        future.add_done_callback(lambda _: self._load_done())
        return future

    def _load_done(self) -> None:
        with self._lock:
            self._loads_pending -= 1
            self._loads_done += 1

    def stats(self) -> SchedulerStats:
        with self._lock:
            return {
                "inference_workers": self.budget.inference_workers,
                "intra_op_threads": self.budget.intra_op_threads,
                "pipeline_threads": self.pipeline_threads,
                "max_batch": self.max_batch,
                "batching": self.batching.stats(),
                "load_workers": self.load_workers,
                "running": self.running,
                "inference_pending": self._inference_pending,
                "inference_done": self._inference_done,
                "loads_pending": self._loads_pending,
                "loads_done": self._loads_done,
            }
