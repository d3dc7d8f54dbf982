"""Camera ingest: shared readers for RTSP/HTTP/file/snapshot sources (see docs/INGEST.md)."""

from pytrickle_worker.media.options import open_options
from pytrickle_worker.sources.config import IngestConfig
from pytrickle_worker.sources.crop import Crop, CropBox
from pytrickle_worker.sources.errors import CropError, HubNotStartedError, IngestError
from pytrickle_worker.sources.frame import CameraFrame
from pytrickle_worker.sources.hub import CameraHub, Subscription
from pytrickle_worker.sources.source import SourceConfig, normalise_source_url
from pytrickle_worker.sources.status import SourceStatus

__all__ = [
    "CameraFrame",
    "CameraHub",
    "Crop",
    "CropBox",
    "CropError",
    "HubNotStartedError",
    "IngestConfig",
    "IngestError",
    "SourceConfig",
    "SourceStatus",
    "Subscription",
    "normalise_source_url",
    "open_options",
]
