"""When a processed frame becomes an ``imageDetection``.

``changes`` (the default, following worker.md: "sent when the worker detects a relevant
object"): a result is sent when its track first appears and again only when what the pipeline
says about it changes (its class, i.e. the detector's or the branch's answer). A sighting whose
track is not confirmed yet is not sent (it will be, one frame later, with its id). A pipeline
without tracking (a classifier at the root) sends a result when it differs from the last one
sent. Frames with nothing relevant send nothing.

``every_frame`` (the original detector worker's behaviour): every processed frame is sent,
and a frame with nothing relevant is sent as ``{"class": "none", "confidence": 1.0}``,
exactly as the original detector worker did.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import StrEnum
from typing import Any

NONE_DETECTION: dict[str, Any] = {"class": "none", "confidence": 1.0}


class EmissionMode(StrEnum):
    CHANGES = "changes"
    EVERY_FRAME = "every_frame"


class DetectionEmitter:
    """Per-subscription memory of what was already sent. Bounded: remembers the last
    ``max_tracks`` track ids."""

    def __init__(self, mode: EmissionMode, *, tracked: bool, max_tracks: int = 1024) -> None:
        self.mode = mode
        self.tracked = tracked
        self.max_tracks = max_tracks
        self._sent_by_track: OrderedDict[int, str] = OrderedDict()
        self._last_untracked: str | None = None

    def decide(self, detection: dict[str, Any] | None) -> dict[str, Any] | None:
        """The detection to send for this frame's result, or None to send nothing."""
        if self.mode is EmissionMode.EVERY_FRAME:
            return dict(detection) if detection is not None else dict(NONE_DETECTION)
        if detection is None:
            return None
        label = str(detection.get("class"))
        track_id = detection.get("id")
        if not isinstance(track_id, int):
            if self.tracked:
                # A tracked pipeline reports an object once its track is confirmed (next
                # frame); sending the unconfirmed sighting too would announce it twice.
                return None
            if label == self._last_untracked:
                return None
            self._last_untracked = label
            return dict(detection)
        previous = self._sent_by_track.get(track_id)
        if previous == label:
            self._sent_by_track.move_to_end(track_id)
            return None
        self._sent_by_track[track_id] = label
        self._sent_by_track.move_to_end(track_id)
        while len(self._sent_by_track) > self.max_tracks:
            self._sent_by_track.popitem(last=False)
        return dict(detection)

    def reset(self) -> None:
        self._sent_by_track.clear()
        self._last_untracked = None
