"""One error shape for every route: ``{"status": "error", "message": "..."}``.

:func:`error_middleware` turns what would otherwise leave the app as plain text into that
shape: aiohttp's own ``web.HTTPException`` answers (404 for an unknown path, 405 for a wrong
method with its ``Allow`` header, 413, and any 4xx/5xx a handler raises) and unhandled
exceptions (a logged 500 whose message says nothing about the exception). Headers of the
exception (``Allow``, ``WWW-Authenticate``) are kept. It sits inside the CORS middleware, so
the JSON errors carry the CORS headers too (:func:`~pytrickle_worker.server.security.
security_middlewares` places it).

Handlers that answer an error themselves use
:func:`~pytrickle_worker.transport.http_errors.error_response`, which builds the same shape.
The stream door documents it as ``ErrorBody`` in its schemas.
"""

from __future__ import annotations

import logging

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from pytrickle_worker.transport.http_errors import error_response

__all__ = ["error_middleware"]

logger = logging.getLogger(__name__)

#: Headers of an aiohttp HTTPException that describe its plain-text body, not the error.
_BODY_HEADERS = frozenset({hdrs.CONTENT_TYPE.lower(), hdrs.CONTENT_LENGTH.lower()})


def _message(request: web.Request, exc: web.HTTPException) -> str:
    text = exc.text or ""
    if text and text != f"{exc.status}: {exc.reason}":
        return text  # a handler's own message
    if exc.status == 404:
        return f"not found: {request.path}"
    if exc.status == 405:
        allowed = exc.headers.get(hdrs.ALLOW, "")
        return f"method {request.method} not allowed for {request.path} (allowed: {allowed})"
    return exc.reason.lower() if exc.reason else f"HTTP {exc.status}"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """See the module docstring."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are not errors
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
        return error_response(exc.status, _message(request, exc), headers)
    except Exception:
        # A bug: say so without leaking its details to the client; the log has them.
        logger.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal error")
