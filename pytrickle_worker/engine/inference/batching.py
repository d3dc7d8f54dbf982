"""Cross-stream batching: concurrent runs of one model become one ``session.run``.

Each frame's pipeline runs on its own scheduler thread. When it reaches a model it calls
:meth:`ModelBatcher.run` with its ``(1, 3, h, w)`` tensor and blocks. A caller that finds a
*run slot* free leads: it takes the oldest pending requests of that model (up to
``max_batch``), copies them into the model's preallocated batch tensor, runs them as one
batch, hands every caller its own ``(1, ...)`` slice of the output, and frees the slot. A
caller that arrives while every slot is busy waits; the next free slot takes all that have
gathered at once. This is continuous batching: an idle model runs a request at once, and
batches grow only while the model is busy, so batching adds no latency at low load.
``max_wait_s`` (Triton's ``max_queue_delay``) lets a leader wait that long for a fuller batch.

Run slots: at most ``slots`` ``session.run`` calls at once over every model (the thread
budget's inference workers, each run with its intra-op threads).

Fairness: requests are taken oldest first. Every stream has one frame in flight (its
pipeline awaits the result before it takes its next frame, the newest its source has), so
under overload the streams take turns: round-robin, newest frame first, never a backlog.

``max_batch`` follows the model (:func:`model_max_batch`): a dynamic batch axis takes the
configured maximum, a fixed batch of N takes N (a short batch is padded), a fixed batch of 1
is not batched.

Run sizes: with ``run_sizes`` (:func:`padded_batch_sizes`, the GPU default) a dynamic batch
is padded up to the next of a few sizes, each run once when the model loads. A GPU provider
prepares every new input shape on its first run (cuDNN's algorithm choice, arena growth,
a TensorRT context): measured on an H200, 0.2-1 s each, against 3-37 ms for a warm run, and
continuous batching forms every size from 1 to ``max_batch``. A padding row costs what an
image costs, which a GPU with idle capacity absorbs (it was 3-28% busy in the measured
runs) and the sizes keep small (under 8 rows past 8); on the CPU every row costs its
whole compute, so there each batch runs at its own size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "CPU_MAX_BATCH",
    "GPU_MAX_BATCH",
    "BatchCoordinator",
    "BatchObserver",
    "FloatType",
    "ModelBatcher",
    "default_max_batch",
    "describe_batch",
    "model_max_batch",
    "padded_batch_sizes",
]

logger = logging.getLogger(__name__)

Tensor = npt.NDArray[np.floating]
FloatType = type[np.float16] | type[np.float32]
Output = npt.NDArray[np.float32]

#: The longest a leader may hold a slot waiting for a fuller batch.
MAX_WAIT_LIMIT_S: Final = 1.0
#: Default batch sizes (PTW_MAX_BATCH=0). CPU: 1, measured on 2 cores with the YOLOv8n-sized
#: model (bench/RESULTS.md, "Batching on the CPU"): with one single-thread run per core (the
#: thread budget's layout, itself the fastest) a batch of 2/4/8 gave 0.97/0.93/0.88× the
#: frames per second of batch 1 at 640 and 0.98/0.97/0.94× at 320, and a batch's result
#: waits for the whole batch. A GPU wants large batches to fill its cores.
CPU_MAX_BATCH: Final = 1
GPU_MAX_BATCH: Final = 16


def default_max_batch(uses_gpu: bool) -> int:
    """The batch size for models with a dynamic batch axis when none is configured."""
    return GPU_MAX_BATCH if uses_gpu else CPU_MAX_BATCH


def padded_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The run sizes a dynamic batch of up to ``max_batch`` is padded to: 1, 2, 4, 8, then
    every multiple of 8 below ``max_batch``, and ``max_batch`` itself (16: ``(1, 2, 4, 8,
    16)``; 32: ``(1, 2, 4, 8, 16, 24, 32)``; 12: ``(1, 2, 4, 8, 12)``). A batch of up to 8
    runs with less than twice its rows, a larger one with fewer than 8 more."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = [size for size in (1, 2, 4) if size < max_batch]
    sizes += range(8, max_batch, 8)
    return (*sizes, max_batch)


def model_max_batch(fixed_batch: int | None, configured: int, name: str) -> int:
    """The largest batch for a model whose input's batch axis is ``fixed_batch`` (None:
    dynamic). Logs once why a model is not batched."""
    if configured < 1:
        raise ValueError(f"max_batch must be >= 1, got {configured}")
    if fixed_batch is None:
        return configured
    if fixed_batch == 1 and configured > 1:
        logger.info(
            "%s: fixed batch of 1 in the model's input: its runs are not batched "
            "(export with a dynamic batch axis to batch it)",
            name,
        )
    return fixed_batch


def describe_batch(fixed_batch: int | None, max_batch: int) -> str:
    """How a model batches, in a few words (``mpta inspect``): ``dynamic (up to N)`` with
    ``max_batch`` N, ``fixed N``, or why a fixed batch of 1 is not batched."""
    if fixed_batch is None:
        return f"dynamic (up to {max_batch})"
    if fixed_batch > 1:
        return f"fixed {fixed_batch}"
    return "1 (cannot batch; export with dynamic=True)"


class BatchObserver:
    """Told about every batch (metrics); called on inference threads, must be cheap."""

    def observe_batch(self, model: str, size: int, queue_wait_s: list[float]) -> None:
        """``size`` requests ran as one batch; ``queue_wait_s`` per request (submit → run)."""


@dataclass(eq=False, slots=True)
class _Request:
    tensor: Tensor
    submitted: float
    output: Output | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class _CoordinatorStats:
    batches: int = 0
    requests: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict[int, int])
    padded_rows: int = 0


class BatchCoordinator:
    """The run slots every :class:`ModelBatcher` shares, and their one lock.

    One lock for all models: a slot freed by one model's batch may be taken by another's
    waiting request, so they must be woken together. The critical sections are a few list
    operations per batch; the runs happen outside the lock.
    """

    def __init__(self, slots: int, *, max_wait_s: float = 0.0) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if not 0.0 <= max_wait_s <= MAX_WAIT_LIMIT_S:
            raise ValueError(f"max_wait_s must be within 0..{MAX_WAIT_LIMIT_S}, got {max_wait_s}")
        self.slots = slots
        self.max_wait_s = max_wait_s
        self.observer: BatchObserver | None = None
        #: Guards ``free_slots`` and every batcher's pending requests.
        self.cond = threading.Condition()
        #: Run slots not in use (read and written under ``cond``).
        self.free_slots = slots
        self._stats = _CoordinatorStats()

    def stats(self) -> dict[str, object]:
        with self.cond:
            s = self._stats
            return {
                "slots": self.slots,
                "slots_busy": self.slots - self.free_slots,
                "batches": s.batches,
                "requests": s.requests,
                "largest_batch": s.largest,
                "batch_sizes": dict(sorted(s.sizes.items())),
                "padded_rows": s.padded_rows,
            }

    def record(self, size: int, padded: int = 0) -> None:
        """Count a batch of ``size`` requests run with ``padded`` rows of padding (under
        ``cond``)."""
        s = self._stats
        s.padded_rows += padded
        s.batches += 1
        s.requests += size
        s.largest = max(s.largest, size)
        s.sizes[size] = s.sizes.get(size, 0) + 1


class ModelBatcher:
    """Gathers one model's concurrent requests into batches (see the module doc)."""

    def __init__(
        self,
        coordinator: BatchCoordinator,
        name: str,
        run: Callable[[Tensor], Output],
        *,
        max_batch: int,
        fixed_batch: int | None,
        input_shape: tuple[int, int, int],
        dtype: FloatType,
        run_sizes: tuple[int, ...] = (),
    ) -> None:
        """``run_sizes``: the sizes a dynamic batch is padded up to, ascending and ending at
        ``max_batch`` (:func:`padded_batch_sizes`); empty: each batch runs at its own size."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if fixed_batch is not None and fixed_batch != max_batch:
            raise ValueError(f"a fixed batch of {fixed_batch} needs max_batch {fixed_batch}")
        if run_sizes and (
            run_sizes[0] != 1
            or run_sizes[-1] != max_batch
            or any(a >= b for a, b in pairwise(run_sizes))
        ):
            raise ValueError(f"run sizes must ascend from 1 to {max_batch}, got {run_sizes}")
        self.name = name
        self.max_batch = max_batch
        self.fixed_batch = fixed_batch
        self._coordinator = coordinator
        self._run = run
        self._pending: deque[_Request] = deque()
        # One batch tensor per concurrent run (a slot), reused: requests are copied in.
        self._shape = (max_batch, *input_shape)
        self._dtype = dtype
        self._free_buffers: list[Tensor] = []
        self._run_sizes = run_sizes if fixed_batch is None else ()

    def run_size(self, count: int) -> int:
        """The rows a batch of ``count`` requests runs with (padding included)."""
        if self.fixed_batch is not None:
            return self.fixed_batch
        for size in self._run_sizes:
            if size >= count:
                return size
        return count

    def run(self, tensor: Tensor) -> Output:
        """The model's output for a ``(1, 3, h, w)`` input, run in a batch with whatever
        other requests are pending. Blocks; call it from a scheduler thread."""
        if tensor.shape[0] != 1 or tensor.shape[1:] != self._shape[1:]:
            raise ValueError(
                f"{self.name}: a batched request is one {(1, *self._shape[1:])} tensor, "
                f"got {tensor.shape}"
            )
        request = _Request(tensor, time.perf_counter())
        cond = self._coordinator.cond
        with cond:
            self._pending.append(request)
            if self._coordinator.max_wait_s > 0:
                cond.notify_all()  # a leader may be waiting for a fuller batch
            while not request.done:
                if self._pending and self._coordinator.free_slots > 0:
                    self._lead()
                else:
                    cond.wait()
        if request.error is not None:
            raise request.error
        assert request.output is not None  # done without an error: the leader set it
        return request.output

    def _lead(self) -> None:
        """Take a slot and run one batch of the oldest requests. Called with the lock held;
        returns with it held."""
        coordinator = self._coordinator
        cond = coordinator.cond
        coordinator.free_slots -= 1
        try:
            if coordinator.max_wait_s > 0 and len(self._pending) < self.max_batch:
                deadline = time.monotonic() + coordinator.max_wait_s
                while len(self._pending) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0 or not cond.wait(left):
                        break
            batch = [
                self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))
            ]
            if not batch:  # others took them while this one waited for more
                return
            size = self.run_size(len(batch))
            coordinator.record(len(batch), size - len(batch))
            buffer = self._free_buffers.pop() if self._free_buffers else None
            cond.release()
            try:
                started = time.perf_counter()
                try:
                    outputs, buffer = self._run_batch(batch, buffer, size)
                except BaseException as exc:  # every caller of the batch gets the error
                    for request in batch:
                        request.error = exc
                else:
                    for request, output in zip(batch, outputs, strict=True):
                        request.output = output
                observer = coordinator.observer
                if observer is not None:
                    waits = [started - request.submitted for request in batch]
                    observer.observe_batch(self.name, len(batch), waits)
            finally:
                cond.acquire()
            if buffer is not None:
                self._free_buffers.append(buffer)
            for request in batch:
                request.done = True
                request.tensor = _EMPTY  # the caller's buffer is free to reuse
        finally:
            coordinator.free_slots += 1
            cond.notify_all()

    def _run_batch(
        self, batch: list[_Request], buffer: Tensor | None, size: int
    ) -> tuple[list[Output], Tensor | None]:
        count = len(batch)
        if size == 1:
            return [self._run(batch[0].tensor)], buffer
        if buffer is None:
            buffer = np.zeros(self._shape, dtype=self._dtype)
        for index, request in enumerate(batch):
            buffer[index] = request.tensor[0]
        # Rows past ``count`` are padding (a fixed batch, or a run size): last run's data or
        # zeros, whose outputs are dropped.
        output = self._run(buffer[:size])
        if output.shape[0] == size:
            return [output[index : index + 1] for index in range(count)], buffer
        if self.fixed_batch is not None:
            raise ValueError(f"{self.name}: a batch of {size} gave an output of {output.shape}")
        # A "dynamic" batch axis the graph does not honour (an output fixed at one image):
        # run this model one image at a time from now on, and this batch image by image.
        logger.warning(
            "%s: a batch of %d gave an output of shape %s: its graph does not batch; running "
            "it one image at a time",
            self.name,
            size,
            tuple(output.shape),
        )
        self.max_batch = 1
        return [self._run(request.tensor) for request in batch], buffer


_EMPTY: Final[Tensor] = np.zeros((0,), np.float32)
