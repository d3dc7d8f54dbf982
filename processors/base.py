"""The FrameProcessor interface that camera subscriptions and trickle streams drive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class ProcessedFrame:
    """What a processor made of one frame.

    ``detection`` is the ``imageDetection`` payload's detection (or ``None``), ``bbox`` is in
    source-frame pixels, ``details`` is processor-specific (per-node results and timings).
    """

    detection: dict[str, Any] | None
    bbox: tuple[int, int, int, int] | None
    details: dict[str, Any]


@runtime_checkable
class FrameProcessor(Protocol):
    """Lifecycle: ``start`` once, ``process`` per frame (never concurrently for one stream),
    ``update_params`` at any time, ``stop`` once. ``process`` must not block the event loop."""

    async def start(self) -> None: ...

    async def process(self, frame: np.ndarray, fps: float) -> ProcessedFrame: ...

    def update_params(self, params: dict[str, Any]) -> None: ...

    async def stop(self) -> None: ...
