"""The worker's one HTTP error shape: ``{"status": "error", "message": "..."}``.

Components refuse a request by raising :class:`ApiError` with the status to answer; every
route answers its errors with :func:`error_response`; the server's error middleware
(:mod:`pytrickle_worker.server.errors`) turns aiohttp's own answers into the same shape.
"""

from __future__ import annotations

from aiohttp import web

from pytrickle_worker.core.errors import WorkerError

__all__ = ["ApiError", "error_response"]


class ApiError(WorkerError):
    """A request refused: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The documented error answer."""
    return web.json_response(
        {"status": "error", "message": message}, status=status, headers=headers
    )
