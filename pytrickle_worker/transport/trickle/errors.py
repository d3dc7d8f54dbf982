"""Trickle client errors."""

from __future__ import annotations

import aiohttp

from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.logutil import mask_text


class TrickleError(WorkerError):
    """A trickle request failed for good (retries exhausted, oversize segment, broken body)."""


def describe_error(exc: BaseException) -> str:
    """A short, credential-masked description of a client error, for logs and messages."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        text = f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    else:
        text = str(exc)
    name = type(exc).__name__
    return mask_text(f"{name}: {text}" if text else name)
