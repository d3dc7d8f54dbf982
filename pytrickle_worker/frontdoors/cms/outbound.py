"""Outgoing messages to one backend: bounded, prioritised, never starving the heartbeat.

Control messages (errors, patchSessionResult, patchSession) are never dropped but are bounded
too (a backend that never reads cannot grow memory: past the bound the oldest is dropped and
counted). Only the newest pending stateReport is kept, since an older one carries no
information the newer lacks. ``imageDetection``s wait in a bounded buffer that drops the
oldest on overflow. The sender always sends control and state before detections.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class OutboundStats:
    sent: int = 0
    detections_dropped: int = 0
    control_dropped: int = 0


class OutboundQueue:
    def __init__(
        self,
        max_detections: int = 256,
        max_control: int = 1024,
        on_detection_dropped: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._control: deque[dict[str, Any]] = deque()
        self._detections: deque[dict[str, Any]] = deque()
        self._state: dict[str, Any] | None = None
        self._max_detections = max_detections
        self._max_control = max_control
        self._on_detection_dropped = on_detection_dropped
        self._ready = asyncio.Event()
        self.stats = OutboundStats()

    def __len__(self) -> int:
        return len(self._control) + len(self._detections) + (self._state is not None)

    def put_state(self, message: dict[str, Any]) -> None:
        self._state = message
        self._ready.set()

    def put_control(self, message: dict[str, Any]) -> None:
        self._control.append(message)
        while len(self._control) > self._max_control:
            self._control.popleft()
            self.stats.control_dropped += 1
        self._ready.set()

    def put_detection(self, message: dict[str, Any]) -> None:
        self._detections.append(message)
        while len(self._detections) > self._max_detections:
            dropped = self._detections.popleft()
            self.stats.detections_dropped += 1
            if self._on_detection_dropped is not None:
                self._on_detection_dropped(dropped)
        self._ready.set()

    def _pop(self) -> dict[str, Any] | None:
        if self._control:
            return self._control.popleft()
        if self._state is not None:
            state, self._state = self._state, None
            return state
        if self._detections:
            return self._detections.popleft()
        return None

    async def get(self) -> dict[str, Any]:
        while True:
            message = self._pop()
            if message is not None:
                return message
            self._ready.clear()
            await self._ready.wait()

    def drain_detections(self) -> list[dict[str, Any]]:
        """Remove and return the detections never sent (used when the connection closes)."""
        pending = list(self._detections)
        self._detections.clear()
        return pending
