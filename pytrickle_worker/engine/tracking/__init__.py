"""Multi-object tracking: a numpy-only ByteTrack and per-stream tracker state."""

from .assignment import box_iou, linear_assignment, min_cost_assignment
from .bytetrack import (
    ByteTracker,
    IdCounter,
    TrackerConfig,
    TrackerState,
    TrackSnapshot,
    TrackState,
)

__all__ = [
    "ByteTracker",
    "IdCounter",
    "TrackSnapshot",
    "TrackState",
    "TrackerConfig",
    "TrackerState",
    "box_iou",
    "linear_assignment",
    "min_cost_assignment",
]
