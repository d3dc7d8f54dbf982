"""Frame processors: what the worker runs on each sampled frame of a stream.

Two interfaces live side by side: :class:`processors.base.FrameProcessor` (the CMS camera
path, with :class:`MptaProcessor`) and :class:`pytrickle_worker.processing.FrameProcessor`
(trickle streams, with :class:`PassthroughProcessor` and :class:`MptaDetectorProcessor`).
"""

from processors.base import FrameProcessor, ProcessedFrame
from processors.mpta import MptaProcessor
from processors.mpta_detector import MptaDetectorParams, MptaDetectorProcessor
from processors.passthrough import PassthroughProcessor

__all__ = [
    "FrameProcessor",
    "MptaDetectorParams",
    "MptaDetectorProcessor",
    "MptaProcessor",
    "PassthroughProcessor",
    "ProcessedFrame",
]
