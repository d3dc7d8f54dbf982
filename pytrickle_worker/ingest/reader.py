"""What the hub needs from a reader (stream or snapshot)."""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable

from pytrickle_worker.ingest.backoff import Backoff
from pytrickle_worker.ingest.config import IngestConfig
from pytrickle_worker.ingest.frame import LatestFrame
from pytrickle_worker.ingest.source import SourceConfig
from pytrickle_worker.ingest.status import SourceStatus, StatusTracker
from pytrickle_worker.logutil import mask_url

__all__ = ["SourceReader"]

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
