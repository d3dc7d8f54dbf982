"""Frame processors: what the worker runs on each sampled frame of a stream."""

from processors.base import FrameProcessor, ProcessedFrame
from processors.mpta import MptaProcessor

__all__ = ["FrameProcessor", "MptaProcessor", "ProcessedFrame"]
