"""Camera ingest: shared readers for RTSP/HTTP/file/snapshot sources (see docs/INGEST.md)."""

from pytrickle_worker.ingest.config import IngestConfig
from pytrickle_worker.ingest.crop import Crop, CropBox
from pytrickle_worker.ingest.errors import CropError, HubNotStartedError, IngestError
from pytrickle_worker.ingest.frame import CameraFrame
from pytrickle_worker.ingest.hub import CameraHub, Subscription
from pytrickle_worker.ingest.source import SourceConfig, normalise_source_url
from pytrickle_worker.ingest.status import SourceStatus
from pytrickle_worker.media.options import open_options

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
