"""What the hub needs from a reader (stream or snapshot)."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable

from pytrickle_worker.ingest.config import IngestConfig
from pytrickle_worker.ingest.frame import LatestFrame
from pytrickle_worker.ingest.source import SourceConfig
from pytrickle_worker.ingest.status import SourceStatus, StatusTracker
from pytrickle_worker.logutil import mask_url

__all__ = ["SourceReader"]


class SourceReader(ABC):
    """Owns one source's connection; publishes into :attr:`slot`, reports via :attr:`tracker`."""

    def __init__(
        self, source: SourceConfig, config: IngestConfig, notify: Callable[[], None]
    ) -> None:
        self.source = source
        self.config = config
        self.label = mask_url(source.target_url)
        self.tracker = StatusTracker(self.label, source.kind)
        self.slot = LatestFrame(notify, self.tracker.conversion)

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
