"""Errors of the camera ingest."""

from __future__ import annotations

from pytrickle_worker.core.errors import WorkerError

__all__ = ["CropError", "HubNotStartedError", "IngestError"]


class IngestError(WorkerError):
    """A camera source or subscription cannot be used as asked."""


class CropError(IngestError, ValueError):
    """A crop rectangle is empty or lies entirely outside the frame."""


class HubNotStartedError(IngestError, RuntimeError):
    """``CameraHub.subscribe`` was called before ``await hub.start()`` (or after stop)."""
