"""Processing: the one :class:`FrameProcessor` interface both front doors drive, its params,
the processor registry and the annotate step.

A processor author needs only this package: ``from pytrickle_worker.processing import
FrameProcessor, StreamContext, ProcessResult, ParamsModel, VideoFrame``.
"""

from pytrickle_worker.core.frame import VideoFrame
from pytrickle_worker.processing.params import (
    NOT_BOOL,
    STREAM_PARAM_KEYS,
    ParamsError,
    ParamsModel,
    format_validation_error,
)
from pytrickle_worker.processing.processor import (
    DEFAULT_MAX_PENDING_DATA,
    FrameProcessor,
    ProcessResult,
    StreamContext,
)

__all__ = [
    "DEFAULT_MAX_PENDING_DATA",
    "NOT_BOOL",
    "STREAM_PARAM_KEYS",
    "FrameProcessor",
    "ParamsError",
    "ParamsModel",
    "ProcessResult",
    "StreamContext",
    "VideoFrame",
    "format_validation_error",
]
