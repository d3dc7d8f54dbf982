"""What the hub needs from a reader (stream or snapshot)."""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable

import av

from pytrickle_worker.core.backoff import Backoff
from pytrickle_worker.core.logutil import mask_url
from pytrickle_worker.sources.config import IngestConfig
from pytrickle_worker.sources.frame import LatestFrame
from pytrickle_worker.sources.source import SourceConfig
from pytrickle_worker.sources.status import SourceStatus, StatusTracker

__all__ = ["SourceReader", "TaskReader"]

logger = logging.getLogger(__name__)


class SourceReader(ABC):
    """Owns one source's connection; publishes into :attr:`slot`, reports via :attr:`tracker`."""

    def __init__(
        self,
        source: SourceConfig,
        config: IngestConfig,
        notify: Callable[[], None],
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self.config = config
        self.label = mask_url(source.target_url)
        self.tracker = StatusTracker(self.label, source.kind)
        self.slot = LatestFrame(notify, self.tracker.conversion)
        self._size: tuple[int, int] | None = None
        self._backoff = Backoff(
            config.backoff_initial_s, config.reconnect_interval_sec, config.max_retries, rng
        )

    def _retry_delay(self, error: str) -> float | None:
        """Record a failed attempt: the backoff before the next one, or None once the reader
        has given up (``max_retries`` consecutive failures), which is logged and reported."""
        delay = self._backoff.next_delay()
        failures = self._backoff.failures
        self.tracker.failed(error, failures)
        if delay is None:
            self.tracker.gave_up()
            logger.error(
                "%s: offline, giving up after %d consecutive failures: %s",
                self.label,
                failures,
                error,
            )
        return delay

    def _publish_frame(self, frame: av.VideoFrame, pts_time: float | None) -> bool:
        """Put a decoded frame into the slot and count it (on the reader's thread); True when
        it brought the source (back) online. Logs that, and changes of resolution."""
        self.slot.publish(frame, pts_time)
        size = (frame.width, frame.height)
        came_online = self.tracker.frame(*size)
        if came_online:
            logger.info("%s: online, %dx%d", self.label, *size)
        elif self._size is not None and size != self._size:
            logger.info(
                "%s: resolution changed from %dx%d to %dx%d", self.label, *self._size, *size
            )
        self._size = size
        return came_online

    def status(self, subscribers: int) -> SourceStatus:
        return self.tracker.snapshot(subscribers)

    @abstractmethod
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin reading (non-blocking); ``loop`` is the hub's event loop."""

    @property
    @abstractmethod
    def stop_timeout_s(self) -> float:
        """Longest :meth:`wait_stopped` may need after :meth:`request_stop`."""

    @abstractmethod
    def request_stop(self) -> None:
        """Ask the reader to stop and close its connection (non-blocking)."""

    @abstractmethod
    async def wait_stopped(self, within_s: float) -> bool:
        """Wait until the connection is closed; False if still running after ``within_s``."""


class TaskReader(SourceReader):
    """A reader that runs as one task on the hub's event loop (its blocking work, if any,
    goes to threads): start, stop and wait are the task's."""

    _task: asyncio.Task[None] | None = None
    #: Names the task, before the source label.
    task_kind = "reader"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None:
            self._task = loop.create_task(self._run(), name=f"{self.task_kind} {self.label}"[:64])

    def request_stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def wait_stopped(self, within_s: float) -> bool:
        task = self._task
        if task is None or task.done():
            return True
        done, _ = await asyncio.wait({task}, timeout=within_s)
        return bool(done)

    @abstractmethod
    async def _run(self) -> None:
        """Read the source until cancelled or given up."""
